"""Flax NNX building blocks shared by the ViT encoders.

A model file (dinov2.py, siglip2.py, ...) assembles these blocks and names
its attributes so that its `params_from_torch` table stays short:

  embed = PatchEmbed((14, 14), 3, 1024, dtype=dtype, rngs=rngs)
  blocks = nnx.List([Block(1024, 16, 4096, dtype=dtype, rngs=rngs) ...])
  x = embed(images)                        # [B, N, D]
  for blk in blocks:
    x = blk(x, rope=my_rope)               # rope(q, k) -> (q, k) or None

Parameters are always float32; `dtype` is the compute dtype. Layouts follow
Flax: a Linear kernel is [in, out] (torch's weight transposed), a patch
kernel is [*patch, C, D] (torch's conv weight moved channels-last). The
parameter leaves are `kernel`/`bias` (Linear), `scale`/`bias` (LayerNorm) and
`lambda1` (LayerScale). Attention keeps q, k and v in one fused `qkv` Linear
([D, 3 * inner], q then k then v); a model whose torch checkpoint has no key
bias fills that third of the bias with zeros, which is the same function.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lary_jax.errors import LaryError

# q, k: [B, N, H, Dh] -> rotated (q, k).
RopeFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]

INIT_STD = 0.02
trunc_normal = nnx.initializers.truncated_normal(INIT_STD)


def gelu_erf(x: jax.Array) -> jax.Array:
  """Exact GELU in PyTorch's form, x / 2 * (1 + erf(x / sqrt 2)).

  Same function as `jax.nn.gelu(approximate=False)`, which goes through
  erfc and runs ~2.5x slower on CPU.
  """
  return x * 0.5 * (1 + jax.lax.erf(x * (1 / math.sqrt(2))))


# Hugging Face `hidden_act` names -> functions.
_ACTIVATIONS = {
    "gelu": gelu_erf,
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation a Hugging Face config calls `name` (e.g. "gelu")."""
  if name not in _ACTIVATIONS:
    raise LaryError(f"hidden_act={name!r} is not supported; expected one of "
                    f"{sorted(_ACTIVATIONS)}")
  return _ACTIVATIONS[name]


def linear(din: int, dout: int, *, bias: bool = True, dtype=jnp.float32,
           rngs: nnx.Rngs) -> nnx.Linear:
  """A Linear with float32 parameters and ViT's trunc-normal init."""
  return nnx.Linear(din, dout, use_bias=bias, dtype=dtype,
                    param_dtype=jnp.float32, kernel_init=trunc_normal,
                    rngs=rngs)


def layer_norm(dim: int, eps: float, *, dtype=jnp.float32,
               rngs: nnx.Rngs) -> nnx.LayerNorm:
  """A LayerNorm with float32 parameters (statistics stay in float32)."""
  return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, param_dtype=jnp.float32,
                       rngs=rngs)


