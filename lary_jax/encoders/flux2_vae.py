"""FLUX.2 autoencoder, encoder half, in Flax NNX.

What upstream LARY does (model `flux2`), and what this module does:

1. Frames. Every frame is encoded on its own, as an image: a clip's 9
   frames give [9, N, 128], a regression pair [2, N, 128]. Here the encoder
   is an image encoder; extraction folds [B, T] frames into the batch.
2. Pixels. Video mode scales the bicubic-resized frames to [-1, 1]. Image
   (pair) mode builds `2 * u - 1` from the uint8 values u themselves, so the
   autoencoder sees [-1, 509]; `upstream_uint8=True` reproduces that, the
   default feeds [-1, 1] as in video mode. (Upstream resizes the pair with
   PIL's Lanczos filter; the stored frames here are bicubic.)
3. Encoder. The KL autoencoder's encoder (ResNet levels, a mid block with
   one-head attention, `quant_conv`), the posterior mean (first 32 of 64
   channels), 2 x 2 space-to-depth to 128 channels, then the frozen
   BatchNorm's running statistics: (z - mean) / sqrt(var + 1e-4). At 224
   pixels that is a 14 x 14 grid of 128-dim latents.
4. Tokens. The latent grid row-major, channels last: [B, 196, 128] per frame.
   Upstream instead reshapes twice where it should permute: it reads the
   [H, W, 3] frame buffer as [3, H, W], and the [128, 14, 14] latent buffer
   as [196, 128]. `upstream_layout=True` reproduces both (so every token
   mixes channels and positions as upstream's stored features do).

Checkpoints: a diffusers folder (`AutoencoderKLFlux2`, e.g. FLUX.2-dev's
`vae/`) or the original `ae.safetensors` (Black Forest Labs' key layout,
config = its `AutoEncoderParams` defaults). NNX names follow the original.
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

# Config fields `encoders.load(..., **options)` may set at load time.
LOAD_OPTIONS = ("upstream_layout", "upstream_uint8")


@dataclasses.dataclass(frozen=True)
class Config(config_dict.DictConfig):
  """Encoder shape (the original's `AutoEncoderParams` names) and options.

  Defaults: FLUX.2's autoencoder (ch 128, ch_mult (1, 2, 4, 4), 2 ResNet
  blocks a level, 32 latent channels, 2 x 2 patches, BatchNorm eps 1e-4).
  """

  in_channels: int = 3
  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  z_channels: int = 32
  norm_groups: int = 32
  patch: int = 2
  bn_eps: float = 1e-4
  upstream_layout: bool = False
  upstream_uint8: bool = False

  def __post_init__(self):
    object.__setattr__(self, "ch_mult", tuple(self.ch_mult))

  @property
  def dim(self) -> int:
    return self.z_channels * self.patch ** 2

  @property
  def downsample(self) -> int:
    """Pixels per token side: 2^(levels - 1) x the patch."""
    return 2 ** (len(self.ch_mult) - 1) * self.patch


VARIANTS = {"flux2": Config()}


class AttnBlock(nnx.Module):
  """One-head self-attention over the pixels (1x1 convs as Linears)."""

  def __init__(self, dim: int, groups: int, *, dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.norm = cl.group_norm(dim, groups=groups, **kw)
    self.q, self.k, self.v, self.proj_out = (
        vit_layers.linear(dim, dim, **kw) for _ in range(4))

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    y = self.norm(x).reshape(b, h * w, c)
    y = cl.spatial_attention(self.q(y), self.k(y), self.v(y))
    return x + self.proj_out(y).reshape(b, h, w, c)


class Downsample(nnx.Module):
  """Pad bottom/right by one, then a stride-2 3x3 conv."""

  def __init__(self, dim: int, *, dtype, rngs: nnx.Rngs):
    self.conv = cl.conv(dim, dim, 3, stride=2, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(cl.pad_bottom_right(x))


class Level(nnx.Module):
  """One resolution: ResNet blocks, then (except the last) a downsample."""

  def __init__(self, din: int, dout: int, cfg: Config, last: bool, *, dtype,
               rngs: nnx.Rngs):
    g = cfg.norm_groups
    self.block = nnx.List([
        cl.ResnetBlock(din if i == 0 else dout, dout, g, dtype=dtype, rngs=rngs)
        for i in range(cfg.num_res_blocks)])
    self.downsample = (None if last else
                       Downsample(dout, dtype=dtype, rngs=rngs))


class Mid(nnx.Module):

  def __init__(self, dim: int, groups: int, *, dtype, rngs: nnx.Rngs):
    self.block_1 = cl.ResnetBlock(dim, dim, groups, dtype=dtype, rngs=rngs)
    self.attn_1 = AttnBlock(dim, groups, dtype=dtype, rngs=rngs)
    self.block_2 = cl.ResnetBlock(dim, dim, groups, dtype=dtype, rngs=rngs)


class Model(nnx.Module):
  """Encoder, posterior mean, 2 x 2 patches, frozen BatchNorm statistics."""

  def __init__(self, cfg: Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(dtype=dtype, rngs=rngs)
    widths = [cfg.ch * m for m in cfg.ch_mult]
    self.conv_in = cl.conv(cfg.in_channels, cfg.ch, 3, padding=1, **kw)
    self.down = nnx.List([
        Level(cfg.ch if i == 0 else widths[i - 1], w, cfg,
              i == len(widths) - 1, **kw) for i, w in enumerate(widths)])
    self.mid = Mid(widths[-1], cfg.norm_groups, **kw)
    self.norm_out = cl.group_norm(widths[-1], groups=cfg.norm_groups, **kw)
    z2 = 2 * cfg.z_channels
    self.conv_out = cl.conv(widths[-1], z2, 3, padding=1, **kw)
    self.quant_conv = cl.conv(z2, z2, 1, **kw)
    # The BatchNorm's running statistics: fixed numbers, kept as parameters
    # so that they travel with the checkpoint.
    self.bn_mean = nnx.Param(jnp.zeros((cfg.dim,), jnp.float32))
    self.bn_var = nnx.Param(jnp.ones((cfg.dim,), jnp.float32))

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encodes images.

    Args:
      x: [B, H, W, 3] float in [0, 1] (`preprocess`); H, W multiples of
        `cfg.downsample`.

    Returns:
      (tokens [B, H' * W', 128], out) with out["grid"] the normalised
      latents [B, H', W', 128] and out["mean"] the posterior mean before
      patching [B, 2H', 2W', 32].
    """
    cfg = self.cfg
    cl.check_images(x, "flux2", cfg.downsample)
    b, h, w, c = x.shape
    x = x * (2 * 255.0) - 1 if cfg.upstream_uint8 else x * 2 - 1
    if cfg.upstream_layout:  # the HWC buffer read as CHW, as upstream
      x = x.reshape(b, c, h, w).transpose(0, 2, 3, 1)
    x = self.conv_in(x)
    for level in self.down:
      for block in level.block:
        x = block(x)
      if level.downsample is not None:
        x = level.downsample(x)
    x = self.mid.block_2(self.mid.attn_1(self.mid.block_1(x)))
    x = self.conv_out(cl.swish(self.norm_out(x)))
    mean = self.quant_conv(x)[..., :cfg.z_channels]
    grid = _space_to_depth(mean, cfg.patch)
    grid = (grid - self.bn_mean[...]) * jax.lax.rsqrt(
        self.bn_var[...] + cfg.bn_eps)
    gb, gh, gw, d = grid.shape
    if cfg.upstream_layout:  # the [D, H', W'] buffer read as [H' * W', D]
      tokens = grid.transpose(0, 3, 1, 2).reshape(gb, gh * gw, d)
    else:
      tokens = grid.reshape(gb, gh * gw, d)
    return tokens, {"grid": grid, "mean": mean}


