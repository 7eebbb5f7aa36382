"""Parity of lary_jax.encoders.siglip2 with transformers' SigLIP vision."""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from lary_jax import encoders
from lary_jax.encoders import convert
from lary_jax.encoders import registry
from lary_jax.encoders import siglip2
from lary_jax.errors import LaryError

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning")

_VISION = dict(hidden_size=32, intermediate_size=80, num_hidden_layers=2,
               num_attention_heads=2, image_size=224, patch_size=16)
_TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
             num_attention_heads=2, vocab_size=64, bos_token_id=1,
             eos_token_id=2, pad_token_id=0)


def _spread(model):
  """Redraws the weights at unit gain (LeCun normal, LayerNorm scales ~1).

  transformers' 0.02 init leaves activations so small that, e.g., exact and
  tanh GELU agree to 2e-5; at unit gain they differ by 7e-4 at the output.
  """
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim >= 2:
        p.normal_(0.0, p[0].numel() ** -0.5)
      elif "norm" in name and name.endswith("weight"):
        p.normal_(1.0, 0.2)
      else:
        p.normal_(0.0, 0.2)
  return model.eval()


def _siglip_model(path, seed=0):
  """A random tiny SiglipModel (text + vision), saved as safetensors."""
  torch.manual_seed(seed)
  cfg = transformers.SiglipConfig(vision_config=_VISION, text_config=_TEXT)
  model = _spread(transformers.SiglipModel(cfg))
  model.save_pretrained(path)
  return model.vision_model, str(path)


def _vision_model(path, seed=0):
  """A random tiny bare SiglipVisionModel, saved as safetensors."""
  torch.manual_seed(seed)
  cfg = transformers.SiglipVisionConfig(**_VISION)
  model = _spread(transformers.SiglipVisionModel(cfg))
  model.save_pretrained(path)
  return model, str(path)


def _upstream_tokens(vision_model, images_u8):
  """Upstream: [0, 1] input, `.vision_model(...).last_hidden_state`."""
  x = torch.from_numpy(images_u8.astype(np.float32) / 255.0)
  with torch.no_grad():
    out = vision_model(pixel_values=x.permute(0, 3, 1, 2))
  return out.last_hidden_state.numpy()


