"""The probe's attention: the plain softmax's numbers, never its logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lary_jax.probes import probe_attention


def _qkv(shape, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.standard_normal(shape), jnp.float32)
               for _ in range(3))


def _xla(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, implementation="xla")


def test_values_and_gradients_match_the_plain_softmax():
  # 300 tokens: more than one block of query rows, the last one padded.
  q, k, v = _qkv((2, 300, 4, 8))
  cotangent = _qkv((2, 300, 4, 8), seed=1)[0]
  ours = jax.jit(probe_attention.attention)
  np.testing.assert_allclose(ours(q, k, v), _xla(q, k, v), atol=1e-5, rtol=0)

  def loss(fn):
    return lambda *a: (fn(*a) * cotangent).sum()

  got = jax.jit(jax.grad(loss(probe_attention.attention),
                         argnums=(0, 1, 2)))(q, k, v)
  want = jax.grad(loss(_xla), argnums=(0, 1, 2))(q, k, v)
  for name, g, w in zip("qkv", got, want):
    assert np.abs(np.asarray(w)).max() > 0.1, name
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=0, err_msg=name)


def test_the_gradient_never_holds_all_logits():
  # 4 MiB of logits per (example, head); the whole [B, H, N, N] is 32 MiB.
  b, n, h, dh = 2, 1024, 4, 16
  spec = jax.ShapeDtypeStruct((b, n, h, dh), jnp.float32)
  grad = jax.jit(jax.grad(
      lambda *a: probe_attention.attention(*a).sum(), argnums=(0, 1, 2)))
  temp = grad.lower(spec, spec, spec).compile().memory_analysis(
  ).temp_size_in_bytes
  logits = 4 * b * h * n * n
  assert temp < logits / 4, (temp, logits)


@pytest.mark.parametrize("platform,dtype,head_dim,want", [
    ("gpu", jnp.bfloat16, 48, "cudnn"),  # the probe's 768 / 16 heads
    ("gpu", jnp.float16, 128, "cudnn"),
    ("gpu", jnp.float32, 48, "blocked"),  # cuDNN's kernel is 16-bit only
    ("gpu", jnp.bfloat16, 36, "blocked"),  # not a multiple of 8
    ("gpu", jnp.bfloat16, 256, "blocked"),
    ("tpu", jnp.bfloat16, 48, "blocked"),
    ("cpu", jnp.float32, 48, "blocked"),
])
def test_implementation_per_backend(platform, dtype, head_dim, want):
  assert probe_attention.implementation(platform, dtype, head_dim) == want