def _space_to_depth(x: jax.Array, p: int) -> jax.Array:
  """[B, H, W, C] -> [B, H/p, W/p, C*p*p], channels ordered (c, pi, pj)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4)
  return x.reshape(b, h // p, w // p, c * p * p)


# uint8 or [0, 1] float images -> float32 [0, 1] (the model scales itself).
preprocess = vit_layers.to_unit_float
# The tokens are the model's output as it is (as upstream's): every latent
# of the frame, [B, 196, 128] at 224.
select_tokens = None
load_options = cl.load_options
# Its convolutions on XLA's own CPU kernels (xla_options).
XLA_PROFILE = xla_options.CONVOLUTIONAL


# ---------------------------------------------------------------------------
# Checkpoints.


def config_from_hf(hf: dict[str, Any]) -> Config:
  """Config from a diffusers `AutoencoderKLFlux2` config.json dict."""
  if hf.get("_class_name") not in (None, "AutoencoderKLFlux2"):
    raise LaryError(f"config.json: _class_name={hf.get('_class_name')!r}, "
                    "expected 'AutoencoderKLFlux2'")
  widths = list(hf.get("block_out_channels", (128, 256, 512, 512)))
  ch = widths[0]
  if any(w % ch for w in widths):
    raise LaryError(f"config.json: block_out_channels={widths} are not "
                    f"multiples of {ch}")
  patch = hf.get("patch_size", (2, 2))
  for key, want in (("act_fn", "silu"), ("use_quant_conv", True),
                    ("mid_block_add_attention", True)):
    if hf.get(key, want) != want:
      raise LaryError(f"config.json: {key}={hf[key]!r} is not supported "
                      f"(expected {want!r})")
  return Config(in_channels=hf.get("in_channels", 3), ch=ch,
                ch_mult=tuple(w // ch for w in widths),
                num_res_blocks=hf.get("layers_per_block", 2),
                z_channels=hf.get("latent_channels", 32),
                norm_groups=hf.get("norm_num_groups", 32),
                patch=config_dict.square(patch, "patch_size"),
                bn_eps=hf.get("batch_norm_eps", 1e-4))


def _squeeze_linear(key: str) -> convert.Rule:
  """A 1x1 Conv2d weight [out, in, 1, 1] -> Linear kernel [in, out]."""
  return convert.Rule((key,), lambda w: w.reshape(w.shape[0], -1).T)


def _conv_rules(n: str, t: str, bias: bool = True) -> dict[str, convert.Rule]:
  rules = {n + ".kernel": convert.conv(t + ".weight")}
  if bias:
    rules[n + ".bias"] = convert.same(t + ".bias")
  return rules


def _norm_rules(n: str, t: str) -> dict[str, convert.Rule]:
  return {n + ".scale": convert.same(t + ".weight"),
          n + ".bias": convert.same(t + ".bias")}


def _resnet_rules(n: str, t: str, din: int, dout: int, *, diffusers: bool
                  ) -> dict[str, convert.Rule]:
  short = "conv_shortcut" if diffusers else "nin_shortcut"
  table = {**_norm_rules(n + "norm1", t + "norm1"),
           **_conv_rules(n + "conv1", t + "conv1"),
           **_norm_rules(n + "norm2", t + "norm2"),
           **_conv_rules(n + "conv2", t + "conv2")}
  if din != dout:
    table |= _conv_rules(n + "nin_shortcut", t + short)
  return table


def _table(cfg: Config, *, diffusers: bool) -> dict[str, convert.Rule]:
  """NNX path -> rule, for diffusers' or the original key layout."""
  c = convert
  widths = [cfg.ch * m for m in cfg.ch_mult]
  table = {**_conv_rules("conv_in", "encoder.conv_in"),
           **_norm_rules("norm_out", "encoder.conv_norm_out" if diffusers
                         else "encoder.norm_out"),
           **_conv_rules("conv_out", "encoder.conv_out"),
           **_conv_rules("quant_conv", "quant_conv" if diffusers
                         else "encoder.quant_conv"),
           "bn_mean": c.same("bn.running_mean"),
           "bn_var": c.same("bn.running_var")}
  for i, w in enumerate(widths):
    t = f"encoder.down_blocks.{i}." if diffusers else f"encoder.down.{i}."
    for j in range(cfg.num_res_blocks):
      din = (cfg.ch if i == 0 else widths[i - 1]) if j == 0 else w
      src = t + (f"resnets.{j}." if diffusers else f"block.{j}.")
      table |= _resnet_rules(f"down.{i}.block.{j}.", src, din, w,
                             diffusers=diffusers)
    if i != len(widths) - 1:
      src = t + ("downsamplers.0.conv" if diffusers else "downsample.conv")
      table |= _conv_rules(f"down.{i}.downsample.conv", src)
  d = widths[-1]
  if diffusers:
    m = "encoder.mid_block."
    table |= _resnet_rules("mid.block_1.", m + "resnets.0.", d, d,
                           diffusers=True)
    table |= _resnet_rules("mid.block_2.", m + "resnets.1.", d, d,
                           diffusers=True)
    a = m + "attentions.0."
    table |= _norm_rules("mid.attn_1.norm", a + "group_norm")
    for ours, theirs in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"),
                         ("proj_out", "to_out.0")):
      table[f"mid.attn_1.{ours}.kernel"] = c.linear(f"{a}{theirs}.weight")
      table[f"mid.attn_1.{ours}.bias"] = c.same(f"{a}{theirs}.bias")
  else:
    m = "encoder.mid."
    table |= _resnet_rules("mid.block_1.", m + "block_1.", d, d,
                           diffusers=False)
    table |= _resnet_rules("mid.block_2.", m + "block_2.", d, d,
                           diffusers=False)
    table |= _norm_rules("mid.attn_1.norm", m + "attn_1.norm")
    for name in ("q", "k", "v", "proj_out"):
      table[f"mid.attn_1.{name}.kernel"] = _squeeze_linear(
          f"{m}attn_1.{name}.weight")
      table[f"mid.attn_1.{name}.bias"] = c.same(f"{m}attn_1.{name}.bias")
  return table


