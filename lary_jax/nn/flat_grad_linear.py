"""A Linear's product whose kernel gradient is one 2-D GEMM over the
flattened rows: `dot_general`, for `nnx.Linear(..., dot_general=...)`.

For inputs [..., K] the kernel gradient contracts every leading axis of the
inputs with the same axes of the output cotangent. Left to autodiff, that is
a dot_general over several contracting axes, and XLA's CPU backend gives it
a transposed copy of the cotangent first (a 25 MB copy for each of the
attentive probe's [16, 128, 3072] MLP activations). Written as
[rows, K]^T @ [rows, N] on the flattened arrays, XLA's GEMM reads both in
place. On the 2-core CPU the five probes' training step then takes 5.5
instead of 6.7 s on LAM-shaped features [16, 8, 16, 1024] and 11.6 instead
of 12.8 s on encoder-shaped ones [1, 9, 256, 1024]
(benchmarks/classification_probe.py), with bitwise the same parameters
after three steps at [16, 8, 16, 1024] and [2, 9, 256, 1024]. At other
shapes XLA may sum the kernel gradient in another order than autodiff's
form: the same numbers to fp32 rounding (tests/nn/flat_grad_linear_test.py),
which training then carries on (the default run's probes on LARY-Sim moved
within their seed spread).
"""

from __future__ import annotations

from typing import Any

import jax

from lary_jax.errors import LaryError


@jax.custom_vjp
def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [..., K] @ kernel [K, N] -> [..., N], as nnx.Linear computes it."""
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _matmul_fwd(x, kernel):
  return matmul(x, kernel), (x, kernel)


def _matmul_bwd(saved, dy):
  x, kernel = saved
  dx = jax.lax.dot_general(dy, kernel, (((dy.ndim - 1,), (1,)), ((), ())))
  dkernel = jax.lax.dot_general(x.reshape(-1, x.shape[-1]),
                                dy.reshape(-1, dy.shape[-1]),
                                (((0,), (0,)), ((), ())))
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dot_general(x: jax.Array, kernel: jax.Array, dimension_numbers: Any,
                precision: Any = None, preferred_element_type: Any = None,
                **_) -> jax.Array:
  """`lax.dot_general` as nnx.Linear calls it, computed by `matmul`.

  Only nnx.Linear's contraction (the inputs' last axis with the kernel's
  first), without `precision` or `preferred_element_type`.
  """
  if (tuple(map(tuple, dimension_numbers[0])) != ((x.ndim - 1,), (0,))
      or any(dimension_numbers[1]) or precision is not None
      or preferred_element_type is not None):
    raise LaryError("flat_grad_linear.dot_general: only nnx.Linear's "
                    "contraction, without precision or "
                    "preferred_element_type")
  return matmul(x, kernel)
