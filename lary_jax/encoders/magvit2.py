"""Open-MAGVIT2 image tokenizer, encoder half, in Flax NNX.

What upstream LARY does (model `magvit2`), and what this module does:

1. Upstream's `magvit2` row is not the tokenizer's own output: it is a LAPA
   latent action model (`LatentActionQuantizationMagvit2`: spatial and
   temporal transformers, NSVQ, code_seq_len 16, dim 18) that reads the
   frozen Open-MAGVIT2 encoder's latents of each frame of a pair. This
   module is that frozen encoder; the LAM on top is `lary_jax.lams.lapa`'s
   feature LAQ (dim 18, a 14 x 14 grid at 224).
2. Pixels. Upstream feeds the encoder frames in [0, 1]
   (`get_reps_magvit2`), though Open-MAGVIT2 was trained on [-1, 1]
   (`image / 127.5 - 1`). `upstream_range=True` feeds [0, 1], as the LAQ
   checkpoint was trained on and as it must be for that LAM; the default
   feeds [-1, 1], the tokenizer's own range.
3. Encoder. `pretrain_lfqgan_256_262144.yaml`: conv_in, five levels of 4
   ResNet blocks (GroupNorm 32, swish, bias-free 3x3 convs) with channel
   multipliers (1, 1, 2, 2, 4) x 128 and a stride-2 conv (symmetric padding)
   after each of the first four, 4 mid ResNet blocks, GroupNorm, swish, and
   the 1x1 `conv_out` to 18 channels: the continuous latents before
   lookup-free quantisation (what the LAQ reads). 16x fewer pixels a side.
4. Tokens. [B, 196, 18] at 224 (row-major grid); out["grid"] [B, 14, 14, 18].

Checkpoints: Open-MAGVIT2's Lightning `.ckpt` (`state_dict`: encoder.*,
decoder.*, quantize.*, EMA copies; only encoder.* is read, the live weights
as upstream's `model.encoder` uses them) or LARY's LAQ `.pt` holding the
tokenizer under `magvit2_tokenizer.` (the LAQ's own keys are skipped).
"""

from __future__ import annotations

import dataclasses
import re
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

LOAD_OPTIONS = ("upstream_range",)
_LAQ_PREFIX = "magvit2_tokenizer."


@dataclasses.dataclass(frozen=True)
class Config(config_dict.DictConfig):
  """Encoder shape (Open-MAGVIT2's `ddconfig` names) and the input range.

  Defaults: the 256-pixel, 2^18-code pretrained tokenizer LARY uses.
  """

  in_channels: int = 3
  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 4
  z_channels: int = 18
  norm_groups: int = 32
  upstream_range: bool = False

  def __post_init__(self):
    object.__setattr__(self, "ch_mult", tuple(self.ch_mult))

  @property
  def downsample(self) -> int:
    return 2 ** (len(self.ch_mult) - 1)


VARIANTS = {"pretrain256_262144": Config()}


class Level(nnx.Module):
  """ResNet blocks, then (except the last level) a stride-2 3x3 conv."""

  def __init__(self, din: int, dout: int, cfg: Config, last: bool, *, dtype,
               rngs: nnx.Rngs):
    self.block = nnx.List([
        cl.ResnetBlock(din if i == 0 else dout, dout, cfg.norm_groups,
                       bias=False, dtype=dtype, rngs=rngs)
        for i in range(cfg.num_res_blocks)])
    self.downsample = None if last else cl.conv(
        dout, dout, 3, stride=2, padding=1, dtype=dtype, rngs=rngs)


