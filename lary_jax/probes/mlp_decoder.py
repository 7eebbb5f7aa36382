"""Upstream's MLP action decoder: flattened pair tokens -> action chunk.

  LayerNorm -> Linear(in, 4096) -> ReLU
  -> 2 x [LayerNorm -> Linear(4096, 4096) -> ReLU, + residual]
  -> LayerNorm -> Linear(4096, steps * dim)

Every Linear keeps PyTorch's default init (uniform +-1/sqrt(fan_in) for
weight and bias), as upstream never re-initialises them. Trained with the
Huber loss (delta 1) on normalised actions.

The input is data (stored features): no gradient flows back to it. That
lets the first LayerNorm -> Linear pair skip one of its three matmuls in
the backward pass (`norm_linear`), a quarter of the training step's FLOPs at
upstream's 32,768-wide input.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

EPS = 1e-5  # torch.nn.LayerNorm's default


@dataclasses.dataclass(frozen=True)
class Config:
  """Decoder shape; hidden and blocks default to upstream's."""

  input_dim: int
  output_dim: int  # steps * action_dim
  hidden: int = 4096
  blocks: int = 2


def _torch_linear(din: int, dout: int, dtype: Any, rngs: nnx.Rngs
                  ) -> nnx.Linear:
  bound = 1.0 / math.sqrt(din)

  def init(key, shape, param_dtype=jnp.float32):
    return jax.random.uniform(key, shape, param_dtype, -bound, bound)

  return nnx.Linear(din, dout, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=init, bias_init=init, rngs=rngs)


def _norm(dim: int, dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(dim, epsilon=EPS, dtype=dtype,
                       param_dtype=jnp.float32, rngs=rngs)


def _standardise(x: jax.Array) -> jax.Array:
  """(x - mean) / sqrt(var + eps) over the last axis, in float32."""
  x = x.astype(jnp.float32)
  centred = x - x.mean(-1, keepdims=True)
  var = jnp.square(centred).mean(-1, keepdims=True)
  return centred * jax.lax.rsqrt(var + EPS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def norm_linear(dtype: Any, x: jax.Array, scale: jax.Array, bias: jax.Array,
                kernel: jax.Array, kernel_bias: jax.Array) -> jax.Array:
  """Linear(LayerNorm(x)) for data `x`: [B, D] -> [B, H] in `dtype`.

  The gradient reaches the four parameters only. With x_hat the
  standardised input and dy the output's cotangent, every parameter
  gradient follows from g = x_hat^T dy ([D, H], one matmul) and
  s = sum_b dy: d kernel = scale g + bias s, d scale = rowsum(kernel * g),
  d bias = kernel s. Autodiff would also form dy kernel^T, the cotangent of
  the LayerNorm's output, which is a second [B, D, H] matmul.

  Args:
    dtype: compute dtype of the matmul (statistics stay float32).
    x: [B, D] input.
    scale: [D] LayerNorm scale.
    bias: [D] LayerNorm bias.
    kernel: [D, H] Linear kernel.
    kernel_bias: [H] Linear bias.

  Returns:
    [B, H] output.
  """
  return _norm_linear_fwd(dtype, x, scale, bias, kernel, kernel_bias)[0]


def _norm_linear_fwd(dtype, x, scale, bias, kernel, kernel_bias):
  x_hat = _standardise(x)  # [B, D]
  normed = (x_hat * scale + bias).astype(dtype)
  y = jnp.dot(normed, kernel.astype(dtype)) + kernel_bias.astype(dtype)
  return y, (x_hat.astype(dtype), scale, bias, kernel)


def _norm_linear_bwd(dtype, residuals, dy):
  x_hat, scale, bias, kernel = residuals
  g = jnp.dot(x_hat.T, dy.astype(dtype),
              preferred_element_type=jnp.float32)  # [D, H]
  s = dy.astype(jnp.float32).sum(0)  # [H]
  d_kernel = scale[:, None] * g + bias[:, None] * s
  return (None, (kernel * g).sum(1), kernel @ s, d_kernel, s)


norm_linear.defvjp(_norm_linear_fwd, _norm_linear_bwd)


class ResidualBlock(nnx.Module):
  """x + ReLU(Linear(LayerNorm(x)))."""

  def __init__(self, dim: int, dtype: Any, rngs: nnx.Rngs):
    self.norm = _norm(dim, dtype, rngs)
    self.linear = _torch_linear(dim, dim, dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return x + jax.nn.relu(self.linear(self.norm(x)))


class MlpDecoder(nnx.Module):
  """[B, input_dim] latents -> [B, output_dim] normalised actions."""

  def __init__(self, config: Config, *, dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    self.config = config
    self.norm_in = _norm(config.input_dim, dtype, rngs)
    self.fc1 = _torch_linear(config.input_dim, config.hidden, dtype, rngs)
    self.blocks = nnx.List([ResidualBlock(config.hidden, dtype, rngs)
                            for _ in range(config.blocks)])
    self.norm_out = _norm(config.hidden, dtype, rngs)
    self.fc2 = _torch_linear(config.hidden, config.output_dim, dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    # The parameters stay in norm_in and fc1 (upstream's names); their
    # pair runs as one op with a cheaper backward.
    x = jax.nn.relu(norm_linear(
        self.fc1.dtype or jnp.float32, jax.lax.stop_gradient(x),
        self.norm_in.scale[...], self.norm_in.bias[...],
        self.fc1.kernel[...], self.fc1.bias[...]))
    for block in self.blocks:
      x = block(x)
    return self.fc2(self.norm_out(x)).astype(jnp.float32)


def make(config: Config, *, seed: int, dtype: Any = jnp.float32
         ) -> MlpDecoder:
  """A freshly initialised decoder."""
  return MlpDecoder(config, dtype=dtype, rngs=nnx.Rngs(params=seed))


def loss(model: MlpDecoder, z: jax.Array, target: jax.Array,
         key: jax.Array) -> jax.Array:
  """Mean Huber loss (delta 1) of the prediction; `key` is unused."""
  del key
  return optax.huber_loss(model(z), target, delta=1.0).mean()


def predict(model: MlpDecoder, z: jax.Array, key: jax.Array) -> jax.Array:
  """The decoded chunk, [B, output_dim]; `key` is unused."""
  del key
  return model(z)
