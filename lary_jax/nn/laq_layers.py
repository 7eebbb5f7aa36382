"""Flax NNX blocks of LAPA's latent action quantiser (LAQ).

The blocks behave as upstream's `laq_model/attention.py` (LARYBench, after
lucidrains' Phenaki): pre-norm attention with l2-normalised q and k times
learned per-dimension scales and a fixed temperature of 8, null key/values on
the cross-attention, a GEGLU feed-forward, a causal depthwise 3-D convolution
as position generator (PEG) before every layer, and a continuous position
bias (an MLP on log-spaced 2-D offsets) on the spatial self-attention.

Attribute names follow the torch modules (`to_q`, `to_kv`, `norm_out`, ...)
so that `lapa.params_from_torch` is mostly a list of renames. Parameters are
float32; `dtype` is the compute dtype. Layers are initialised as PyTorch
initialises them (uniform +-1/sqrt(fan_in)), so that a LAM trained here starts
where upstream's does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Upstream's attention multiplies cosine similarities by this constant.
ATTN_SCALE = 8.0


def torch_uniform(fan_in: int) -> nnx.Initializer:
  """PyTorch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def linear(din: int, dout: int, *, bias: bool = True, dtype=jnp.float32,
           rngs: nnx.Rngs) -> nnx.Linear:
  """A torch-initialised Linear; kernel [din, dout] (torch weight.T)."""
  init = torch_uniform(din)
  return nnx.Linear(din, dout, use_bias=bias, dtype=dtype,
                    param_dtype=jnp.float32, kernel_init=init, bias_init=init,
                    rngs=rngs)


def layer_norm(dim: int, *, bias: bool = True, dtype=jnp.float32,
               rngs: nnx.Rngs) -> nnx.LayerNorm:
  """torch LayerNorm (eps 1e-5); `bias=False` is upstream's gamma-only norm.

  Upstream's bias-less LayerNorm keeps a zero `beta` buffer; it is the same
  function as a LayerNorm without bias.
  """
  return nnx.LayerNorm(dim, epsilon=1e-5, use_bias=bias, dtype=dtype,
                       param_dtype=jnp.float32, rngs=rngs)


