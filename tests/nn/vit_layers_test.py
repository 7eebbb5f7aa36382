"""The CPU blocked attention: values and gradients against plain softmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lary_jax.nn import vit_layers


def _plain(q, k, v):
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1]**-0.5
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v)


def _qkv(shape, seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)
               for _ in range(3))


# Several (example, head) slices per block or one; N a multiple of the row
# block or not (the last block zero-padded).
@pytest.mark.parametrize("shape,block_bytes,max_rows", [
    ((2, 37, 4, 8), 1 << 20, 16),  # 8 slices a block, 3 row blocks, padded
    ((3, 20, 2, 4), 256, 7),  # one slice a block, 3 row blocks, padded
])
def test_blocked_attention_values_and_gradients(shape, block_bytes, max_rows):
  q, k, v = _qkv(shape, scale=2.0)  # peaked softmax rows
  cotangent = _qkv(shape, seed=1)[0]

  def loss(fn):
    return lambda q, k, v: (fn(q, k, v) * cotangent).sum()

  blocked = jax.jit(lambda q, k, v: vit_layers.blocked_attention(
      q, k, v, block_bytes=block_bytes, max_rows=max_rows))
  np.testing.assert_allclose(blocked(q, k, v), _plain(q, k, v), atol=1e-5,
                             rtol=0)
  want = jax.grad(loss(_plain), argnums=(0, 1, 2))(q, k, v)
  got = jax.jit(jax.grad(loss(blocked), argnums=(0, 1, 2)))(q, k, v)
  for name, g, w in zip("qkv", got, want):
    assert np.abs(np.asarray(w)).max() > 0.1, name  # a gradient to compare
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=0, err_msg=name)


def test_blocked_attention_bfloat16_keeps_dtype_and_is_close():
  q, k, v = _qkv((2, 33, 4, 16))
  half = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  out = vit_layers.blocked_attention(*half, max_rows=8)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32),
                             _plain(q, k, v), atol=0.03, rtol=0)
  grads = jax.grad(lambda *a: vit_layers.blocked_attention(
      *a, max_rows=8).astype(jnp.float32).sum(), argnums=(0, 1, 2))(*half)
  want = jax.grad(lambda *a: _plain(*a).sum(), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(grads, want):
    assert g.dtype == jnp.bfloat16
    err = np.abs(np.asarray(g, np.float32) - np.asarray(w)).max()
    assert 0 < err < 0.05 * np.abs(np.asarray(w)).max()


def test_blocked_attention_gradient_holds_no_full_logits():
  # The backward must not keep [B, H, N, N] probabilities around: the
  # residuals are q, k, v, the output and one log-sum-exp per row.
  q, k, v = _qkv((2, 64, 4, 8))
  _, vjp = jax.vjp(lambda *a: vit_layers.blocked_attention(
      *a, max_rows=16), q, k, v)
  saved = sum(x.size for x in jax.tree.leaves(vjp)
              if hasattr(x, "size"))
  assert saved <= 4 * q.size + 2 * 64 * 4
  assert saved < 2 * 4 * 64 * 64  # one [B, H, N, N] array
