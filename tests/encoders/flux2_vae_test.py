"""Parity of lary_jax.encoders.flux2_vae with diffusers' AutoencoderKLFlux2."""

import re

import diffusers
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from lary_jax import encoders
from lary_jax import extract
from lary_jax.encoders import convert
from lary_jax.encoders import flux2_vae
from lary_jax.encoders import registry
from lary_jax.errors import LaryError

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning")

_TINY = dict(block_out_channels=(32, 64), layers_per_block=1,
             latent_channels=8, norm_num_groups=32,
             down_block_types=("DownEncoderBlock2D",) * 2,
             up_block_types=("UpDecoderBlock2D",) * 2)


def _vae(path=None, seed=0, **config):
  """A random tiny AutoencoderKLFlux2 at unit gain, with BatchNorm stats;
  `config` replaces fields of _TINY."""
  torch.manual_seed(seed)
  model = diffusers.AutoencoderKLFlux2(**(_TINY | config)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim >= 2:
        p.normal_(0.0, p[0].numel() ** -0.5)
      else:
        p.normal_(1.0 if "norm" in name and "weight" in name else 0.0, 0.2)
    model.bn.running_mean.normal_(0.0, 0.3)
    model.bn.running_var.uniform_(0.5, 2.0)
  if path is not None:
    model.save_pretrained(path)
  return model


def _latents(model, x):
  """diffusers' FLUX.2 encode: mean, 2x2 patches (c, pi, pj), BN stats.

  Args:
    model: the AutoencoderKLFlux2.
    x: float32 [N, C, H, W] autoencoder input.

  Returns:
    [N, 128, H/4, W/4] for the tiny config (channel-major, torch layout).
  """
  with torch.no_grad():
    mean = model.encode(torch.from_numpy(x)).latent_dist.mode()
    b, c, h, w = mean.shape
    z = mean.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    z = z.reshape(b, c * 4, h // 2, w // 2)
    bn = model.bn
    z = (z - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        bn.running_var.view(1, -1, 1, 1) + bn.eps)
  return z.numpy()


def _images(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_converted_encoder_matches_diffusers(tmp_path):
  model = _vae(tmp_path / "hf")
  out = registry.convert("flux2", str(tmp_path / "hf"), str(tmp_path / "o"))
  enc = encoders.load("flux2", out)
  assert (enc.mode, enc.dim, enc.num_tokens) == ("image", 32, 56 * 56)
  # Every frame on its own, as upstream: [T, N, D] per row.
  assert extract.token_shape(enc, "video") == (9, 56 * 56, 32)
  assert extract.token_shape(enc, "image") == (2, 56 * 56, 32)
  # A pair per row: every frame on its own, tokens [B, 2, N, 32].
  frames = _images((2, 2, 32, 32, 3))
  got = np.asarray(enc(frames))
  x = frames.reshape(4, 32, 32, 3).transpose(0, 3, 1, 2) / 127.5 - 1
  want = _latents(model, x.astype(np.float32))  # [4, 32, 8, 8]
  want = want.transpose(0, 2, 3, 1).reshape(2, 2, 64, 32)
  assert got.shape == want.shape
  assert np.abs(got - want).max() < 1e-4


def test_upstream_layout_and_uint8_switches(tmp_path):
  model = _vae(tmp_path, seed=1)
  frames = _images((3, 32, 32, 3), seed=1)
  u = frames.astype(np.float32)
  for options, pixels in [({"upstream_layout": 1}, u / 255 * 2 - 1),
                          ({"upstream_layout": "true", "upstream_uint8": 1},
                           u * 2 - 1)]:
    enc = encoders.load("flux2", str(tmp_path), **options)
    got = np.asarray(enc(frames))
    # Upstream: the HWC buffer reshaped (not permuted) to CHW, and the
    # [D, h, w] latents reshaped to [h * w, D].
    want = _latents(model, pixels.reshape(3, 3, 32, 32)).reshape(3, 64, 32)
    assert np.abs(got - want).max() < 1e-4 * max(1, np.abs(want).max())


def _original_keys(weights):
  """diffusers' keys renamed to Black Forest Labs' ae.safetensors layout."""
  out = {}
  for k, v in weights.items():
    k = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", k)
    k = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.",
               k)
    k = k.replace("mid_block.resnets.0.", "mid.block_1.")
    k = k.replace("mid_block.resnets.1.", "mid.block_2.")
    k = k.replace("mid_block.attentions.0.", "mid.attn_1.")
    k = k.replace("conv_shortcut", "nin_shortcut")
    k = k.replace("conv_norm_out", "norm_out")
    k = k.replace("attn_1.group_norm", "attn_1.norm")
    k = re.sub(r"attn_1\.to_([qkv])\.", r"attn_1.\1.", k)
    k = k.replace("attn_1.to_out.0.", "attn_1.proj_out.")
    if k.startswith("quant_conv."):
      k = "encoder." + k
    if re.search(r"attn_1\.(q|k|v|proj_out)\.weight$", k):
      v = v[:, :, None, None]  # the original uses 1x1 Conv2d
    out[k] = np.ascontiguousarray(v)
  return out


def test_original_safetensors_converts(tmp_path):
  model = _vae(tmp_path / "hf", seed=2)
  _, weights = convert.read_hf(str(tmp_path / "hf"))
  ae = str(tmp_path / "ae.safetensors")
  save_file(_original_keys(weights), ae)
  out = registry.convert("flux2", ae, str(tmp_path / "o"))
  frames = _images((2, 32, 32, 3), seed=2)
  got = np.asarray(encoders.load("flux2", out)(frames))
  x = (frames.transpose(0, 3, 1, 2) / 127.5 - 1).astype(np.float32)
  want = _latents(model, x).transpose(0, 2, 3, 1).reshape(2, 64, 32)
  assert np.abs(got - want).max() < 1e-4

  orig = convert.read_safetensors(ae)
  cfg = flux2_vae.config_from_pt(orig)
  del orig["encoder.mid.attn_1.k.weight"]
  with pytest.raises(LaryError, match="encoder.mid.attn_1.k.weight"):
    flux2_vae.params_from_pt(orig, cfg)
  with pytest.raises(LaryError, match="not a multiple of 4"):
    encoders.load("flux2", out)(np.zeros((1, 30, 30, 3), np.uint8))