def conv(cin: int, cout: int, kernel: tuple[int, ...], *, strides=1,
         padding=0, groups: int = 1, dtype=jnp.float32,
         rngs: nnx.Rngs) -> nnx.Conv:
  """A torch-initialised channels-last Conv with torch's symmetric padding."""
  init = torch_uniform(cin // groups * math.prod(kernel))
  # A tuple: the padding is static in the graphdef, which jit hashes.
  pad = ((padding, padding),) * len(kernel)
  return nnx.Conv(cin, cout, kernel, strides=strides, padding=pad,
                  feature_group_count=groups, dtype=dtype,
                  param_dtype=jnp.float32, kernel_init=init, bias_init=init,
                  rngs=rngs)


def leaky_relu(x: jax.Array) -> jax.Array:
  return jax.nn.leaky_relu(x, 0.1)


def gelu_erf(x: jax.Array) -> jax.Array:
  """Exact GELU (torch's default), faster on CPU than jax.nn.gelu's erfc."""
  return x * 0.5 * (1 + jax.lax.erf(x * (1 / math.sqrt(2))))


def _l2norm(x: jax.Array) -> jax.Array:
  """torch `F.normalize(x, dim=-1)`: x / max(|x|, 1e-12)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, 1e-12)


class PEG(nnx.Module):
  """Position generator: causal (in time) depthwise 3x3x3 convolution.

  Tokens [N, L, D] are read as a [B, T, H, W, D] video by a plain reshape of
  their memory, as upstream does; for the temporal transformer, whose tokens
  are laid out [(B H W), T, D], that reshape mixes axes, and so must ours.
  """

  def __init__(self, dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    # Holds the parameters (torch's init, nnx.Conv's layout); __call__
    # applies them with causal_depthwise_conv3d.
    self.dsconv = conv(dim, dim, (3, 3, 3), groups=dim, dtype=dtype,
                       rngs=rngs)

  def __call__(self, x: jax.Array, video_shape: tuple[int, int, int, int]
               ) -> jax.Array:
    orig = x.shape
    v = x.reshape(*video_shape, x.shape[-1])
    out = causal_depthwise_conv3d(v, self.dsconv.kernel[...],
                                  self.dsconv.bias[...])
    return out.reshape(orig)


def causal_depthwise_conv3d(v: jax.Array, kernel: jax.Array,
                            bias: jax.Array) -> jax.Array:
  """PEG's convolution of v [B, T, H, W, D] as shifted products.

  kernel [3, 3, 3, 1, D] (nnx.Conv's depthwise layout); in time the output
  at t sees frames t-2..t (zeros before the clip), in space a zero border
  of 1. The numbers of `lax.conv_general_dilated(feature_group_count=D)` to
  rounding, but XLA's CPU backend runs that grouped 3-D convolution and its
  gradients ~45x slower (410 vs 9 ms at lapa_sim's shapes on 2 cores), most
  of a LAQ training step. Time is shifted by concatenation rather than by
  padding: a time-padded version got wrong input gradients for the spatial
  transformer's PEG when the batch was split over 8 devices (XLA's SPMD
  partitioner; tests/lams/train_lam_test.py compares 1 and 8 devices).
  """
  t, h, w = v.shape[1:4]
  p = jnp.pad(v, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
  k = kernel[..., 0, :].astype(v.dtype)
  out = bias.astype(v.dtype)
  for a in range(3):  # time tap a reads frame t - (2 - a)
    s = sum(p[:, :, b:b + h, c:c + w, :] * k[a, b, c]
            for b in range(3) for c in range(3))
    lag = 2 - a
    if lag >= t:
      continue
    if lag:
      s = jnp.concatenate([jnp.zeros_like(s[:, :lag]), s[:, :t - lag]], 1)
    out = out + s
  return out


class Attention(nnx.Module):
  """Cosine-similarity attention (scale 8) with optional null key/values.

  Self-attention (`context_dim=None`) has no context norm and no null
  key/values (upstream builds both but never uses them there).
  """

  def __init__(self, dim: int, *, heads: int, dim_head: int,
               context_dim: int | None = None, num_null_kv: int = 0,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.heads, self.dim_head = heads, dim_head
    inner = heads * dim_head
    self.norm = layer_norm(dim, bias=False, dtype=dtype, rngs=rngs)
    self.context_norm = (None if context_dim is None else layer_norm(
        context_dim, bias=False, dtype=dtype, rngs=rngs))
    self.to_q = linear(dim, inner, bias=False, dtype=dtype, rngs=rngs)
    self.to_kv = linear(context_dim or dim, 2 * inner, bias=False,
                        dtype=dtype, rngs=rngs)
    self.q_scale = nnx.Param(jnp.ones((dim_head,), jnp.float32))
    self.k_scale = nnx.Param(jnp.ones((dim_head,), jnp.float32))
    self.to_out = linear(inner, dim, bias=False, dtype=dtype, rngs=rngs)
    # Upstream's [heads, 2 * n, dim_head], key and value interleaved.
    self.null_kv = (nnx.Param(jax.random.normal(
        rngs.params(), (heads, 2 * num_null_kv, dim_head), jnp.float32))
                    if num_null_kv else None)

  def __call__(self, x: jax.Array, *, context: jax.Array | None = None,
               attn_bias: jax.Array | None = None) -> jax.Array:
    """x [B, N, D], context [B, M, Dc], attn_bias [H, N, N] -> [B, N, D]."""
    b, n, _ = x.shape
    kv_in = x if context is None else context
    if context is not None and self.context_norm is not None:
      kv_in = self.context_norm(context)
    x = self.norm(x)
    q = self.to_q(x)
    k, v = jnp.split(self.to_kv(kv_in), 2, axis=-1)
    split = lambda t: t.reshape(b, t.shape[1], self.heads, self.dim_head)
    q, k, v = split(q), split(k), split(v)  # [B, L, H, Dh]
    if self.null_kv is not None:
      null = self.null_kv[...].astype(k.dtype)  # [H, 2n, Dh]
      nk = jnp.broadcast_to(null[:, 0::2].transpose(1, 0, 2),
                            (b, null.shape[1] // 2, *null.shape[::2]))
      nv = jnp.broadcast_to(null[:, 1::2].transpose(1, 0, 2), nk.shape)
      k = jnp.concatenate([nk, k], axis=1)
      v = jnp.concatenate([nv, v], axis=1)
    # Similarities in float32: they are cosines times 8 plus a bias.
    q = _l2norm(q.astype(jnp.float32)) * self.q_scale[...]
    k = _l2norm(k.astype(jnp.float32)) * self.k_scale[...]
    sim = jnp.einsum("bihd,bjhd->bhij", q, k) * ATTN_SCALE
    if attn_bias is not None:
      pad = sim.shape[-1] - attn_bias.shape[-1]  # null keys get bias 0
      sim = sim + jnp.pad(attn_bias, ((0, 0), (0, 0), (pad, 0)))
    attn = jax.nn.softmax(sim, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhij,bjhd->bihd", attn, v).reshape(b, n, -1)
    return self.to_out(out)


class FeedForward(nnx.Module):
  """LayerNorm -> Linear (2 x inner, no bias) -> GEGLU -> Linear (no bias)."""

  def __init__(self, dim: int, mult: int = 4, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    inner = int(mult * (2 / 3) * dim)
    self.norm = layer_norm(dim, dtype=dtype, rngs=rngs)
    self.proj_in = linear(dim, 2 * inner, bias=False, dtype=dtype, rngs=rngs)
    self.proj_out = linear(inner, dim, bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h, gate = jnp.split(self.proj_in(self.norm(x)), 2, axis=-1)
    return self.proj_out(gelu_erf(gate) * h)


class Layer(nnx.Module):
  """PEG, self-attention, optional cross-attention, feed-forward (residual)."""

  def __init__(self, dim: int, *, heads: int, dim_head: int,
               context_dim: int | None, ff_mult: int, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.peg = PEG(dim, dtype=dtype, rngs=rngs)
    self.self_attn = Attention(dim, heads=heads, dim_head=dim_head,
                               dtype=dtype, rngs=rngs)
    self.cross_attn = (None if context_dim is None else Attention(
        dim, heads=heads, dim_head=dim_head, context_dim=context_dim,
        num_null_kv=2, dtype=dtype, rngs=rngs))
    self.ff = FeedForward(dim, ff_mult, dtype=dtype, rngs=rngs)


class Transformer(nnx.Module):
  """Upstream's `Transformer(peg=True, peg_causal=True)` with a gamma-only
  output norm; `context_dim` adds cross-attention to a context."""

  def __init__(self, dim: int, depth: int, *, heads: int, dim_head: int,
               context_dim: int | None = None, ff_mult: int = 4,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.layers = nnx.List([
        Layer(dim, heads=heads, dim_head=dim_head, context_dim=context_dim,
              ff_mult=ff_mult, dtype=dtype, rngs=rngs)
        for _ in range(depth)])
    self.norm_out = layer_norm(dim, bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *,
               video_shape: tuple[int, int, int, int],
               attn_bias: jax.Array | None = None,
               context: jax.Array | None = None) -> jax.Array:
    for layer in self.layers:
      x = layer.peg(x, video_shape) + x
      x = layer.self_attn(x, attn_bias=attn_bias) + x
      if layer.cross_attn is not None and context is not None:
        x = layer.cross_attn(x, context=context) + x
      x = layer.ff(x) + x
    return self.norm_out(x)


class ContinuousPositionBias(nnx.Module):
  """Per-head attention bias [H, hw, hw] from an MLP on 2-D offsets.

  Offsets between grid cells are log-spaced (sign(d) log(|d| + 1)), then go
  through Linear(2, dim), LeakyReLU(0.1), Linear(dim, dim), LeakyReLU(0.1),
  Linear(dim, heads).
  """

  def __init__(self, dim: int, heads: int, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.net = nnx.List([
        linear(2, dim, dtype=dtype, rngs=rngs),
        linear(dim, dim, dtype=dtype, rngs=rngs),
        linear(dim, heads, dtype=dtype, rngs=rngs)])

  def __call__(self, h: int, w: int) -> jax.Array:
    grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"))
    grid = grid.reshape(2, -1).T  # [hw, 2]
    rel = (grid[:, None] - grid[None]).astype(np.float32)
    rel = np.sign(rel) * np.log(np.abs(rel) + 1)
    x = jnp.asarray(rel)
    x = leaky_relu(self.net[0](x))
    x = leaky_relu(self.net[1](x))
    return self.net[2](x).astype(jnp.float32).transpose(2, 0, 1)