def patchify(x: jax.Array, patch: Sequence[int]) -> jax.Array:
  """Cuts non-overlapping patches out of a channels-last array.

  Args:
    x: [B, *S, C] with len(S) == len(patch), each S divisible by its patch.
    patch: patch size per spatial (or temporal) axis, e.g. (14, 14).

  Returns:
    [B, *grid, prod(patch) * C], each patch flattened in (*patch, C) order.
  """
  b, *sizes, c = x.shape
  if len(sizes) != len(patch) or any(s % p for s, p in zip(sizes, patch)):
    raise LaryError(f"input of shape {x.shape} cannot be cut into "
                    f"{tuple(patch)} patches")
  grid = [s // p for s, p in zip(sizes, patch)]
  x = x.reshape(b, *[v for g, p in zip(grid, patch) for v in (g, p)], c)
  n = len(patch)
  # [B, g0, p0, g1, p1, ..., C] -> [B, g0, g1, ..., p0, p1, ..., C]
  perm = [0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1]
  x = x.transpose(perm)
  return x.reshape(b, *grid, math.prod(patch) * c)


def learned(rngs: nnx.Rngs, shape: Sequence[int]) -> nnx.Param:
  """A learned token or table (class token, registers, positions) of
  `shape`, fp32, drawn as DINOv2 draws them (truncated normal)."""
  return nnx.Param(trunc_normal(rngs.params(), tuple(shape), jnp.float32))


class PatchEmbed(nnx.Module):
  """A strided convolution with kernel == stride, as patchify + matmul.

  `kernel` is [*patch, C, D] (torch Conv2d/3d weight [D, C, *patch] moved to
  channels-last), so it works for 2-D patches and 3-D tubelets alike.
  """

  def __init__(self, patch: Sequence[int], channels: int, dim: int, *,
               bias: bool = True, dtype=jnp.float32, rngs: nnx.Rngs):
    self.patch = tuple(patch)
    self.dtype = dtype
    shape = (*self.patch, channels, dim)
    self.kernel = nnx.Param(trunc_normal(rngs.params(), shape, jnp.float32))
    self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32)) if bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, *S, C] -> [B, prod(grid), D], patches in row-major grid order."""
    patches = patchify(x.astype(self.dtype), self.patch)  # [B, *grid, P]
    b, *grid, p = patches.shape
    kernel = self.kernel[...].reshape(p, -1).astype(self.dtype)
    out = patches.reshape(b, math.prod(grid), p) @ kernel
    if self.bias is not None:
      out = out + self.bias[...].astype(self.dtype)
    return out


class Attention(nnx.Module):
  """Multi-head self-attention with a fused qkv projection.

  Softmax runs in float32 whatever the compute dtype; see `attention`.
  """

  def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True,
               out_bias: bool = True, head_dim: int | None = None,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.head_dim = head_dim or dim // num_heads
    inner = self.num_heads * self.head_dim
    self.qkv = linear(dim, 3 * inner, bias=qkv_bias, dtype=dtype, rngs=rngs)
    self.proj = linear(inner, dim, bias=out_bias, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, rope: RopeFn | None = None
               ) -> jax.Array:
    b, n, _ = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, Dh]
    if rope is not None:
      q, k = rope(q, k)
    return self.proj(attention(q, k, v).reshape(b, n, -1))


def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Softmax attention, [B, N, H, Dh] each -> [B, N, H, Dh], fp32 softmax.

  `jax.nn.dot_product_attention` on GPU/TPU (fused kernels there). On CPU it
  materialises all [B, H, N, N] logits, and at ViT-L sizes the page faults
  and cache misses of those buffers cost ~3x the arithmetic, so there it is
  computed in blocks of heads and query rows that stay in cache.
  """
  if jax.default_backend() != "cpu":
    return jax.nn.dot_product_attention(q, k, v)
  return blocked_attention(q, k, v)


def blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                      block_bytes: int = 1 << 20, max_rows: int = 192
                      ) -> jax.Array:
  """`attention` over blocks of (example, head) slices x query rows.

  Each block's float32 logits [g, rows, N] take about `block_bytes` (one
  slice at the least), so they stay in cache. The gradient is flash
  attention's: the forward keeps the output and each row's log-sum-exp,
  the backward recomputes a block's probabilities from them, so training
  holds O(B H N Dh) for attention rather than O(B H N^2).

  Args:
    q: [B, N, H, Dh] queries (k, v alike).
    block_bytes: target size of one block's logits.
    max_rows: most query rows in a block.

  Returns:
    [B, N, H, Dh] in v's dtype.
  """
  b, n, h, dh = q.shape
  chunks = -(-n // max_rows)
  rows = -(-n // chunks)
  g = max(1, min(b * h, block_bytes // (4 * rows * n)))
  while (b * h) % g:
    g -= 1

  def heads_major(x):  # [B, N, H, Dh] -> [B * H / g, g, N, Dh]
    return x.transpose(0, 2, 1, 3).reshape(b * h // g, g, n, dh)

  out = _blocked(heads_major(q), heads_major(k), heads_major(v), rows)
  return out.reshape(b, h, n, dh).transpose(0, 2, 1, 3)


def _row_blocks(x: jax.Array, rows: int) -> jax.Array:
  """[g, N, ...] -> [chunks, g, rows, ...], N zero-padded to chunks * rows."""
  g, n = x.shape[:2]
  chunks = -(-n // rows)
  pad = [(0, 0), (0, chunks * rows - n)] + [(0, 0)] * (x.ndim - 2)
  x = jnp.pad(x, pad).reshape(g, chunks, rows, *x.shape[2:])
  return jnp.moveaxis(x, 1, 0)


def _unrow_blocks(x: jax.Array, n: int) -> jax.Array:
  """[chunks, g, rows, ...] -> [g, N, ...]: `_row_blocks` undone."""
  chunks, g, rows = x.shape[:3]
  return jnp.moveaxis(x, 0, 1).reshape(g, chunks * rows, *x.shape[3:])[:, :n]


def _logits(q: jax.Array, k: jax.Array) -> jax.Array:
  return jnp.einsum("hqd,hkd->hqk", q, k, preferred_element_type=jnp.float32
                    ) * q.shape[-1]**-0.5


def _group_forward(q: jax.Array, k: jax.Array, v: jax.Array, rows: int
                   ) -> tuple[jax.Array, jax.Array]:
  """One group [g, N, Dh] -> (output [g, N, Dh], log-sum-exp [g, N])."""

  def one_block(qc):  # [g, rows, Dh]
    logits = _logits(qc, k)  # [g, rows, N]
    top = logits.max(-1, keepdims=True)
    p = jnp.exp(logits - top)
    total = p.sum(-1, keepdims=True)
    o = jnp.einsum("hqk,hkd->hqd", p.astype(v.dtype), v,
                   preferred_element_type=jnp.float32) / total
    return o.astype(v.dtype), (top + jnp.log(total))[..., 0]

  o, lse = jax.lax.map(one_block, _row_blocks(q, rows))
  return _unrow_blocks(o, q.shape[1]), _unrow_blocks(lse, q.shape[1])


def _group_backward(q, k, v, o, lse, do, rows):
  """One group's (dq, dk, dv), block by block, from the saved lse."""
  f32 = jnp.float32
  delta = (do.astype(f32) * o.astype(f32)).sum(-1)  # [g, N]
  scale = q.shape[-1]**-0.5

  def one_block(carry, block):
    dk, dv = carry  # [g, N, Dh] float32
    qc, doc, lse_c, delta_c = block  # [g, rows, Dh] / [g, rows]
    p = jnp.exp(_logits(qc, k) - lse_c[..., None])  # [g, rows, N]
    dp = jnp.einsum("hqd,hkd->hqk", doc, v, preferred_element_type=f32)
    ds = p * (dp - delta_c[..., None]) * scale
    dq = jnp.einsum("hqk,hkd->hqd", ds, k, preferred_element_type=f32)
    dk = dk + jnp.einsum("hqk,hqd->hkd", ds, qc, preferred_element_type=f32)
    dv = dv + jnp.einsum("hqk,hqd->hkd", p, doc, preferred_element_type=f32)
    return (dk, dv), dq

  zeros = jnp.zeros(k.shape, f32)
  (dk, dv), dq = jax.lax.scan(
      one_block, (zeros, zeros),
      tuple(_row_blocks(x, rows) for x in (q, do, lse, delta)))
  return (_unrow_blocks(dq, q.shape[1]).astype(q.dtype), dk.astype(k.dtype),
          dv.astype(v.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _blocked(q: jax.Array, k: jax.Array, v: jax.Array, rows: int
             ) -> jax.Array:
  """Groups [G, g, N, Dh] -> [G, g, N, Dh], one group at a time."""
  return jax.lax.map(lambda a: _group_forward(*a, rows)[0], (q, k, v))


def _blocked_fwd(q, k, v, rows):
  o, lse = jax.lax.map(lambda a: _group_forward(*a, rows), (q, k, v))
  return o, (q, k, v, o, lse)


def _blocked_bwd(rows, saved, do):
  return jax.lax.map(lambda a: _group_backward(*a, rows), (*saved, do))


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


class Mlp(nnx.Module):
  """fc1 -> activation -> fc2."""

  def __init__(self, dim: int, hidden: int, *, act: str = "gelu",
               bias: bool = True, dtype=jnp.float32, rngs: nnx.Rngs):
    self.act = activation(act)
    self.fc1 = linear(dim, hidden, bias=bias, dtype=dtype, rngs=rngs)
    self.fc2 = linear(hidden, dim, bias=bias, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(self.act(self.fc1(x)))


class GatedMlp(nnx.Module):
  """down(act(gate(x)) * up(x)), gate and up fused in `gate_up`.

  `gate_up.kernel` is [D, 2 * hidden]: the gate's columns, then the up's.
  """

  def __init__(self, dim: int, hidden: int, *, act: str = "silu",
               bias: bool = True, dtype=jnp.float32, rngs: nnx.Rngs):
    self.act = activation(act)
    self.gate_up = linear(dim, 2 * hidden, bias=bias, dtype=dtype, rngs=rngs)
    self.down = linear(hidden, dim, bias=bias, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    gate, up = jnp.split(self.gate_up(x), 2, axis=-1)
    return self.down(self.act(gate) * up)


class LayerScale(nnx.Module):
  """Per-channel residual scaling (`lambda1`, as torch names it)."""

  def __init__(self, dim: int, init: float = 1.0, *, dtype=jnp.float32):
    self.dtype = dtype
    self.lambda1 = nnx.Param(jnp.full((dim,), init, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return x * self.lambda1[...].astype(self.dtype)


class Block(nnx.Module):
  """Pre-norm transformer block: x + ls1(attn(norm1(x))), then the MLP.

  Args:
    dim: width D.
    num_heads: attention heads.
    mlp_hidden: MLP hidden width (per branch for a gated MLP).
    mlp: "mlp" (fc1/fc2) or "gated" (gate_up/down).
    act: activation name, Hugging Face spelling.
    qkv_bias: whether the fused qkv projection has a bias.
    out_bias: whether the attention output projection has a bias.
    mlp_bias: whether the MLP projections have biases.
    layer_scale: LayerScale init value, or None for no LayerScale.
    eps: LayerNorm epsilon.
  """

  def __init__(self, dim: int, num_heads: int, mlp_hidden: int, *,
               mlp: str = "mlp", act: str = "gelu", qkv_bias: bool = True,
               out_bias: bool = True, mlp_bias: bool = True,
               layer_scale: float | None = None, eps: float = 1e-6,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.norm1 = layer_norm(dim, eps, dtype=dtype, rngs=rngs)
    self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias,
                          out_bias=out_bias, dtype=dtype, rngs=rngs)
    self.norm2 = layer_norm(dim, eps, dtype=dtype, rngs=rngs)
    if mlp == "mlp":
      self.mlp = Mlp(dim, mlp_hidden, act=act, bias=mlp_bias, dtype=dtype,
                     rngs=rngs)
    elif mlp == "gated":
      self.mlp = GatedMlp(dim, mlp_hidden, act=act, bias=mlp_bias,
                          dtype=dtype, rngs=rngs)
    else:
      raise LaryError(f"mlp={mlp!r}: expected 'mlp' or 'gated'")
    if layer_scale is None:
      self.ls1 = self.ls2 = None
    else:
      self.ls1 = LayerScale(dim, layer_scale, dtype=dtype)
      self.ls2 = LayerScale(dim, layer_scale, dtype=dtype)

  def __call__(self, x: jax.Array, *, rope: RopeFn | None = None
               ) -> jax.Array:
    """[B, N, D] -> [B, N, D]."""
    y = self.attn(self.norm1(x), rope=rope)
    x = x + (y if self.ls1 is None else self.ls1(y))
    y = self.mlp(self.norm2(x))
    return x + (y if self.ls2 is None else self.ls2(y))


def rotate_half(x: jax.Array) -> jax.Array:
  """(x1, x2) -> (-x2, x1) on the two halves of the last axis."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array, *,
               num_prefix: int = 0) -> jax.Array:
  """Rotates tokens after the first `num_prefix` (half-split convention).

  Args:
    x: [B, N, H, Dh].
    cos: [N - num_prefix, Dh], float32.
    sin: [N - num_prefix, Dh], float32.
    num_prefix: leading tokens (CLS, registers) left unrotated.

  Returns:
    [B, N, H, Dh] in x's dtype.
  """
  prefix, tokens = x[:, :num_prefix], x[:, num_prefix:]
  cos = cos[:, None, :].astype(x.dtype)
  sin = sin[:, None, :].astype(x.dtype)
  tokens = tokens * cos + rotate_half(tokens) * sin
  return jnp.concatenate([prefix, tokens], axis=1)


def to_unit_float(images: jax.Array) -> jax.Array:
  """uint8 images -> float32 in [0, 1]; float images pass through as float32."""
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)
