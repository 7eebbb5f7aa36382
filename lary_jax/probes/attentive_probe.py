"""LARY's attentive classification probe, one head (Flax NNX).

  tokens [B, T, N, D] (or [B, N, D])
  -> Linear(D, 768) -> LayerNorm -> exact GELU          (the projector)
  -> + learned temporal embedding [T, 768], T*N tokens
  -> 3 pre-norm self-attention blocks
  -> cross-attention block: one learned query reads the tokens
  -> Linear(768, K) logits

Shapes and initialisation follow upstream's `FeatureEvaluator`: trunc-normal
(std 0.02, cut at +-2 absolute, so in effect a normal) for every Linear of
the projector and pooler and for the query and temporal embedding; the
attention output projection and fc2 of self-attention block i, and the
cross-attention fc2 after the last block, divided by sqrt(2 (i + 1)); the
classifier Linear keeps PyTorch's default (uniform +-1/sqrt(768)), because
upstream never re-initialises it.

Self-attention goes through `probe_attention`, which never holds a layer's
[B, H, N, N] logits (87 GB at the protocol's batch of encoder tokens).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from lary_jax.errors import LaryError
from lary_jax.nn import flat_grad_linear
from lary_jax.nn import vit_layers
from lary_jax.probes import probe_attention

EPS = 1e-5  # torch.nn.LayerNorm's default, which upstream uses


@dataclasses.dataclass(frozen=True)
class Config:
  """Probe shape. The defaults are upstream's (its
  classification/src/models/attentive_pooler.py and eval config)."""

  dim: int  # input feature width D
  num_classes: int
  model_dim: int = 768
  num_heads: int = 16
  depth: int = 4  # self-attention blocks + the cross-attention block
  mlp_ratio: float = 4.0
  max_frames: int = 128  # temporal embedding rows
  pool_grid: int = 0  # >0: average each frame's N tokens to a g x g grid

  def __post_init__(self):
    if self.model_dim % self.num_heads:
      raise LaryError(f"probe model_dim {self.model_dim} is not a multiple "
                      f"of num_heads {self.num_heads}")
    if self.depth < 1:
      raise LaryError(f"probe depth {self.depth}: expected >= 1")


def _normal_init(key, shape, dtype=jnp.float32, scale: float = 1.0):
  # Upstream's trunc_normal_(std=0.02) cuts at +-2 absolute, i.e. 100 std.
  # One multiply by one constant after the draw: the jitted init
  # (multi_head.init_heads) must give exactly the eager parameters, and
  # XLA rounds `0.02 * x / scale` differently when it fuses the two.
  return (0.02 / scale) * jax.random.truncated_normal(key, -100.0, 100.0,
                                                      shape, dtype)


def _torch_default_init(fan_in: int):
  # One jax.random call: a multiply and an add after it would fuse into one
  # rounding under jit and two op by op.
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)


def _linear(din: int, dout: int, dtype, rngs: nnx.Rngs,
            scale: float = 1.0) -> nnx.Linear:
  init = lambda key, shape, dtype=jnp.float32: _normal_init(
      key, shape, dtype, scale)
  return nnx.Linear(din, dout, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=init, dot_general=flat_grad_linear.dot_general,
                    rngs=rngs)


class Mlp(nnx.Module):
  """fc1 -> exact GELU -> fc2; fc2 starts divided by `fc2_scale`."""

  def __init__(self, dim: int, hidden: int, *, fc2_scale: float, dtype,
               rngs: nnx.Rngs):
    self.fc1 = _linear(dim, hidden, dtype, rngs)
    self.fc2 = _linear(hidden, dim, dtype, rngs, scale=fc2_scale)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(vit_layers.gelu_erf(self.fc1(x)))


class SelfAttention(nnx.Module):
  """Multi-head self-attention: fused qkv, `probe_attention`, out proj."""

  def __init__(self, dim: int, num_heads: int, *, proj_scale: float, dtype,
               rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.qkv = _linear(dim, 3 * dim, dtype, rngs)
    self.proj = _linear(dim, dim, dtype, rngs, scale=proj_scale)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    h = self.num_heads
    qkv = self.qkv(x).reshape(b, n, 3, h, d // h)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, Dh]
    return self.proj(probe_attention.attention(q, k, v).reshape(b, n, d))


class SelfAttentionBlock(nnx.Module):
  """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)).

  Self-attention block i of upstream's probe: its attention output
  projection and fc2 start divided by `out_scale` = sqrt(2 (i + 1)).
  """

  def __init__(self, dim: int, num_heads: int, hidden: int, *,
               out_scale: float, dtype, rngs: nnx.Rngs):
    self.norm1 = vit_layers.layer_norm(dim, EPS, dtype=dtype, rngs=rngs)
    self.attn = SelfAttention(dim, num_heads, proj_scale=out_scale,
                              dtype=dtype, rngs=rngs)
    self.norm2 = vit_layers.layer_norm(dim, EPS, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(dim, hidden, fc2_scale=out_scale, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class CrossAttentionBlock(nnx.Module):
  """q + xattn(q, norm1(x)), then q + mlp(norm2(q)); no output projection."""

  def __init__(self, dim: int, num_heads: int, hidden: int, *, fc2_scale: float,
               dtype, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.norm1 = vit_layers.layer_norm(dim, EPS, dtype=dtype, rngs=rngs)
    self.q = _linear(dim, dim, dtype, rngs)
    self.kv = _linear(dim, 2 * dim, dtype, rngs)
    self.norm2 = vit_layers.layer_norm(dim, EPS, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(dim, hidden, fc2_scale=fc2_scale, dtype=dtype, rngs=rngs)

  def __call__(self, query: jax.Array, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    h = self.num_heads
    q = self.q(query).reshape(b, -1, h, d // h)  # [B, 1, H, Dh]
    k, v = jnp.split(self.kv(self.norm1(x)).reshape(b, n, 2 * h, d // h), 2,
                     axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                        preferred_element_type=jnp.float32) * (d // h)**-0.5
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    y = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(query.shape)
    query = query + y
    return query + self.mlp(self.norm2(query))


class AttentiveProbe(nnx.Module):
  """One attentive probe: tokens -> class logits (float32)."""

  def __init__(self, config: Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
    c = self.config = config
    d, hidden = c.model_dim, int(c.model_dim * c.mlp_ratio)
    self.dtype = dtype
    self.proj = _linear(c.dim, d, dtype, rngs)
    self.proj_norm = vit_layers.layer_norm(d, EPS, dtype=dtype, rngs=rngs)
    self.temporal_embed = nnx.Param(_normal_init(rngs.params(),
                                                 (c.max_frames, d)))
    self.query = nnx.Param(_normal_init(rngs.params(), (1, d)))
    self.blocks = nnx.List([
        SelfAttentionBlock(d, c.num_heads, hidden,
                           out_scale=math.sqrt(2.0 * (i + 1)), dtype=dtype,
                           rngs=rngs) for i in range(c.depth - 1)])
    self.cross = CrossAttentionBlock(d, c.num_heads, hidden,
                                     fc2_scale=math.sqrt(2.0 * max(
                                         c.depth - 1, 1)),
                                     dtype=dtype, rngs=rngs)
    init = _torch_default_init(d)
    self.head = nnx.Linear(d, c.num_classes, dtype=dtype,
                           param_dtype=jnp.float32, kernel_init=init,
                           bias_init=init,
                           dot_general=flat_grad_linear.dot_general,
                           rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, T, N, D] or [B, N, D] features -> [B, num_classes] float32."""
    c = self.config
    if x.shape[-1] != c.dim:
      raise LaryError(f"probe built for dim {c.dim}, features have "
                      f"{x.shape[-1]}")
    video = x.ndim == 4
    if x.ndim == 3:
      x = x[:, None]
    if x.ndim != 4:
      raise LaryError(f"probe input must be [B, N, D] or [B, T, N, D], got "
                      f"{x.shape}")
    if x.shape[1] > c.max_frames:
      raise LaryError(f"{x.shape[1]} frames > the probe's max_frames "
                      f"{c.max_frames}")
    if c.pool_grid:
      x = pool_tokens(x, c.pool_grid)
    x = x.astype(self.dtype)
    x = vit_layers.gelu_erf(self.proj_norm(self.proj(x)))
    b, t, n, d = x.shape
    if video:  # upstream adds it to [B, T, N, D] input only
      x = x + self.temporal_embed[:t][None, :, None].astype(x.dtype)
    x = x.reshape(b, t * n, d)
    for block in self.blocks:
      x = block(x)
    query = jnp.broadcast_to(self.query[...].astype(x.dtype), (b, 1, d))
    pooled = self.cross(query, x)[:, 0]
    return self.head(pooled).astype(jnp.float32)