class Model(nnx.Module):
  """The encoder: [B, H, W, 3] -> latents [B, H/16, W/16, 18]."""

  def __init__(self, cfg: Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(dtype=dtype, rngs=rngs)
    widths = [cfg.ch * m for m in cfg.ch_mult]
    self.conv_in = cl.conv(cfg.in_channels, cfg.ch, 3, padding=1, bias=False,
                           **kw)
    self.down = nnx.List([
        Level(cfg.ch if i == 0 else widths[i - 1], w, cfg,
              i == len(widths) - 1, **kw) for i, w in enumerate(widths)])
    self.mid_block = nnx.List([
        cl.ResnetBlock(widths[-1], widths[-1], cfg.norm_groups, bias=False,
                       **kw)
        for _ in range(cfg.num_res_blocks)])
    self.norm_out = cl.group_norm(widths[-1], groups=cfg.norm_groups, **kw)
    self.conv_out = cl.conv(widths[-1], cfg.z_channels, 1, **kw)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encodes images.

    Args:
      x: [B, H, W, 3] float in [0, 1] (`preprocess`); H, W multiples of
        `cfg.downsample`.

    Returns:
      (tokens [B, H' * W', z_channels], out) with out["grid"] the latents
      [B, H', W', z_channels].
    """
    cfg = self.cfg
    cl.check_images(x, "magvit2", cfg.downsample)
    b, h, w, _ = x.shape
    if not cfg.upstream_range:
      x = x * 2 - 1
    x = self.conv_in(x)
    for level in self.down:
      for block in level.block:
        x = block(x)
      if level.downsample is not None:
        x = level.downsample(x)
    for block in self.mid_block:
      x = block(x)
    grid = self.conv_out(cl.swish(self.norm_out(x)))
    gb, gh, gw, d = grid.shape
    return grid.reshape(gb, gh * gw, d), {"grid": grid}


# uint8 or [0, 1] float images -> float32 [0, 1] (the model scales itself).
preprocess = vit_layers.to_unit_float
# The tokens are the model's output as it is: every latent of the frame, [B, 196, 18]
# at 224.
select_tokens = None
load_options = cl.load_options
# Its convolutions on XLA's own CPU kernels (xla_options).
XLA_PROFILE = xla_options.CONVOLUTIONAL


# ---------------------------------------------------------------------------
# Checkpoints.


def config_from_hf(hf: dict[str, Any]) -> Config:
  """Config from a config.json holding Open-MAGVIT2's `ddconfig`.

  Accepts the ddconfig itself, `{"ddconfig": ...}` or the Lightning YAML's
  `{"model": {"init_args": {"ddconfig": ...}}}` as JSON.
  """
  dd = hf.get("model", {}).get("init_args", hf).get("ddconfig", hf)
  if "z_channels" not in dd or "ch_mult" not in dd:
    raise LaryError("config.json: no Open-MAGVIT2 ddconfig (z_channels, "
                    "ch_mult, ...) found")
  return Config(in_channels=dd.get("in_channels", 3), ch=dd.get("ch", 128),
                ch_mult=tuple(dd["ch_mult"]),
                num_res_blocks=dd.get("num_res_blocks", 4),
                z_channels=dd["z_channels"])


def _table(cfg: Config, p: str) -> dict[str, convert.Rule]:
  """NNX path -> rule; `p` is the prefix of the encoder's torch keys."""
  c = convert
  widths = [cfg.ch * m for m in cfg.ch_mult]

  def res(n: str, t: str, din: int, dout: int) -> dict[str, convert.Rule]:
    table = {n + "norm1.scale": c.same(t + "norm1.weight"),
             n + "norm1.bias": c.same(t + "norm1.bias"),
             n + "conv1.kernel": c.conv(t + "conv1.weight"),
             n + "norm2.scale": c.same(t + "norm2.weight"),
             n + "norm2.bias": c.same(t + "norm2.bias"),
             n + "conv2.kernel": c.conv(t + "conv2.weight")}
    if din != dout:
      table[n + "nin_shortcut.kernel"] = c.conv(t + "nin_shortcut.weight")
    return table

  table = {"conv_in.kernel": c.conv(p + "conv_in.weight"),
           "norm_out.scale": c.same(p + "norm_out.weight"),
           "norm_out.bias": c.same(p + "norm_out.bias"),
           "conv_out.kernel": c.conv(p + "conv_out.weight"),
           "conv_out.bias": c.same(p + "conv_out.bias")}
  for i, w in enumerate(widths):
    for j in range(cfg.num_res_blocks):
      din = (cfg.ch if i == 0 else widths[i - 1]) if j == 0 else w
      table |= res(f"down.{i}.block.{j}.", f"{p}down.{i}.block.{j}.", din, w)
    if i != len(widths) - 1:
      table[f"down.{i}.downsample.kernel"] = c.conv(
          f"{p}down.{i}.downsample.weight")
      table[f"down.{i}.downsample.bias"] = c.same(
          f"{p}down.{i}.downsample.bias")
  for j in range(cfg.num_res_blocks):
    table |= res(f"mid_block.{j}.", f"{p}mid_block.{j}.", widths[-1],
                 widths[-1])
  return table


def _encoder_prefix(weights: dict[str, np.ndarray]) -> str:
  for p in ("encoder.", _LAQ_PREFIX + "encoder."):
    if p + "conv_in.weight" in weights:
      return p
  raise LaryError("checkpoint has no key 'encoder.conv_in.weight' (nor "
                  f"'{_LAQ_PREFIX}encoder.conv_in.weight'); is this an "
                  "Open-MAGVIT2 tokenizer?")


def params_from_pt(weights: dict[str, np.ndarray], cfg: Config
                   ) -> dict[str, np.ndarray]:
  """NNX parameters from an Open-MAGVIT2 or LARY LAQ state dict.

  Everything but the encoder (decoder, quantiser, EMA copies, loss nets,
  and in a LAQ checkpoint the LAM itself) is skipped.
  """
  p = _encoder_prefix(weights)
  unused = (r"(?!" + re.escape(p) + r").*",)
  return convert.apply_table(weights, _table(cfg, p),
                             convert.param_shapes(Model, cfg), unused=unused)


params_from_torch = params_from_pt


def config_from_pt(weights: dict[str, np.ndarray]) -> Config:
  """Config read off a state dict's shapes."""
  p = _encoder_prefix(weights)
  ch, cin = weights[p + "conv_in.weight"].shape[:2]
  levels = blocks = 0
  while f"{p}down.{levels}.block.0.conv1.weight" in weights:
    levels += 1
  while f"{p}down.0.block.{blocks}.conv1.weight" in weights:
    blocks += 1
  mult = tuple(weights[f"{p}down.{i}.block.0.conv1.weight"].shape[0] // ch
               for i in range(levels))
  return Config(in_channels=cin, ch=ch, ch_mult=mult, num_res_blocks=blocks,
                z_channels=weights[p + "conv_out.weight"].shape[0])


# contract.ModelModule's hooks this family does not have.
FRAMES_VIEW = ""
load_checkpoint = None
