"""Upstream's DiT action decoder: a DDPM over the action chunk (Flax NNX).

  tokens = [t_emb + z_emb, x_emb(a_1), ..., x_emb(a_S)] + pos   [B, 1 + S, H]
  -> depth x pre-norm block (LayerNorm without affine, eps 1e-6; timm-style
     attention with qkv bias; MLP with tanh GELU)
  -> LayerNorm without affine -> Linear(H, A) on the S action tokens
  = predicted noise [B, S, A]

t_emb: 256 sinusoidal features (cos then sin) -> Linear -> SiLU -> Linear.
z_emb: Linear(latent_dim, H) of the flattened latent; in training 10% of the
conditions are replaced by a learned `uncondition` vector first (never when
sampling). Initialisation as upstream: xavier-uniform Linears with zero
bias, then normal(0.02) for the x, z and t embedders and `uncondition`,
scale * normal for the positional embedding (scale = H^-0.5), and a zero
final Linear.

Training (`loss`) is epsilon prediction with the Huber loss (delta 1) at a
uniform timestep of the 1000-step squaredcos_cap_v2 schedule; `predict` runs
the 500-step sampler as one `lax.scan`. As upstream's scheduler clips every
predicted x_0 to [-1, 1] and the last step returns that x_0, predictions
never leave [-1, 1] in normalised units (`Config.clip_sample=False` lifts
that).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lary_jax.errors import LaryError
from lary_jax.nn import vit_layers
from lary_jax.probes import ddpm

EPS = 1e-6
FREQ_DIM = 256
MAX_PERIOD = 10000.0
EMBED_STD = 0.02

_xavier = nnx.initializers.xavier_uniform()
_normal = nnx.initializers.normal(EMBED_STD)


@dataclasses.dataclass(frozen=True)
class Config:
  """Decoder shape and diffusion settings; defaults are upstream's."""

  latent_dim: int  # width of the flattened latent z
  action_dim: int  # A
  steps: int  # S, actions per chunk
  hidden: int = 512
  depth: int = 6
  num_heads: int = 8
  mlp_ratio: float = 4.0
  cond_dropout: float = 0.1
  train_timesteps: int = 1000
  sample_timesteps: int = 500
  # Upstream's scheduler clips every predicted x_0 to [-1, 1], so its
  # predictions never leave [-1, 1] normalised units although about a third
  # of std-normalised targets do; False lets the sampler reach them.
  clip_sample: bool = True

  def __post_init__(self):
    if self.hidden % self.num_heads:
      raise LaryError(f"dit hidden {self.hidden} is not a multiple of "
                      f"num_heads {self.num_heads}")
    if not 0 <= self.cond_dropout < 1:
      raise LaryError(f"dit cond_dropout {self.cond_dropout}: expected a "
                      "probability in [0, 1)")


def _linear(din: int, dout: int, init: Any, dtype: Any, rngs: nnx.Rngs
            ) -> nnx.Linear:
  return nnx.Linear(din, dout, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=init, bias_init=nnx.initializers.zeros,
                    rngs=rngs)