# The decoder (and the BatchNorm's step counter) are not needed to encode.
_UNUSED = (r"decoder\..*", r"post_quant_conv\..*",
           r"bn\.num_batches_tracked")


def params_from_torch(weights: dict[str, np.ndarray], cfg: Config
                      ) -> dict[str, np.ndarray]:
  """NNX parameters from a diffusers `AutoencoderKLFlux2` state dict."""
  if "encoder.conv_in.weight" not in weights:
    raise LaryError("checkpoint has no key 'encoder.conv_in.weight'; is this "
                    "a FLUX.2 autoencoder?")
  return convert.apply_table(weights, _table(cfg, diffusers=True),
                             convert.param_shapes(Model, cfg), unused=_UNUSED)


def params_from_pt(weights: dict[str, np.ndarray], cfg: Config
                   ) -> dict[str, np.ndarray]:
  """NNX parameters from the original `ae.safetensors` key layout."""
  if "encoder.quant_conv.weight" not in weights:
    raise LaryError("checkpoint has no key 'encoder.quant_conv.weight'; is "
                    "this FLUX.2's original ae.safetensors?")
  return convert.apply_table(weights, _table(cfg, diffusers=False),
                             convert.param_shapes(Model, cfg), unused=_UNUSED)


def config_from_pt(weights: dict[str, np.ndarray]) -> Config:
  """Config read off an original state dict's shapes."""
  key = "encoder.conv_in.weight"
  if key not in weights:
    raise LaryError(f"checkpoint has no key {key!r}; is this a FLUX.2 "
                    "autoencoder?")
  ch, cin = weights[key].shape[:2]
  levels = 0
  while f"encoder.down.{levels}.block.0.conv1.weight" in weights:
    levels += 1
  blocks = 0
  while f"encoder.down.0.block.{blocks}.conv1.weight" in weights:
    blocks += 1
  mult = tuple(weights[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch
               for i in range(levels))
  z = weights["encoder.conv_out.weight"].shape[0] // 2
  dim = weights["bn.running_mean"].shape[0]
  return Config(in_channels=cin, ch=ch, ch_mult=mult, num_res_blocks=blocks,
                z_channels=z, patch=int(round((dim // z) ** 0.5)))


# contract.ModelModule's hooks this family does not have.
FRAMES_VIEW = ""
load_checkpoint = None
