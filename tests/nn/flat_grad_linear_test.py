"""nnx.Linear with flat_grad_linear.dot_general: the parameters, forward and
gradients of a plain nnx.Linear, the kernel gradient taken as one GEMM over
the flattened rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lary_jax.errors import LaryError
from lary_jax.nn import flat_grad_linear as fgl


def _pair(dtype, use_bias=True):
  kw = dict(dtype=dtype, param_dtype=jnp.float32, use_bias=use_bias,
            bias_init=nnx.initializers.normal(1.0))
  return (nnx.Linear(24, 40, rngs=nnx.Rngs(3), **kw),
          nnx.Linear(24, 40, dot_general=fgl.dot_general,
                     rngs=nnx.Rngs(3), **kw))


def _grads(layer, x, ct):
  graphdef, params = nnx.split(layer)

  def loss(p, x):
    return jnp.vdot(nnx.merge(graphdef, p)(x).astype(jnp.float32), ct)

  return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)


@pytest.mark.parametrize("use_bias", [True, False])
def test_same_parameters_forward_and_gradients_as_nnx_linear(use_bias):
  ref, new = _pair(jnp.float32, use_bias)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 5, 7, 24), np.float32))
  ct = jnp.asarray(rng.standard_normal((3, 5, 7, 40), np.float32))
  for a, b in zip(jax.tree.leaves(nnx.state(ref)),
                  jax.tree.leaves(nnx.state(new))):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(ref(x), new(x))
  (ref_p, ref_x), (new_p, new_x) = _grads(ref, x, ct), _grads(new, x, ct)
  # The kernel gradient against float64 numpy: sum over all 105 rows.
  want = np.einsum("abck,abcn->kn", np.float64(x), np.float64(ct))
  np.testing.assert_allclose(new_p["kernel"][...], want, rtol=1e-5,
                             atol=1e-4)
  for a, b in zip(jax.tree.leaves((ref_p, ref_x)),
                  jax.tree.leaves((new_p, new_x))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5)


def test_bfloat16_compute_keeps_float32_parameters_and_gradients():
  ref, new = _pair(jnp.bfloat16)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((4, 6, 24), np.float32))
  ct = jnp.asarray(rng.standard_normal((4, 6, 40), np.float32))
  assert new(x).dtype == jnp.bfloat16
  (ref_p, ref_x), (new_p, new_x) = _grads(ref, x, ct), _grads(new, x, ct)
  assert new_p["kernel"][...].dtype == jnp.float32
  assert new_x.dtype == jnp.float32
  np.testing.assert_allclose(new_p["kernel"][...], ref_p["kernel"][...],
                             rtol=2e-2, atol=2e-1)
  np.testing.assert_allclose(new_x, ref_x, rtol=2e-2, atol=2e-1)


def test_unsupported_options_are_refused():
  layer = nnx.Linear(4, 4, precision=jax.lax.Precision.HIGHEST,
                     dot_general=fgl.dot_general, rngs=nnx.Rngs(0))
  with pytest.raises(LaryError, match="precision"):
    layer(jnp.ones((2, 4)))
  with pytest.raises(LaryError, match="contraction"):
    fgl.dot_general(jnp.ones((2, 4)), jnp.ones((3, 4)),
                    (((1,), (1,)), ((), ())))
