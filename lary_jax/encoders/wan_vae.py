"""Wan2.2 video VAE, encoder half, in Flax NNX.

What upstream LARY does (model `wan2-2`), and what this module does:

1. Frames. The clip goes in as one video: a classification clip's 9 frames,
   a regression pair's 2 frames, each frame resized to 224 (PIL Lanczos;
   here the stored bicubic frames) and scaled to [-1, 1].
2. Encoder. 2 x 2 space-to-depth to 12 channels, then the causal 3-D encoder
   (RMS-normalised residual blocks; three spatial and two temporal halvings,
   each block with an averaging shortcut; a mid block with one-head
   attention per frame), `quant_conv`, the posterior mean (48 of 96
   channels), normalised by Wan2.2's fixed per-channel latent mean and std.
   16x fewer pixels a side: 14 x 14 latents at 224.
3. Time. Upstream runs the encoder chunk by chunk (frame 0, then frames 1-4,
   5-8, ...), carrying causal-conv caches between chunks; here the same
   function runs on the whole clip at once (the caches are exactly a causal
   conv's left context, the per-chunk front padding of the averaging
   shortcut is one zero frame at the very front, and a temporal halving
   keeps frame 0 and then convolves windows (0, 1, 2), (2, 3, 4), ...).
   Frames past 1 + 4k are never reached. A 9-frame clip gives 3 latent
   frames (from frames 0, 1-4 and 5-8): 3 x 196 tokens.
4. Pairs. A 2-frame video is only its first chunk, so upstream's pair
   features hold the source frame alone and the target frame never enters.
   By default (`pairs_as_images=True`) each frame of a 2-frame input is
   encoded as its own one-frame video, giving 2 x 196 tokens;
   `pairs_as_images=False` reproduces upstream (196 tokens, source only).
5. Tokens. Per latent frame, rows and columns flattened, channels last:
   [B, T', 196, 48], the [T', 196, 48] per row that upstream stores. The
   frame axis stays, as upstream's: its attentive probe adds a temporal
   embedding to [T, N, D] features, and the laptop probes pool each frame's
   square grid (`pool_grid`), which a flat T' * 196 axis has not.

Checkpoints: a diffusers folder (`AutoencoderKLWan` with `is_residual`,
e.g. Wan2.2-TI2V-5B-Diffusers' `vae/`) or the original `Wan2.2_VAE.pth`.
NNX names follow diffusers. The latent mean and std are Config fields (from
diffusers' config.json, or Wan2.2's constants for the original file).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lary_jax import xla_options
from lary_jax.encoders import config_dict
from lary_jax.encoders import convert
from lary_jax.errors import LaryError
from lary_jax.nn import conv_layers as cl
from lary_jax.nn import vit_layers

LOAD_OPTIONS = ("pairs_as_images",)

# Wan2.2's latent statistics (its Wan2_2_VAE class and diffusers' config).
LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)


@dataclasses.dataclass(frozen=True)
class Config(config_dict.DictConfig):
  """Encoder shape (diffusers' `AutoencoderKLWan` names) and options.

  Defaults: Wan2.2's VAE (base_dim 160, z_dim 48, dim_mult (1, 2, 4, 4),
  2 residual blocks a level, temporal halvings after levels 1 and 2,
  2 x 2 patches).
  """

  base_dim: int = 160
  z_dim: int = 48
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temperal_downsample: tuple[bool, ...] = (False, True, True)
  patch_size: int = 2
  in_channels: int = 3
  latents_mean: tuple[float, ...] = LATENTS_MEAN
  latents_std: tuple[float, ...] = LATENTS_STD
  pairs_as_images: bool = True

  def __post_init__(self):
    object.__setattr__(self, "dim_mult", tuple(self.dim_mult))
    object.__setattr__(self, "temperal_downsample",
                       tuple(bool(t) for t in self.temperal_downsample))
    for name in ("latents_mean", "latents_std"):
      value = tuple(float(v) for v in getattr(self, name))
      if len(value) != self.z_dim:
        raise LaryError(f"wan2_2 config: {name} has {len(value)} values, "
                        f"expected z_dim={self.z_dim}")
      object.__setattr__(self, name, value)

  @property
  def downsample(self) -> int:
    return 2 ** (len(self.dim_mult) - 1) * self.patch_size

  def latent_frames(self, num_frames: int) -> int:
    """Latent frames for a clip of `num_frames` frames."""
    if num_frames == 2 and self.pairs_as_images:
      return 2
    return 1 + (num_frames - 1) // 4


VARIANTS = {"wan2_2": Config()}


class RMSNorm(nnx.Module):
  """x / ||x|| over channels, times sqrt(C) and a learned gain."""

  def __init__(self, dim: int):
    self.gamma = nnx.Param(jnp.ones((dim,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), -1,
                            keepdims=True))
    x = x / jnp.maximum(norm, 1e-12).astype(x.dtype)
    return x * (x.shape[-1] ** 0.5) * self.gamma[...].astype(x.dtype)


def causal_conv(din: int, dout: int, k: int, *, dtype,
                rngs: nnx.Rngs) -> nnx.Conv:
  """A k x k x k conv padded 2 * (k // 2) frames in front, none behind
  (computed frame by frame: `conv_layers.conv3d_by_frames`)."""
  p = k // 2
  return cl.conv(din, dout, (k, k, k), padding=((2 * p, 0), (p, p), (p, p)),
                 dtype=dtype, conv_general_dilated=cl.conv3d_by_frames,
                 rngs=rngs)


class ResidualBlock(nnx.Module):

  def __init__(self, din: int, dout: int, *, dtype, rngs: nnx.Rngs):
    self.norm1 = RMSNorm(din)
    self.conv1 = causal_conv(din, dout, 3, dtype=dtype, rngs=rngs)
    self.norm2 = RMSNorm(dout)
    self.conv2 = causal_conv(dout, dout, 3, dtype=dtype, rngs=rngs)
    self.conv_shortcut = (causal_conv(din, dout, 1, dtype=dtype, rngs=rngs)
                          if din != dout else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.conv1(cl.swish(self.norm1(x)))
    h = self.conv2(cl.swish(self.norm2(h)))
    return h + (x if self.conv_shortcut is None else self.conv_shortcut(x))


class AttentionBlock(nnx.Module):
  """One-head self-attention within each frame (1x1 convs as Linears)."""

  def __init__(self, dim: int, *, dtype, rngs: nnx.Rngs):
    self.norm = RMSNorm(dim)
    self.to_qkv = vit_layers.linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
    self.proj = vit_layers.linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape
    qkv = self.to_qkv(self.norm(x).reshape(b * t, h * w, c))
    y = cl.spatial_attention(*jnp.split(qkv, 3, axis=-1))
    return x + self.proj(y).reshape(b, t, h, w, c)


class Downsampler(nnx.Module):
  """Stride-2 conv per frame; with `temporal`, then a causal time halving."""

  def __init__(self, dim: int, temporal: bool, *, dtype, rngs: nnx.Rngs):
    self.resample = cl.conv(dim, dim, 3, stride=2, dtype=dtype, rngs=rngs)
    self.time_conv = (cl.conv(dim, dim, (3, 1, 1), stride=(2, 1, 1),
                              dtype=dtype, rngs=rngs) if temporal else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape
    x = self.resample(cl.pad_bottom_right(x.reshape(b * t, h, w, c)))
    x = x.reshape(b, t, *x.shape[1:])
    if self.time_conv is None or t < 3:
      return x if self.time_conv is None else x[:, :1]
    # Frame 0 passes; windows (0, 1, 2), (2, 3, 4), ... are convolved.
    return jnp.concatenate([x[:, :1], self.time_conv(x)], axis=1)


def avg_down(x: jax.Array, dout: int, ft: int, fs: int) -> jax.Array:
  """Wan's averaging shortcut: space/time-to-depth, then group means.

  The front is zero-padded to a multiple of `ft` frames, as upstream pads
  each chunk (only the first chunk is ever short).
  """
  b, t, h, w, c = x.shape
  pad = (ft - t % ft) % ft
  x = jnp.pad(x, ((0, 0), (pad, 0), (0, 0), (0, 0), (0, 0)))
  t = (t + pad) // ft
  x = x.reshape(b, t, ft, h // fs, fs, w // fs, fs, c)
  x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)  # channels ordered (c, ft, fs, fs)
  x = x.reshape(b, t, h // fs, w // fs, dout, -1)
  return x.mean(-1)


class DownBlock(nnx.Module):
  """Residual blocks (+ downsampler) plus the averaging shortcut."""

  def __init__(self, din: int, dout: int, cfg: Config, temporal: bool,
               down: bool, *, dtype, rngs: nnx.Rngs):
    self.resnets = nnx.List([
        ResidualBlock(din if i == 0 else dout, dout, dtype=dtype, rngs=rngs)
        for i in range(cfg.num_res_blocks)])
    self.downsampler = (Downsampler(dout, temporal, dtype=dtype, rngs=rngs)
                        if down else None)
    self.dout = dout
    self.ft = 2 if temporal else 1
    self.fs = 2 if down else 1

  def __call__(self, x: jax.Array) -> jax.Array:
    short = avg_down(x, self.dout, self.ft, self.fs)
    for resnet in self.resnets:
      x = resnet(x)
    if self.downsampler is not None:
      x = self.downsampler(x)
    return x + short


class MidBlock(nnx.Module):

  def __init__(self, dim: int, *, dtype, rngs: nnx.Rngs):
    self.resnets = nnx.List([ResidualBlock(dim, dim, dtype=dtype, rngs=rngs)
                             for _ in range(2)])
    self.attentions = nnx.List([AttentionBlock(dim, dtype=dtype, rngs=rngs)])

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.resnets[0](x)
    return self.resnets[1](self.attentions[0](x))


class Model(nnx.Module):
  """Patches, causal 3-D encoder, posterior mean, fixed normalisation."""

  def __init__(self, cfg: Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(dtype=dtype, rngs=rngs)
    dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
    levels = len(cfg.dim_mult)
    cin = cfg.in_channels * cfg.patch_size ** 2
    self.conv_in = causal_conv(cin, dims[0], 3, **kw)
    self.down_blocks = nnx.List([
        DownBlock(dims[i], dims[i + 1], cfg,
                  i < levels - 1 and cfg.temperal_downsample[i],
                  i < levels - 1, **kw) for i in range(levels)])
    self.mid_block = MidBlock(dims[-1], **kw)
    self.norm_out = RMSNorm(dims[-1])
    self.conv_out = causal_conv(dims[-1], 2 * cfg.z_dim, 3, **kw)
    self.quant_conv = causal_conv(2 * cfg.z_dim, 2 * cfg.z_dim, 1, **kw)

  def encode(self, x: jax.Array) -> jax.Array:
    """[B, T, H, W, 3] in [-1, 1] -> normalised means [B, T', H', W', z]."""
    t = x.shape[1]
    x = x[:, :1 + 4 * ((t - 1) // 4)]  # the chunks upstream reaches
    x = _space_to_depth(x, self.cfg.patch_size)
    x = self.conv_in(x)
    for block in self.down_blocks:
      x = block(x)
    x = self.mid_block(x)
    x = self.conv_out(cl.swish(self.norm_out(x)))
    mu = self.quant_conv(x)[..., :self.cfg.z_dim]
    mean = np.asarray(self.cfg.latents_mean, np.float32)
    inv_std = 1.0 / np.asarray(self.cfg.latents_std, np.float32)
    return (mu - mean) * inv_std.astype(mu.dtype)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encodes clips.

    Args:
      x: [B, T, H, W, 3] float in [0, 1] (`preprocess`); H, W multiples of
        `cfg.downsample`.

    Returns:
      (tokens [B, T', H' * W', z_dim], out) with out["latents"] the same as
      [B, T', H', W', z_dim].
    """
    cfg = self.cfg
    if x.ndim != 5:
      raise LaryError(f"wan2_2 expects clips [B, T, H, W, C], got {x.shape}")
    b, t, h, w, c = x.shape
    if h % cfg.downsample or w % cfg.downsample:
      raise LaryError(f"wan2_2: frame size {h}x{w} is not a multiple of "
                      f"{cfg.downsample}")
    x = x * 2 - 1
    if t == 2 and cfg.pairs_as_images:
      z = self.encode(x.reshape(b * t, 1, h, w, c))
      z = z.reshape(b, t, *z.shape[2:])
    else:
      z = self.encode(x)
    return z.reshape(*z.shape[:2], -1, z.shape[-1]), {"latents": z}


def _space_to_depth(x: jax.Array, p: int) -> jax.Array:
  """[B, T, H, W, C] -> [B, T, H/p, W/p, C*p*p], channels (c, col, row)."""
  if p == 1:
    return x
  b, t, h, w, c = x.shape
  x = x.reshape(b, t, h // p, p, w // p, p, c)
  x = x.transpose(0, 1, 2, 4, 6, 5, 3)  # [B, T, h, w, C, r (col), q (row)]
  return x.reshape(b, t, h // p, w // p, c * p * p)


# uint8 or [0, 1] float images -> float32 [0, 1] (the model scales itself).
preprocess = vit_layers.to_unit_float
# The tokens are the model's output as it is: every latent, [B, T', 196, 48]
# at 224.
select_tokens = None
load_options = cl.load_options
# Its convolutions and channel norms on XLA's own CPU kernels (xla_options).
XLA_PROFILE = xla_options.CONVOLUTIONAL


# ---------------------------------------------------------------------------
# Checkpoints.


def config_from_hf(hf: dict[str, Any]) -> Config:
  """Config from a diffusers `AutoencoderKLWan` config.json dict."""
  if hf.get("_class_name") not in (None, "AutoencoderKLWan"):
    raise LaryError(f"config.json: _class_name={hf.get('_class_name')!r}, "
                    "expected 'AutoencoderKLWan'")
  if not hf.get("is_residual", False):
    raise LaryError("config.json: is_residual is false: a Wan2.1 VAE; only "
                    "the Wan2.2 VAE (is_residual=true) is supported")
  if hf.get("attn_scales"):
    raise LaryError(f"config.json: attn_scales={hf['attn_scales']} is not "
                    "supported (Wan VAEs use [])")
  patch = hf.get("patch_size") or 1
  cin = hf.get("in_channels", 3)
  if cin % (patch * patch):
    raise LaryError(f"config.json: in_channels={cin} is not a multiple of "
                    f"patch_size^2={patch * patch}")
  return Config(base_dim=hf.get("base_dim", 96), z_dim=hf.get("z_dim", 16),
                dim_mult=tuple(hf.get("dim_mult", (1, 2, 4, 4))),
                num_res_blocks=hf.get("num_res_blocks", 2),
                temperal_downsample=tuple(hf.get("temperal_downsample",
                                                 (False, True, True))),
                patch_size=patch, in_channels=cin // (patch * patch),
                latents_mean=tuple(hf.get("latents_mean", LATENTS_MEAN)),
                latents_std=tuple(hf.get("latents_std", LATENTS_STD)))


def _conv(n: str, t: str) -> dict[str, convert.Rule]:
  return {n + ".kernel": convert.conv(t + ".weight"),
          n + ".bias": convert.same(t + ".bias")}


def _gamma(n: str, t: str) -> dict[str, convert.Rule]:
  return {n + ".gamma": convert.Rule((t + ".gamma",), lambda w: w.reshape(-1))}


def _squeeze_linear(n: str, t: str) -> dict[str, convert.Rule]:
  """A 1x1 Conv2d -> Linear kernel [in, out] and bias."""
  return {n + ".kernel": convert.Rule((t + ".weight",), lambda w: w.reshape(
      w.shape[0], -1).T), n + ".bias": convert.same(t + ".bias")}


def _resnet(n: str, t: str, din: int, dout: int, *, original: bool
            ) -> dict[str, convert.Rule]:
  """Rules for one residual block; the original indexes its Sequential."""
  names = (("residual.0", "residual.2", "residual.3", "residual.6",
            "shortcut") if original else
           ("norm1", "conv1", "norm2", "conv2", "conv_shortcut"))
  table = {**_gamma(n + "norm1", t + names[0]),
           **_conv(n + "conv1", t + names[1]),
           **_gamma(n + "norm2", t + names[2]),
           **_conv(n + "conv2", t + names[3])}
  if din != dout:
    table |= _conv(n + "conv_shortcut", t + names[4])
  return table


def _table(cfg: Config, *, original: bool) -> dict[str, convert.Rule]:
  dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
  levels = len(cfg.dim_mult)
  e = "encoder."
  if original:
    mid, attn = e + "middle.", e + "middle.1."
    table = {**_conv("conv_in", e + "conv1"),
             **_gamma("norm_out", e + "head.0"),
             **_conv("conv_out", e + "head.2"),
             **_conv("quant_conv", "conv1")}
  else:
    mid, attn = e + "mid_block.", e + "mid_block.attentions.0."
    table = {**_conv("conv_in", e + "conv_in"),
             **_gamma("norm_out", e + "norm_out"),
             **_conv("conv_out", e + "conv_out"),
             **_conv("quant_conv", "quant_conv")}
  for i in range(levels):
    for j in range(cfg.num_res_blocks):
      din = dims[i] if j == 0 else dims[i + 1]
      src = (f"{e}downsamples.{i}.downsamples.{j}." if original else
             f"{e}down_blocks.{i}.resnets.{j}.")
      table |= _resnet(f"down_blocks.{i}.resnets.{j}.", src, din,
                       dims[i + 1], original=original)
    if i < levels - 1:
      src = (f"{e}downsamples.{i}.downsamples.{cfg.num_res_blocks}."
             if original else f"{e}down_blocks.{i}.downsampler.")
      n = f"down_blocks.{i}.downsampler."
      table |= _conv(n + "resample", src + "resample.1")
      if cfg.temperal_downsample[i]:
        table |= _conv(n + "time_conv", src + "time_conv")
  d = dims[-1]
  for k, src in enumerate((mid + "0.", mid + "2.") if original else
                          (mid + "resnets.0.", mid + "resnets.1.")):
    table |= _resnet(f"mid_block.resnets.{k}.", src, d, d, original=original)
  a = "mid_block.attentions.0."
  table |= {**_gamma(a + "norm", attn + "norm"),
            **_squeeze_linear(a + "to_qkv", attn + "to_qkv"),
            **_squeeze_linear(a + "proj", attn + "proj")}
  return table


def params_from_torch(weights: dict[str, np.ndarray], cfg: Config
                      ) -> dict[str, np.ndarray]:
  """NNX parameters from a diffusers `AutoencoderKLWan` state dict.

  (The latent statistics are in diffusers' config.json: `config_from_hf`.)
  """
  if "encoder.conv_in.weight" not in weights:
    raise LaryError("checkpoint has no key 'encoder.conv_in.weight'; is this "
                    "a diffusers Wan VAE?")
  return convert.apply_table(
      weights, _table(cfg, original=False), convert.param_shapes(Model, cfg),
      unused=(r"decoder\..*", r"post_quant_conv\..*"))


def params_from_pt(weights: dict[str, np.ndarray], cfg: Config
                   ) -> dict[str, np.ndarray]:
  """NNX parameters from the original `Wan2.2_VAE.pth` state dict."""
  if "encoder.conv1.weight" not in weights:
    raise LaryError("checkpoint has no key 'encoder.conv1.weight'; is this "
                    "the original Wan2.2_VAE.pth?")
  return convert.apply_table(
      weights, _table(cfg, original=True), convert.param_shapes(Model, cfg),
      unused=(r"decoder\..*", r"conv2\..*"))


def config_from_pt(weights: dict[str, np.ndarray]) -> Config:
  """Config of an original state dict: Wan2.2's, checked against shapes."""
  cfg = Config()
  key = "encoder.conv1.weight"
  if key not in weights:
    raise LaryError(f"checkpoint has no key {key!r}; is this the original "
                    "Wan2.2_VAE.pth?")
  shape = tuple(weights[key].shape)
  want = (cfg.base_dim, cfg.in_channels * cfg.patch_size ** 2, 3, 3, 3)
  if shape != want:
    raise LaryError(f"checkpoint {key!r} has shape {shape}, expected {want} "
                    "(Wan2.2's VAE; pass variant= for another)")
  return cfg


# contract.ModelModule's hooks this family does not have.
FRAMES_VIEW = ""
load_checkpoint = None
