"""Upstream's MLP action decoder: flattened pair tokens -> action chunk.

  LayerNorm -> Linear(in, 4096) -> ReLU
  -> 2 x [LayerNorm -> Linear(4096, 4096) -> ReLU, + residual]
  -> LayerNorm -> Linear(4096, steps * dim)

Every Linear keeps PyTorch's default init (uniform +-1/sqrt(fan_in) for
weight and bias), as upstream never re-initialises them. Trained with the
Huber loss (delta 1) on normalised actions.
"""

from __future__ import annotations

import dataclasses
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
    x = jax.nn.relu(self.fc1(self.norm_in(x)))
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
