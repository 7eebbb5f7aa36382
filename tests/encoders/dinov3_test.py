"""Parity of lary_jax.encoders.dinov3 with transformers' DINOv3ViTModel."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers.models.dinov3_vit import modeling_dinov3_vit

from lary_jax import encoders
from lary_jax.encoders import convert
from lary_jax.encoders import dinov3
from lary_jax.errors import LaryError

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning")


def _hf_config(**overrides):
  kw = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, image_size=224, patch_size=16,
            num_register_tokens=4, layerscale_value=0.3)
  return transformers.DINOv3ViTConfig(**(kw | overrides))


def _hf_folder(path, *, seed=0, **overrides):
  """A random tiny DINOv3ViTModel saved as safetensors: (torch, path)."""
  torch.manual_seed(seed)
  model = transformers.DINOv3ViTModel(_hf_config(**overrides)).eval()
  model.save_pretrained(path)
  return model, str(path)


def _upstream_tokens(model, images_u8):
  """Upstream's path: [0, 1] -> 2x - 1 -> last_hidden_state[:, 5:]."""
  x = torch.from_numpy(images_u8.astype(np.float32) / 255.0 * 2 - 1)
  with torch.no_grad():
    out = model(pixel_values=x.permute(0, 3, 1, 2)).last_hidden_state
  return out[:, 5:].numpy()


def _images(n, size, seed=0):
  return np.random.default_rng(seed).integers(
      0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("gated", [False, True])
def test_encoder_matches_transformers_at_224(tmp_path, gated):
  torch_model, path = _hf_folder(
      tmp_path, use_gated_mlp=gated, hidden_act="silu" if gated else "gelu")
  enc = encoders.load("dinov3", path)
  images = _images(2, 224)
  got = np.asarray(enc(images))
  want = _upstream_tokens(torch_model, images)
  assert got.shape == want.shape == (2, 196, 64)
  assert (enc.dim, enc.num_tokens) == (64, 196)
  assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize("size,biases", [
    (32, (True, True, True)),  # key bias present
    (48, (False, False, True)),  # only a value bias
    (64, (False, False, False)),  # no qkv bias, no proj/mlp bias
])
def test_model_matches_transformers_registers_and_biases(tmp_path, size,
                                                         biases):
  q, k, v = biases
  torch_model, path = _hf_folder(
      tmp_path, seed=size, query_bias=q, key_bias=k, value_bias=v,
      proj_bias=any(biases), mlp_bias=any(biases))
  hf_config, weights = convert.read_hf(path)
  cfg = dinov3.config_from_hf(hf_config)
  assert (cfg.query_bias, cfg.key_bias, cfg.value_bias) == biases
  model = convert.build(dinov3.Model, cfg,
                        dinov3.params_from_torch(weights, cfg))
  images = _images(2, size, seed=size)
  tokens, out = nnx.jit(lambda m, x: m(dinov3.preprocess(x)))(model, images)
  got = np.asarray(dinov3.select_tokens(tokens, out))
  assert np.abs(got - _upstream_tokens(torch_model, images)).max() < 1e-4
  # The dropped prefix really is CLS + registers, and these match too.
  with torch.no_grad():
    x = torch.from_numpy(np.array(dinov3.preprocess(images)))
    full = torch_model(pixel_values=x.permute(0, 3, 1, 2)).last_hidden_state
  assert out["registers"].shape == (2, 4, 64)
  assert np.abs(np.asarray(out["registers"]) - full[:, 1:5].numpy()).max(
      ) < 1e-4
  assert np.abs(np.asarray(out["cls"]) - full[:, 0].numpy()).max() < 1e-4


def test_rope_tables_match_transformers():
  cfg = _hf_config(hidden_size=96, num_attention_heads=3)  # head_dim 32
  rope = modeling_dinov3_vit.DINOv3ViTRopePositionEmbedding(cfg).eval()
  cos, sin = rope(torch.zeros(1, 3, 48, 80))
  got_cos, got_sin = dinov3.rope_tables(3, 5, 32, 100.0)
  np.testing.assert_allclose(got_cos, cos.numpy(), atol=1e-6)
  np.testing.assert_allclose(got_sin, sin.numpy(), atol=1e-6)


def test_config_from_hf_and_presets():
  hf = _hf_config().to_dict()
  cfg = dinov3.config_from_hf(hf)
  assert (cfg.hidden_size, cfg.num_register_tokens, cfg.layerscale_value,
          cfg.key_bias) == (64, 4, 0.3, False)
  assert dinov3.Config.from_dict(cfg.to_dict()) == cfg
  assert dinov3.VARIANTS["vith16plus"].use_gated_mlp
  assert dinov3.VARIANTS["vitl16"].head_dim == 64
  with pytest.raises(LaryError, match="model_type='dinov3_convnext'"):
    dinov3.config_from_hf(hf | {"model_type": "dinov3_convnext"})
  with pytest.raises(LaryError, match="hidden_act='relu6'"):
    dinov3.config_from_hf(hf | {"hidden_act": "relu6"})


def test_bf16_close_to_fp32(tmp_path):
  _, path = _hf_folder(tmp_path)
  images = _images(2, 224)
  fp32 = np.asarray(encoders.load("dinov3", path)(images))
  bf16 = encoders.load("dinov3", path, dtype=jnp.bfloat16)(images)
  assert bf16.dtype == jnp.bfloat16
  err = np.abs(np.asarray(bf16, np.float32) - fp32)
  # LayerNorm-ed tokens (unit scale): bf16's 8-bit mantissa gives ~1e-2.
  assert 0 < err.mean() < 2e-2 and err.max() < 0.15, (err.mean(), err.max())