def tokens_attended(config: Config, feature_shape: tuple[int, ...]) -> int:
  """How many tokens the probe's blocks attend over for one example of
  stored features [T, N, D] (or [N, D])."""
  frames = feature_shape[0] if len(feature_shape) == 3 else 1
  per_frame = feature_shape[-2]
  if config.pool_grid:  # pooling only ever reduces (`pool_tokens`)
    per_frame = min(per_frame, config.pool_grid**2)
  return frames * per_frame


def pool_features(x: jax.Array, grid: int) -> jax.Array:
  """`pool_tokens` of a batch of [T, N, D] or [N, D] rows, rank kept: what
  the probe does to its input first, so that it can be done once ahead."""
  if not grid:
    return x
  if x.ndim == 3:
    return pool_tokens(x[:, None], grid)[:, 0]
  return pool_tokens(x, grid)


def pool_tokens(x: jax.Array, grid: int) -> jax.Array:
  """Averages each frame's square token grid to grid x grid cells.

  A frame with at most grid x grid tokens (a LAM's few codes, a control's
  one token) passes unchanged: pooling only ever reduces.

  Args:
    x: [B, T, N, D] with N a square (s x s tokens, row major) when N is
      more than grid * grid.
    grid: output side g <= s; cells as torch's AdaptiveAvgPool2d.

  Returns:
    [B, T, g * g, D], or x itself when N <= g * g.
  """
  b, t, n, d = x.shape
  if n <= grid * grid:
    return x
  s = math.isqrt(n)
  if s * s != n or grid <= 0:
    raise LaryError(f"pool_grid={grid}: needs a square token grid of side "
                    f">= {grid}, got {n} tokens")
  x = x.reshape(b, t, s, s, d)
  starts = [i * s // grid for i in range(grid)]
  ends = [-(-(i + 1) * s // grid) for i in range(grid)]
  rows = jnp.stack([x[:, :, a:e].mean(2) for a, e in zip(starts, ends)], 2)
  cells = jnp.stack([rows[:, :, :, a:e].mean(3)
                     for a, e in zip(starts, ends)], 3)
  return cells.reshape(b, t, grid * grid, d)