def _images(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_converted_encoder_matches_transformers(tmp_path):
  vision, src = _siglip_model(tmp_path / "hf")
  out = registry.convert("siglip2", src, str(tmp_path / "orbax"))
  enc = encoders.load("siglip2", out)
  assert (enc.dim, enc.num_tokens, enc.mode) == (32, 196, "image")
  images = _images((2, 224, 224, 3))
  got = np.asarray(enc(images))
  want = _upstream_tokens(vision, images)
  assert got.shape == want.shape == (2, 196, 32)
  assert np.abs(got - want).max() < 1e-4
  # Frames of a clip are encoded one by one, as upstream's [B, F, 196, D].
  clip = _images((1, 3, 224, 224, 3), seed=1)
  got = np.asarray(enc(clip))
  assert got.shape == (1, 3, 196, 32)
  assert np.abs(got[0] - _upstream_tokens(vision, clip[0])).max() < 1e-4


def test_bare_vision_checkpoint_and_intermediates(tmp_path):
  vision, src = _vision_model(tmp_path, seed=1)
  hf_config, weights = convert.read_hf(src)
  assert not any(k.startswith("vision_model.") for k in weights)
  cfg = siglip2.config_from_hf(hf_config)
  model = convert.build(siglip2.Model, cfg,
                        siglip2.params_from_torch(weights, cfg))
  images = _images((2, 224, 224, 3), seed=2)
  tokens, out = model(siglip2.preprocess(jnp.asarray(images)))
  got = np.asarray(siglip2.select_tokens(tokens, out))
  assert np.abs(got - _upstream_tokens(vision, images)).max() < 1e-4
  x = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
  with torch.no_grad():
    pre = vision(pixel_values=x, output_hidden_states=True).hidden_states[-1]
  assert np.abs(np.asarray(out["pre_norm"]) - pre.numpy()).max() < 1e-4
  with pytest.raises(LaryError, match=r"\[B, 224, 224, C\]"):
    model(jnp.zeros((1, 256, 256, 3)))


def test_bad_checkpoint_keys_are_named(tmp_path):
  _, src = _siglip_model(tmp_path)
  hf_config, weights = convert.read_hf(src)
  cfg = siglip2.config_from_hf(hf_config)
  key = "vision_model.encoder.layers.1.self_attn.k_proj.weight"
  broken = {k: v for k, v in weights.items() if k != key}
  with pytest.raises(LaryError, match=key):
    siglip2.params_from_torch(broken, cfg)
  extra = weights | {"vision_model.encoder.layers.0.extra": np.zeros(3)}
  with pytest.raises(LaryError, match="vision_model.encoder.layers.0.extra"):
    siglip2.params_from_torch(extra, cfg)
  key = "vision_model.embeddings.position_embedding.weight"
  wrong = weights | {key: np.zeros((100, 32), np.float32)}
  with pytest.raises(LaryError, match=rf"{key}.*\(100, 32\).*\(196, 32\)"):
    siglip2.params_from_torch(wrong, cfg)
  with pytest.raises(LaryError, match="patch_embedding"):
    siglip2.params_from_torch({"text_model.x": np.zeros(1)}, cfg)


def test_config_from_hf_fills_hub_defaults_and_refuses_others():
  # Hub config.json files drop fields left at their default (B/16 at 224).
  hub = {"model_type": "siglip", "text_config": {},
         "vision_config": {"model_type": "siglip_vision_model"}}
  assert siglip2.config_from_hf(hub) == siglip2.VARIANTS["b16-224"]
  so400m = {"hidden_size": 1152, "intermediate_size": 4304,
            "num_hidden_layers": 27, "num_attention_heads": 16,
            "patch_size": 14}
  bare = {"model_type": "siglip_vision_model", **so400m}
  assert siglip2.config_from_hf(bare) == siglip2.VARIANTS["so400m14-224"]
  cfg = siglip2.VARIANTS["l16-256"]
  assert siglip2.Config.from_dict(cfg.to_dict()) == cfg
  with pytest.raises(LaryError, match="NaFlex"):
    siglip2.config_from_hf({"model_type": "siglip2"})
  with pytest.raises(LaryError, match="model_type 'clip'"):
    siglip2.config_from_hf({"model_type": "clip"})
  with pytest.raises(LaryError, match="hidden_act='relu6'"):
    siglip2.config_from_hf({**bare, "hidden_act": "relu6"})
  with pytest.raises(LaryError, match="unknown field"):
    siglip2.Config.from_dict({"hidden_sise": 3})


@pytest.mark.parametrize("name", sorted(siglip2.VARIANTS))
def test_variant_sizes_match_transformers(name):
  # Two blocks keep this fast; the widths are what a preset can get wrong.
  cfg = dataclasses.replace(siglip2.VARIANTS[name], num_hidden_layers=2)
  hf = transformers.SiglipVisionConfig(vision_use_head=False,
                                       **cfg.to_dict())
  with torch.device("meta"):
    want = sum(p.numel() for p in transformers.SiglipVisionModel(hf)
               .parameters())
  shapes = convert.param_shapes(siglip2.Model, cfg)
  assert sum(math.prod(s) for s in shapes.values()) == want


def test_preprocess_keeps_unit_range():
  u8 = np.array([[[[0, 255, 51]]]], np.uint8)
  np.testing.assert_allclose(siglip2.preprocess(u8), [[[[0, 1, 0.2]]]],
                             atol=1e-7)
  np.testing.assert_allclose(siglip2.preprocess(np.float32([0.25])), [0.25])
  np.testing.assert_allclose(siglip2.preprocess(u8, native=True),
                             [[[[-1, 1, -0.6]]]], atol=1e-6)
  assert siglip2.preprocess(u8).dtype == jnp.float32
