"""Flax NNX building blocks shared by the convolutional (VAE) encoders.

Channels-last throughout: images [B, H, W, C], videos [B, T, H, W, C]. A conv
kernel is [*k, C_in, C_out] (torch's weight moved by `convert.conv`), float32
parameters, `dtype` the compute dtype, as in `vit_layers`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lary_jax.errors import LaryError


def conv(din: int, dout: int, kernel: int | Sequence[int], *,
         stride: int | Sequence[int] = 1,
         padding: int | Sequence[tuple[int, int]] | str = 0,
         bias: bool = True, dtype=jnp.float32,
         conv_general_dilated: Callable[..., jax.Array] = (
             jax.lax.conv_general_dilated),
         rngs: nnx.Rngs) -> nnx.Conv:
  """A torch-style Conv (2-D, or 3-D with a 3-long `kernel`).

  `padding` n pads every spatial axis by n on both sides, as torch's
  `padding=n`; explicit ((lo, hi), ...) pairs or "VALID" pass through.
  `conv_general_dilated` computes it (`lax.conv_general_dilated`'s
  signature), e.g. `conv3d_by_frames`.
  """
  kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
  if isinstance(padding, int):
    padding = ((padding, padding),) * len(kernel)
  return nnx.Conv(din, dout, kernel, strides=stride, padding=padding,
                  use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
                  conv_general_dilated=conv_general_dilated, rngs=rngs)


def conv3d_by_frames(lhs: jax.Array, rhs: jax.Array,
                     window_strides: Sequence[int],
                     padding: Sequence[tuple[int, int]], *,
                     lhs_dilation: Sequence[int] | None = None,
                     rhs_dilation: Sequence[int] | None = None,
                     feature_group_count: int = 1, precision: Any = None,
                     **_) -> jax.Array:
  """A channels-last 3-D convolution with time stride 1, as one 2-D
  convolution of every frame per time tap of the kernel, summed.

  The same function as `lax.conv_general_dilated` on lhs [B, T, H, W, C]
  and rhs [kt, kh, kw, C, C'] (nnx.Conv's layout), to rounding. XLA:CPU
  runs its 3-D convolutions at ~150 GFLOP/s on 2 cores, the 2-D ones at
  ~290 (Wan2.2's [9, 112, 112, 160] clip, 3x3x3, 160 -> 160: 1.0 s vs
  0.54 s).
  """
  simple = (len(window_strides) == 3 and window_strides[0] == 1
            and all(d == 1 for d in (*(lhs_dilation or ()),
                                     *(rhs_dilation or ())))
            and feature_group_count == 1 and not isinstance(padding, str))
  if not simple:
    raise LaryError("conv3d_by_frames: only undilated, ungrouped 3-D "
                    "convolutions with time stride 1 and explicit padding")
  (front, back), *space = padding
  b, t, h, w, c = lhs.shape
  taps = rhs.shape[0]
  frames = t + front + back - taps + 1
  out = None
  # Tap a reads input frame f + a - front for output frame f: each tap
  # convolves the input frames it reaches (a causal kernel's last tap reads
  # them all, uncopied) and its outputs are shifted into place, instead of
  # padding the input in time and slicing it once per tap (those copies
  # were ~10% of Wan2.2's forward).
  for a in range(taps):
    lo, hi = max(0, front - a), min(frames, t + front - a)
    if lo >= hi:
      continue
    y = jax.lax.conv_general_dilated(
        lhs[:, lo + a - front:hi + a - front].reshape(
            b * (hi - lo), h, w, c), rhs[a], window_strides[1:], space,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)
    y = jnp.pad(y.reshape(b, hi - lo, *y.shape[1:]),
                ((0, 0), (lo, frames - hi), (0, 0), (0, 0), (0, 0)))
    out = y if out is None else out + y
  if out is None:
    raise LaryError(f"conv3d_by_frames: {t} frames, time padding "
                    f"{(front, back)} and {taps} taps leave no output frame")
  return out


def group_norm(dim: int, *, groups: int = 32, eps: float = 1e-6,
               affine: bool = True, dtype=jnp.float32,
               rngs: nnx.Rngs) -> nnx.GroupNorm:
  """torch.nn.GroupNorm: statistics over each channel group and all pixels.

  The two-pass variance (E[(x - mean)^2]) is torch's; the one-pass form
  loses digits on activations with a large mean.
  """
  return nnx.GroupNorm(dim, num_groups=groups, epsilon=eps, dtype=dtype,
                       param_dtype=jnp.float32, use_bias=affine,
                       use_scale=affine, use_fast_variance=False, rngs=rngs)


def swish(x: jax.Array) -> jax.Array:
  """x * sigmoid(x) (SiLU)."""
  return x * jax.nn.sigmoid(x)


def check_images(x: jax.Array, name: str, downsample: int) -> None:
  """Raises unless x is images [B, H, W, C] with H, W multiples of
  `downsample` (the encoder `name`'s pixels per token side)."""
  if x.ndim != 4:
    raise LaryError(f"{name} expects images [B, H, W, C], got {x.shape}")
  h, w = x.shape[1:3]
  if h % downsample or w % downsample:
    raise LaryError(f"{name}: image size {h}x{w} is not a multiple of "
                    f"{downsample}")


class ResnetBlock(nnx.Module):
  """GroupNorm -> swish -> conv, twice, plus a 1x1 shortcut on width change.

  The VAE/tokenizer encoders' block (FLUX.2 with biases, Open-MAGVIT2
  without); attribute names are their state dicts'.
  """

  def __init__(self, din: int, dout: int, groups: int, *, bias: bool = True,
               dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.norm1 = group_norm(din, groups=groups, **kw)
    self.conv1 = conv(din, dout, 3, padding=1, bias=bias, **kw)
    self.norm2 = group_norm(dout, groups=groups, **kw)
    self.conv2 = conv(dout, dout, 3, padding=1, bias=bias, **kw)
    self.nin_shortcut = (conv(din, dout, 1, bias=bias, **kw)
                         if din != dout else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.conv1(swish(self.norm1(x)))
    h = self.conv2(swish(self.norm2(h)))
    if self.nin_shortcut is not None:
      x = self.nin_shortcut(x)
    return x + h


def spatial_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """One-head softmax attention over pixels: [B, N, C] each -> [B, N, C]."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bnc,bmc->bnm", q * scale, k)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.einsum("bnm,bmc->bnc", weights.astype(v.dtype), v)


def pad_bottom_right(x: jax.Array) -> jax.Array:
  """Zero row below and zero column right of [..., H, W, C] (torch's
  asymmetric pad (0, 1, 0, 1) before a stride-2 3x3 conv)."""
  pads = [(0, 0)] * (x.ndim - 3) + [(0, 1), (0, 1), (0, 0)]
  return jnp.pad(x, pads)


def parse_bool(value: object, name: str) -> bool:
  """A load-time switch given as bool, 0/1 or "true"/"false"."""
  if isinstance(value, str):
    low = value.strip().lower()
    if low in ("1", "true", "yes"):
      return True
    if low in ("0", "false", "no"):
      return False
  elif isinstance(value, (bool, int)) and value in (0, 1):
    return bool(value)
  raise LaryError(f"encoder option {name}={value!r}: expected 0/1 or "
                  "true/false")


def load_options(cfg: Any, **options: Any) -> Any:
  """`cfg` with load-time switches set (`LOAD_OPTIONS`: upstream_layout=1 ...)."""
  return dataclasses.replace(
      cfg, **{k: parse_bool(v, k) for k, v in options.items()})
