"""Tests for lary_jax.encoders.convert: tables, errors, files."""

import json
import os

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import save_file

from lary_jax.encoders import convert
from lary_jax.encoders import dinov3
from lary_jax.encoders import registry
from lary_jax.errors import LaryError

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def dinov3_folder(tmp_path_factory):
  torch.manual_seed(0)
  cfg = transformers.DINOv3ViTConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=2, patch_size=16, num_register_tokens=4)
  path = tmp_path_factory.mktemp("hf_dinov3")
  transformers.DINOv3ViTModel(cfg).save_pretrained(path)
  return str(path)


def _read(path):
  hf_config, weights = convert.read_hf(path)
  return dinov3.config_from_hf(hf_config), dict(weights)


def test_rules_transpose_like_torch():
  w = np.arange(6, dtype=np.float32).reshape(2, 3)  # Linear(3 -> 2) weight
  x = np.array([1.0, -2.0, 0.5], np.float32)
  kernel = convert.linear("w")({"w": w})
  np.testing.assert_allclose(x @ kernel, w @ x)
  conv_w = np.random.default_rng(0).normal(size=(5, 3, 2, 4))  # [D, C, h, w]
  kernel = convert.conv("c")({"c": conv_w})
  assert kernel.shape == (2, 4, 3, 5)
  np.testing.assert_array_equal(kernel[1, 3, 2], conv_w[:, 2, 1, 3])
  fused = convert.cat_linear("a", "b")({"a": w, "b": 2 * w})
  np.testing.assert_allclose(x @ fused, np.concatenate([w @ x, 2 * w @ x]))
  bias = convert.cat_bias("a", None, "b", sizes=(2, 3, 2))(
      {"a": np.ones(2), "b": np.full(2, 7.0)})
  np.testing.assert_array_equal(bias, [1, 1, 0, 0, 0, 7, 7])


def test_dropped_key_is_named(dinov3_folder):
  cfg, weights = _read(dinov3_folder)
  del weights["layer.1.norm2.weight"]
  with pytest.raises(LaryError, match=r"no key 'layer\.1\.norm2\.weight' "
                     r"\(needed for NNX parameter 'blocks\.1\.norm2\.scale', "
                     r"shape \(32,\)\)"):
    dinov3.params_from_torch(weights, cfg)


def test_wrong_shape_names_key_and_both_shapes(dinov3_folder):
  cfg, weights = _read(dinov3_folder)
  weights["layer.0.mlp.up_proj.weight"] = np.zeros((48, 32), np.float32)
  with pytest.raises(LaryError, match=r"'layer\.0\.mlp\.up_proj\.weight' "
                     r"\(48, 32\) gives \(32, 48\) for NNX parameter "
                     r"'blocks\.0\.mlp\.fc1\.kernel', expected \(32, 64\)"):
    dinov3.params_from_torch(weights, cfg)
  cfg, weights = _read(dinov3_folder)
  weights["layer.1.attention.k_proj.weight"] = np.zeros((32, 30), np.float32)
  with pytest.raises(LaryError, match=r"cannot build NNX parameter 'blocks\.1"
                     r"\.attn\.qkv\.kernel' from .*k_proj\.weight' \(32, 30\)"):
    dinov3.params_from_torch(weights, cfg)


def test_unused_key_is_named(dinov3_folder):
  cfg, weights = _read(dinov3_folder)
  assert "embeddings.mask_token" in weights  # known, deliberately dropped
  weights["layer.0.attention.k_proj.bias"] = np.zeros(32, np.float32)
  with pytest.raises(LaryError, match=r"'layer\.0\.attention\.k_proj\.bias' "
                     r"\(32,\) is not used"):
    dinov3.params_from_torch(weights, cfg)


def test_table_must_cover_every_parameter():
  shapes = {"a.kernel": (2, 2), "a.bias": (2,)}
  with pytest.raises(LaryError, match=r"NNX parameter\(s\) \['a\.bias'\]"):
    convert.apply_table({"w": np.eye(2)}, {"a.kernel": convert.linear("w")},
                        shapes)
  with pytest.raises(LaryError, match="does not have"):
    convert.apply_table({}, {"a.kernel": convert.linear("w"),
                             "a.bias": convert.same("b"),
                             "c": convert.same("c")}, shapes)


def test_convert_writes_orbax_and_config(dinov3_folder, tmp_path):
  out = registry.convert("dinov3", dinov3_folder, str(tmp_path / "out"))
  assert os.path.isdir(os.path.join(out, "params"))
  with open(os.path.join(out, "config.json")) as f:
    meta = json.load(f)
  assert meta["model"] == "dinov3"
  assert meta["config"]["num_register_tokens"] == 4
  name, cfg_dict, params = convert.load_converted(out)
  cfg, weights = _read(dinov3_folder)
  assert (name, dinov3.Config.from_dict(cfg_dict)) == ("dinov3", cfg)
  want = dinov3.params_from_torch(weights, cfg)
  assert sorted(params) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(params[k], want[k])


def test_convert_rejects_unknown_architecture(dinov3_folder, tmp_path):
  bad = tmp_path / "bad"
  bad.mkdir()
  with open(os.path.join(dinov3_folder, "config.json")) as f:
    hf = json.load(f)
  with open(bad / "config.json", "w") as f:
    json.dump(hf | {"model_type": "dinov3_convnext"}, f)
  save_file({"x": np.zeros(1, np.float32)}, str(bad / "model.safetensors"))
  with pytest.raises(LaryError, match="model_type='dinov3_convnext'"):
    registry.convert("dinov3", str(bad), str(tmp_path / "out"))
  with pytest.raises(LaryError, match="model_type='dinov3_convnext', "
                     "expected 'dinov2'"):
    registry.convert("dinov2", str(bad), str(tmp_path / "out"))
  with pytest.raises(LaryError, match="unknown model 'vit'"):
    registry.convert("vit", str(bad), str(tmp_path / "out"))
  os.remove(bad / "model.safetensors")
  with pytest.raises(LaryError, match=r"no \*\.safetensors"):
    registry.convert("dinov3", str(bad), str(tmp_path / "out"))
  with pytest.raises(LaryError, match="not a lary-jax encoder checkpoint"):
    os.mkdir(bad / "params")
    convert.load_converted(str(bad))


def test_read_pt_unwraps_and_strips_prefixes(tmp_path):
  path = str(tmp_path / "ckpt.pt")
  torch.save({"epoch": 3, "target_encoder": {
      "module.backbone.blocks.0.w": torch.ones(2, dtype=torch.bfloat16),
      "module.pos": torch.zeros(1)}}, path)
  weights = convert.read_pt(path)
  assert sorted(weights) == ["blocks.0.w", "pos"]
  assert weights["blocks.0.w"].dtype == np.float32
  with pytest.raises(LaryError, match="converts only Hugging Face folders"):
    registry.convert("dinov2", path, str(tmp_path / "out"))
