"""Parity of lary_jax.encoders.wan_vae with diffusers' AutoencoderKLWan."""

import re

import diffusers
import numpy as np
import pytest
import torch

from lary_jax import encoders
from lary_jax import extract
from lary_jax.encoders import convert
from lary_jax.encoders import registry
from lary_jax.encoders import wan_vae
from lary_jax.errors import LaryError

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning")

_Z = 8
_RNG = np.random.default_rng(7)
_MEAN = _RNG.normal(0.0, 0.3, _Z).round(4).tolist()
_STD = _RNG.uniform(0.5, 1.5, _Z).round(4).tolist()
# Wan2.2's layout (residual blocks, 2x2 patches, time halved twice) at a
# tiny width; 4 levels so that the input is cut 16x a side, as at full size.
_TINY = dict(base_dim=8, decoder_base_dim=8, z_dim=_Z, dim_mult=[1, 2, 2, 2],
             num_res_blocks=1, temperal_downsample=[False, True, True],
             is_residual=True, in_channels=12, out_channels=12, patch_size=2,
             latents_mean=_MEAN, latents_std=_STD)


def _vae(path=None, seed=0):
  """A random tiny Wan2.2-style AutoencoderKLWan at unit gain."""
  torch.manual_seed(seed)
  model = diffusers.AutoencoderKLWan(**_TINY).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim >= 2:
        p.normal_(0.0, p[0].numel() ** -0.5)
      else:
        p.normal_(1.0 if "gamma" in name else 0.0, 0.2)
  if path is not None:
    model.save_pretrained(path)
  return model


def _tokens(model, clips_u8):
  """diffusers' posterior mean of each clip, normalised as upstream's
  Wan2_2_VAE does, in upstream's stored layout [B, T', h * w, z]."""
  x = torch.from_numpy(clips_u8.astype(np.float32) / 127.5 - 1)
  with torch.no_grad():
    mu = model.encode(x.permute(0, 4, 1, 2, 3)).latent_dist.mode()
  mean = torch.tensor(_MEAN).view(1, -1, 1, 1, 1)
  mu = (mu - mean) * (1 / torch.tensor(_STD)).view(1, -1, 1, 1, 1)
  b, _, t = mu.shape[:3]
  return mu.permute(0, 2, 3, 4, 1).reshape(b, t, -1, _Z).numpy()


def _clips(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_converted_encoder_matches_diffusers(tmp_path):
  model = _vae(tmp_path / "hf")
  out = registry.convert("wan2_2", str(tmp_path / "hf"), str(tmp_path / "o"))
  enc = encoders.load("wan2_2", out)
  # A LARY clip: 9 frames -> latent frames from 0, 1-4, 5-8, each 14 x 14.
  assert (enc.mode, enc.dim, enc.num_tokens) == ("video", _Z, 14 * 14)
  # What extraction stores per row: a clip, and a pair (as two images).
  assert extract.token_shape(enc, "video") == (3, 196, _Z)
  assert extract.token_shape(enc, "image") == (2, 196, _Z)
  clips = _clips((2, 9, 32, 32, 3))
  got, want = np.asarray(enc(clips)), _tokens(model, clips)
  assert got.shape == want.shape == (2, 3, 4, _Z)
  assert np.abs(got - want).max() < 1e-4
  # 7 frames: upstream's chunks never reach frames 5 and 6.
  clips = _clips((1, 7, 32, 32, 3), seed=1)
  got, want = np.asarray(enc(clips)), _tokens(model, clips)
  assert got.shape == want.shape == (1, 2, 4, _Z)
  assert np.abs(got - want).max() < 1e-4


def test_pairs(tmp_path):
  model = _vae(tmp_path, seed=1)
  pairs = _clips((2, 2, 32, 32, 3), seed=2)
  # Default: each frame of the pair is its own one-frame video.
  got = np.asarray(encoders.load("wan2_2", str(tmp_path))(pairs))
  want = np.concatenate([_tokens(model, pairs[:, i:i + 1]) for i in range(2)],
                        1)
  assert got.shape == want.shape == (2, 2, 4, _Z)
  assert np.abs(got - want).max() < 1e-4
  # Upstream: the pair as a 2-frame video, which encodes frame 0 only.
  enc = encoders.load("wan2_2", str(tmp_path), pairs_as_images=0)
  got, want = np.asarray(enc(pairs)), _tokens(model, pairs)
  assert got.shape == want.shape == (2, 1, 4, _Z)
  assert np.abs(got - want).max() < 1e-4
  assert np.abs(got - _tokens(model, pairs[:, :1])).max() < 1e-4


def _original_keys(weights, num_res_blocks):
  """diffusers' keys renamed to the original Wan2.2_VAE.pth layout."""
  out = {}
  res = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3",
         "conv2": "residual.6", "conv_shortcut": "shortcut"}
  for k, v in weights.items():
    k = re.sub(r"down_blocks\.(\d+)\.resnets\.(\d+)\.",
               r"downsamples.\1.downsamples.\2.", k)
    k = re.sub(r"down_blocks\.(\d+)\.downsampler\.",
               rf"downsamples.\1.downsamples.{num_res_blocks}.", k)
    k = k.replace("mid_block.resnets.0.", "middle.0.")
    k = k.replace("mid_block.attentions.0.", "middle.1.")
    k = k.replace("mid_block.resnets.1.", "middle.2.")
    if re.search(r"(downsamples\.\d+\.downsamples\.\d+|middle\.[02])\.", k):
      k = re.sub(r"\.(norm1|conv1|norm2|conv2|conv_shortcut)\.",
                 lambda m: f".{res[m.group(1)]}.", k)
    k = k.replace("encoder.conv_in.", "encoder.conv1.")
    k = k.replace("encoder.norm_out.", "encoder.head.0.")
    k = k.replace("encoder.conv_out.", "encoder.head.2.")
    k = re.sub(r"^quant_conv\.", "conv1.", k)
    k = re.sub(r"^post_quant_conv\.", "conv2.", k)
    out[k] = torch.from_numpy(np.ascontiguousarray(v))
  return out


def test_original_pth_converts(tmp_path, monkeypatch):
  model = _vae(tmp_path / "hf", seed=3)
  hf_config, weights = convert.read_hf(str(tmp_path / "hf"))
  cfg = wan_vae.config_from_hf(hf_config)
  pth = str(tmp_path / "Wan2.2_VAE.pth")
  torch.save(_original_keys(weights, cfg.num_res_blocks), pth)
  with pytest.raises(LaryError, match="encoder.conv1.weight"):
    registry.convert("wan2_2", pth, str(tmp_path / "o"))  # not Wan2.2's size
  monkeypatch.setitem(wan_vae.VARIANTS, "tiny", cfg)
  out = registry.convert("wan2_2", pth, str(tmp_path / "o"), variant="tiny")
  clips = _clips((1, 5, 32, 32, 3), seed=3)
  got = np.asarray(encoders.load("wan2_2", out)(clips))
  assert np.abs(got - _tokens(model, clips)).max() < 1e-4

  state = convert.read_pt(pth)
  del state["encoder.middle.1.to_qkv.weight"]
  with pytest.raises(LaryError, match="encoder.middle.1.to_qkv.weight"):
    wan_vae.params_from_pt(state, cfg)
  with pytest.raises(LaryError, match="is_residual"):
    wan_vae.config_from_hf(dict(hf_config, is_residual=False))
