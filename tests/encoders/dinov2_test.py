"""Parity of lary_jax.encoders.dinov2 with transformers' Dinov2Model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from lary_jax import encoders
from lary_jax.encoders import convert
from lary_jax.encoders import dinov2
from lary_jax.errors import LaryError
from lary_jax.nn import vit_layers

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning")


def _hf_folder(path, *, seed=0, **overrides):
  """A random tiny Dinov2Model saved as safetensors; returns (torch, path)."""
  torch.manual_seed(seed)
  kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            image_size=56, patch_size=14, layerscale_value=0.5)
  cfg = transformers.Dinov2Config(**(kw | overrides))
  model = transformers.Dinov2Model(cfg).eval()
  model.save_pretrained(path)
  return model, str(path)


def _upstream_tokens(model, images_u8):
  """Upstream's path: [0, 1] -> 2x - 1 -> last_hidden_state[:, 1:]."""
  x = torch.from_numpy(images_u8.astype(np.float32) / 255.0 * 2 - 1)
  with torch.no_grad():
    out = model(pixel_values=x.permute(0, 3, 1, 2)).last_hidden_state
  return out[:, 1:].numpy()


def _images(n, size, seed=0):
  return np.random.default_rng(seed).integers(
      0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("swiglu", [False, True])
def test_encoder_matches_transformers_at_224(tmp_path, swiglu):
  # 224 / 14 = 16 patches a side against a 4 x 4 position table: the
  # bicubic position resize is on this path, as for the real 518 checkpoints.
  torch_model, path = _hf_folder(tmp_path, use_swiglu_ffn=swiglu)
  enc = encoders.load("dinov2", path)
  images = _images(2, 224)
  got = np.asarray(enc(images))
  want = _upstream_tokens(torch_model, images)
  assert got.shape == want.shape == (2, 256, 32)
  assert (enc.dim, enc.num_tokens, enc.mode) == (32, 256, "image")
  assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize("size", [56, 28, 112])  # native, smaller, larger
def test_model_matches_transformers_at_any_grid(tmp_path, size):
  torch_model, path = _hf_folder(tmp_path, seed=1)
  hf_config, weights = convert.read_hf(path)
  cfg = dinov2.config_from_hf(hf_config)
  model = convert.build(dinov2.Model, cfg,
                        dinov2.params_from_torch(weights, cfg))
  images = _images(3, size, seed=size)
  tokens, out = nnx.jit(lambda m, x: m(dinov2.preprocess(x)))(model, images)
  got = np.asarray(dinov2.select_tokens(tokens, out))
  assert np.abs(got - _upstream_tokens(torch_model, images)).max() < 1e-4
  np.testing.assert_array_equal(out["cls"], tokens[:, 0])


@pytest.mark.parametrize("n_in,n_out", [(37, 16), (4, 16), (6, 3), (5, 5)])
def test_bicubic_matrix_is_torch_interpolate(n_in, n_out):
  grid = np.random.default_rng(0).normal(size=(1, 2, n_in, n_in))
  want = torch.nn.functional.interpolate(
      torch.from_numpy(grid), size=(n_out, n_out), mode="bicubic",
      align_corners=False).numpy()
  m = dinov2.bicubic_matrix(n_in, n_out).astype(np.float64)
  got = np.einsum("hy,ncyx,wx->nchw", m, grid, m)
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_preprocess_is_two_x_minus_one():
  u8 = np.array([[[[0, 255, 51]]]], np.uint8)
  np.testing.assert_allclose(dinov2.preprocess(u8), [[[[-1, 1, -0.6]]]],
                             atol=1e-6)
  np.testing.assert_allclose(dinov2.preprocess(np.float32([0.25])), [-0.5])


def test_config_from_hf_reads_each_size_and_rejects_others():
  hf = {"model_type": "dinov2", "hidden_size": 1536, "num_hidden_layers": 40,
        "num_attention_heads": 24, "image_size": 518, "patch_size": 14,
        "use_swiglu_ffn": True, "mlp_ratio": 4}
  cfg = dinov2.config_from_hf(hf)
  assert cfg == dinov2.VARIANTS["vitg14"]
  assert cfg.mlp_hidden == 4096  # Hub giant: weights_in is [8192, 1536]
  assert dinov2.VARIANTS["vitl14"].mlp_hidden == 4096
  assert dinov2.Config.from_dict(cfg.to_dict()) == cfg
  with pytest.raises(LaryError, match="model_type='vit'"):
    dinov2.config_from_hf(hf | {"model_type": "vit"})
  with pytest.raises(LaryError, match="hidden_act='gelu_foo'"):
    dinov2.config_from_hf(hf | {"use_swiglu_ffn": False,
                                "hidden_act": "gelu_foo"})
  with pytest.raises(LaryError, match="unknown field"):
    dinov2.Config.from_dict({"hidden_sise": 3})


def test_bf16_close_to_fp32(tmp_path):
  _, path = _hf_folder(tmp_path, hidden_size=64, num_attention_heads=4)
  images = _images(2, 224)
  fp32 = np.asarray(encoders.load("dinov2", path)(images))
  bf16_enc = encoders.load("dinov2", path, dtype=jnp.bfloat16)
  bf16 = np.asarray(bf16_enc(images), np.float32)
  err = np.abs(bf16 - fp32)
  # LayerNorm-ed tokens (unit scale): bf16's 8-bit mantissa gives ~1e-2.
  assert err.mean() < 2e-2 and err.max() < 0.15, (err.mean(), err.max())
  assert err.max() > 0  # the bf16 path really ran in bf16


@pytest.mark.parametrize("shape", [(2, 257, 16, 64), (1, 401, 6, 8),
                                   (3, 5, 3, 4)])
def test_cpu_blocked_attention_equals_dot_product_attention(shape):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=shape), jnp.float32)
             for _ in range(3))
  want = jax.nn.dot_product_attention(q, k, v)
  got = jax.jit(vit_layers.blocked_attention)(q, k, v)
  assert np.abs(np.asarray(got) - np.asarray(want)).max() < 1e-5
  half = jax.jit(vit_layers.blocked_attention)(
      q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16))
  assert half.dtype == jnp.bfloat16
  assert np.abs(np.asarray(half, np.float32) - np.asarray(want)).max() < 0.03