def _norm(dim: int, dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(dim, epsilon=EPS, use_scale=False, use_bias=False,
                       dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def timestep_features(t: jax.Array, dim: int = FREQ_DIM) -> jax.Array:
  """Sinusoidal timestep features: cos(t f_i), then sin(t f_i).

  Args:
    t: [B] timesteps, int or fractional.
    dim: feature width; frequencies f_i = 10000^(-i / (dim // 2)).

  Returns:
    [B, dim] float32 (a zero column last when dim is odd).
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(MAX_PERIOD) * jnp.arange(half, dtype=jnp.float32)
                  / half)
  args = t.astype(jnp.float32)[:, None] * freqs  # [B, half]
  out = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    out = jnp.pad(out, ((0, 0), (0, 1)))
  return out


class TimestepEmbedder(nnx.Module):
  """timestep_features -> fc1 -> SiLU -> fc2."""

  def __init__(self, hidden: int, *, dtype: Any, rngs: nnx.Rngs):
    self.dtype = dtype
    self.fc1 = _linear(FREQ_DIM, hidden, _normal, dtype, rngs)
    self.fc2 = _linear(hidden, hidden, _normal, dtype, rngs)

  def __call__(self, t: jax.Array) -> jax.Array:
    """[B] -> [B, H]."""
    x = timestep_features(t).astype(self.dtype)
    return self.fc2(jax.nn.silu(self.fc1(x)))


class SelfAttention(nnx.Module):
  """timm's Attention (fused qkv with bias, proj), one plain softmax.

  `vit_layers.attention`'s cache-blocked CPU path loops over batch x heads;
  over 1 + S tokens the logits are tiny and that loop would be pure
  overhead, so this computes them in one einsum.
  """

  def __init__(self, dim: int, num_heads: int, *, dtype: Any,
               rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.qkv = _linear(dim, 3 * dim, _xavier, dtype, rngs)
    self.proj = _linear(dim, dim, _xavier, dtype, rngs)

  def __call__(self, x: jax.Array, *, rope: Any = None) -> jax.Array:
    """[B, N, D] -> [B, N, D]; `rope` (Block passes None) is unused."""
    del rope
    b, n, _ = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, Dh]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                        preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits * self.head_dim**-0.5, axis=-1)
    y = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
    return self.proj(y.reshape(b, n, -1))


def _block(config: Config, dtype: Any, rngs: nnx.Rngs) -> vit_layers.Block:
  """A vit_layers.Block re-built to upstream's DiTBlock."""
  h = config.hidden
  mlp_hidden = int(h * config.mlp_ratio)
  block = vit_layers.Block(h, config.num_heads, mlp_hidden,
                           act="gelu_pytorch_tanh", eps=EPS, dtype=dtype,
                           rngs=rngs)
  block.norm1 = _norm(h, dtype, rngs)
  block.norm2 = _norm(h, dtype, rngs)
  block.attn = SelfAttention(h, config.num_heads, dtype=dtype, rngs=rngs)
  block.mlp.fc1 = _linear(h, mlp_hidden, _xavier, dtype, rngs)
  block.mlp.fc2 = _linear(mlp_hidden, h, _xavier, dtype, rngs)
  return block


class DiT(nnx.Module):
  """Noisy action chunk, timestep and latent -> predicted noise."""

  def __init__(self, config: Config, *, dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    c = self.config = config
    h = c.hidden
    self.dtype = dtype
    self.x_embedder = _linear(c.action_dim, h, _normal, dtype, rngs)
    self.t_embedder = TimestepEmbedder(h, dtype=dtype, rngs=rngs)
    self.z_embedder = _linear(c.latent_dim, h, _normal, dtype, rngs)
    self.uncondition = (nnx.Param(_normal(rngs.params(), (c.latent_dim,)))
                        if c.cond_dropout > 0 else None)
    pos = jax.random.normal(rngs.params(), (1 + c.steps, h), jnp.float32)
    self.pos_embed = nnx.Param(pos * h**-0.5)
    self.blocks = nnx.List([_block(c, dtype, rngs) for _ in range(c.depth)])
    self.norm_final = _norm(h, dtype, rngs)
    self.final = _linear(h, c.action_dim, nnx.initializers.zeros, dtype,
                         rngs)

  def __call__(self, x: jax.Array, t: jax.Array, z: jax.Array,
               drop: jax.Array | None = None) -> jax.Array:
    """Predicted noise.

    Args:
      x: [B, S, A] noisy actions.
      t: [B] (or a scalar) timesteps, int or float.
      z: [B, latent_dim] conditions.
      drop: optional [B] bool; True replaces that condition by
        `uncondition` (classifier-free-guidance dropout).

    Returns:
      [B, S, A] float32.
    """
    return self.denoise(x, t, self.embed_condition(z, drop))

  def embed_condition(self, z: jax.Array, drop: jax.Array | None = None
                      ) -> jax.Array:
    """[B, latent_dim] -> [B, H]; the part of a step that ignores x and t."""
    c = self.config
    if z.ndim != 2 or z.shape[-1] != c.latent_dim:
      raise LaryError(f"dit decoder built for latents [B, {c.latent_dim}], "
                      f"got {z.shape}")
    if drop is not None:
      if self.uncondition is None:
        raise LaryError("dit decoder has cond_dropout=0: no uncondition "
                        "vector to drop conditions to")
      z = jnp.where(drop[:, None], self.uncondition[...], z)
    return self.z_embedder(z.astype(self.dtype))

  def denoise(self, x: jax.Array, t: jax.Array, cond: jax.Array
              ) -> jax.Array:
    """`__call__` given the embedded condition [B, H]; -> [B, S, A]."""
    c = self.config
    b = x.shape[0]
    if x.shape[1:] != (c.steps, c.action_dim):
      raise LaryError(f"dit decoder built for actions [B, {c.steps}, "
                      f"{c.action_dim}], got {x.shape}")
    t = jnp.broadcast_to(jnp.asarray(t), (b,))
    first = self.t_embedder(t) + cond  # [B, H]
    tokens = jnp.concatenate(
        [first[:, None], self.x_embedder(x.astype(self.dtype))], axis=1)
    tokens = tokens + self.pos_embed[...].astype(self.dtype)  # [B, 1+S, H]
    for block in self.blocks:
      tokens = block(tokens)
    return self.final(self.norm_final(tokens[:, 1:])).astype(jnp.float32)


def make(config: Config, *, seed: int, dtype: Any = jnp.float32) -> DiT:
  """A freshly initialised decoder."""
  return DiT(config, dtype=dtype, rngs=nnx.Rngs(params=seed))


def schedule(config: Config) -> ddpm.Schedule:
  """The decoder's noise schedule (squaredcos_cap_v2)."""
  return ddpm.Schedule.squaredcos_cap_v2(config.train_timesteps)


def denoising_loss(model: DiT, z: jax.Array, target: jax.Array,
                   t: jax.Array, noise: jax.Array,
                   drop: jax.Array | None = None) -> jax.Array:
  """Mean Huber loss (delta 1) of the predicted noise, randomness given.

  Args:
    model: the decoder.
    z: [B, latent_dim] conditions.
    target: [B, S * A] normalised actions, step-major.
    t: [B] int timesteps in [0, train_timesteps).
    noise: [B, S, A] standard normal.
    drop: optional [B] bool condition-dropout mask.

  Returns:
    Scalar float32.
  """
  c = model.config
  x0 = target.reshape(target.shape[0], c.steps, c.action_dim)
  noisy = ddpm.add_noise(schedule(c), x0.astype(jnp.float32), noise, t)
  eps = model(noisy, t, z, drop)
  return optax.huber_loss(eps, noise, delta=1.0).mean()


def loss(model: DiT, z: jax.Array, target: jax.Array, key: jax.Array, *,
         train: bool = True) -> jax.Array:
  """The training loss: draws t, noise and (if `train`) the dropout mask.

  Args:
    model: the decoder.
    z: [B, latent_dim] conditions.
    target: [B, S * A] normalised actions, step-major.
    key: PRNG key.
    train: apply condition dropout (upstream's eval loss does not).

  Returns:
    Scalar float32.
  """
  c = model.config
  b = z.shape[0]
  k_t, k_noise, k_drop = jax.random.split(key, 3)
  t = jax.random.randint(k_t, (b,), 0, c.train_timesteps)
  noise = jax.random.normal(k_noise, (b, c.steps * c.action_dim))
  noise = noise.reshape(b, c.steps, c.action_dim)  # flat: see sample_noise
  drop = None
  if train and c.cond_dropout > 0:
    drop = jax.random.uniform(k_drop, (b,)) < c.cond_dropout
  return denoising_loss(model, z, target, t, noise, drop)


def predict(model: DiT, z: jax.Array, key: jax.Array) -> jax.Array:
  """Samples the action chunk from N(0, I) noise in one `lax.scan`.

  Args:
    model: the decoder.
    z: [B, latent_dim] conditions.
    key: PRNG key for the initial and per-step noise.

  Returns:
    [B, S * A] float32 normalised actions, step-major.
  """
  c = model.config
  b = z.shape[0]
  cond = model.embed_condition(z)  # the same for all sampling steps
  x = ddpm.sample(lambda x, t: model.denoise(x, t, cond),
                  (b, c.steps, c.action_dim), key, schedule(c),
                  c.sample_timesteps, c.clip_sample)
  return x.reshape(b, c.steps * c.action_dim)
