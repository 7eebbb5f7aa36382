"""DDPM noise schedule, forward noising and ancestral sampling in pure JAX.

The DiT action decoder trains and samples with the scheduler upstream builds
through diffusers: `DDPMScheduler(num_train_timesteps=1000,
beta_schedule="squaredcos_cap_v2", clip_sample=True,
prediction_type="epsilon")`, default "fixed_small" variance, 500 "leading"
sampling steps. This module reproduces exactly that configuration:

  schedule = Schedule.squaredcos_cap_v2(1000)
  x_t = add_noise(schedule, x0, noise, t)                  # training input
  x0_hat = sample(eps_fn, (B, S, A), key, schedule, 500)   # one lax.scan

Arithmetic follows diffusers' float32 order so that a step agrees with
`DDPMScheduler.step` to float32 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lary_jax.errors import LaryError

# eps_fn(x [B, ...], t [B] int32) -> predicted noise, same shape as x.
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]

MAX_BETA = 0.999
CLIP_RANGE = 1.0
MIN_VARIANCE = 1e-20


def betas_squaredcos_cap_v2(num_steps: int = 1000) -> np.ndarray:
  """The cosine schedule's betas (Nichol & Dhariwal), capped at 0.999.

  Args:
    num_steps: training timesteps T.

  Returns:
    [T] float32; beta_i = 1 - abar((i + 1) / T) / abar(i / T) with
    abar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2, evaluated in float64
    like diffusers' `betas_for_alpha_bar` and rounded once.
  """
  s = np.arange(num_steps + 1, dtype=np.float64) / num_steps
  alpha_bar = np.cos((s + 0.008) / 1.008 * math.pi / 2)**2
  betas = np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], MAX_BETA)
  return betas.astype(np.float32)


class Schedule(NamedTuple):
  """A discrete noise schedule (a pytree: pass it through jit freely)."""

  betas: jax.Array  # [T] float32
  alphas_cumprod: jax.Array  # [T] float32, prod_{s <= t} (1 - beta_s)

  @classmethod
  def squaredcos_cap_v2(cls, num_steps: int = 1000) -> Schedule:
    """The schedule upstream's DDPMScheduler builds."""
    betas = betas_squaredcos_cap_v2(num_steps)
    # torch.cumprod of the float32 alphas accumulates in double on CPU:
    # the same product, rounded once, matches diffusers bit for bit.
    alphas = np.float32(1) - betas
    alphas_cumprod = np.cumprod(alphas.astype(np.float64)).astype(np.float32)
    return cls(jnp.asarray(betas), jnp.asarray(alphas_cumprod))

  @property
  def num_steps(self) -> int:
    """Training timesteps T."""
    return self.betas.shape[0]


def _per_example(values: jax.Array, ndim: int) -> jax.Array:
  """[B] -> [B, 1, ..., 1] with `ndim` axes in all."""
  return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def add_noise(schedule: Schedule, x0: jax.Array, noise: jax.Array,
              t: jax.Array) -> jax.Array:
  """q(x_t | x_0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

  Args:
    schedule: the noise schedule.
    x0: [B, ...] clean samples.
    noise: same shape as x0, standard normal.
    t: [B] integer timesteps in [0, T).

  Returns:
    [B, ...] noisy samples in x0's dtype.
  """
  abar = schedule.alphas_cumprod.astype(x0.dtype)[t]  # [B]
  a = _per_example(jnp.sqrt(abar), x0.ndim)
  s = _per_example(jnp.sqrt(1 - abar), x0.ndim)
  return a * x0 + s * noise


def sampling_timesteps(num_train: int = 1000,
                       num_inference: int = 500) -> np.ndarray:
  """diffusers' "leading" spacing: k * (T // n) for k = n - 1, ..., 0.

  Args:
    num_train: training timesteps T.
    num_inference: sampling steps n (<= T).

  Returns:
    [n] int32, descending; e.g. (1000, 500) -> 998, 996, ..., 2, 0.
  """
  if not 0 < num_inference <= num_train:
    raise LaryError(f"num_inference={num_inference}: expected 1 to "
                    f"num_train={num_train} sampling steps")
  ratio = num_train // num_inference
  return (np.arange(num_inference)[::-1] * ratio).astype(np.int32)


def step(schedule: Schedule, eps: jax.Array, t: jax.Array, prev_t: jax.Array,
         x: jax.Array, noise: jax.Array, clip_sample: bool = True
         ) -> jax.Array:
  """One reverse step x_t -> x_{prev_t} (`DDPMScheduler.step`, epsilon).

  Args:
    schedule: the noise schedule.
    eps: predicted noise, shape of x.
    t: current timestep (scalar int).
    prev_t: the next timestep of the sampling sequence, -1 after the last.
    x: [B, ...] current sample x_t.
    noise: standard normal, shape of x; unused at t == 0.
    clip_sample: clip the predicted x_0 to [-1, 1].

  Returns:
    x_{prev_t}, shape and dtype of x.
  """
  ac = schedule.alphas_cumprod
  abar_t = ac[t]
  abar_prev = jnp.where(prev_t >= 0, ac[jnp.maximum(prev_t, 0)], 1.0)
  beta_prod_t = 1 - abar_t
  beta_prod_prev = 1 - abar_prev
  alpha_t = abar_t / abar_prev  # one step of the (possibly strided) chain
  beta_t = 1 - alpha_t
  x0 = (x - beta_prod_t**0.5 * eps) / abar_t**0.5
  if clip_sample:
    x0 = jnp.clip(x0, -CLIP_RANGE, CLIP_RANGE)
  x0_coeff = abar_prev**0.5 * beta_t / beta_prod_t
  x_coeff = alpha_t**0.5 * beta_prod_prev / beta_prod_t
  mean = x0_coeff * x0 + x_coeff * x
  # "fixed_small": the posterior variance of q(x_prev | x_t, x_0).
  variance = jnp.maximum(beta_prod_prev / beta_prod_t * beta_t, MIN_VARIANCE)
  return jnp.where(t > 0, mean + variance**0.5 * noise, mean).astype(x.dtype)


def sample_noise(key: jax.Array, shape: tuple[int, ...], num_inference: int,
                 dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """The randomness `sample` consumes: x_T and one noise per step.

  Args:
    key: PRNG key.
    shape: sample shape [B, ...].
    num_inference: sampling steps n.
    dtype: noise dtype.

  Returns:
    (x_T [*shape], noises [n, *shape]), standard normal.
  """
  k_init, k_steps = jax.random.split(key)
  size = math.prod(shape)
  # Drawn flat: threefry's lowering grows with rank, and a [n, B, S, A] draw
  # compiles ~5x slower and runs ~2x slower on CPU than [n, B * S * A].
  x = jax.random.normal(k_init, (size,), dtype).reshape(shape)
  noises = jax.random.normal(k_steps, (num_inference, size), dtype)
  return x, noises.reshape(num_inference, *shape)


def denoise(eps_fn: EpsFn, x: jax.Array, noises: jax.Array,
            schedule: Schedule, timesteps: np.ndarray,
            clip_sample: bool = True) -> jax.Array:
  """Runs the reverse chain from x over `timesteps` in one `lax.scan`.

  Args:
    eps_fn: eps_fn(x, t [B] int32) -> predicted noise.
    x: [B, ...] starting sample, x_T.
    noises: [n, B, ...] per-step variance noise (the last one is unused).
    schedule: the noise schedule.
    timesteps: [n] descending timesteps (`sampling_timesteps`).
    clip_sample: clip each predicted x_0 to [-1, 1].

  Returns:
    [B, ...] the final sample x_0.
  """
  timesteps = np.asarray(timesteps, np.int32)
  prev = np.append(timesteps[1:], np.int32(-1))
  batch = x.shape[0]

  def body(x, inputs):
    t, prev_t, noise = inputs
    eps = eps_fn(x, jnp.full((batch,), t, jnp.int32))
    return step(schedule, eps.astype(x.dtype), t, prev_t, x, noise,
                clip_sample), None

  x, _ = jax.lax.scan(body, x, (jnp.asarray(timesteps), jnp.asarray(prev),
                                noises))
  return x


def sample(eps_fn: EpsFn, shape: tuple[int, ...], key: jax.Array,
           schedule: Schedule, num_inference: int = 500,
           clip_sample: bool = True) -> jax.Array:
  """Draws samples by ancestral DDPM sampling from N(0, I).

  Args:
    eps_fn: eps_fn(x, t [B] int32) -> predicted noise.
    shape: sample shape [B, ...].
    key: PRNG key (split as in `sample_noise`).
    schedule: the noise schedule.
    num_inference: sampling steps, "leading" spacing.
    clip_sample: clip each predicted x_0 to [-1, 1] (diffusers' default).

  Returns:
    [*shape] float32 samples.
  """
  timesteps = sampling_timesteps(schedule.num_steps, num_inference)
  x, noises = sample_noise(key, shape, num_inference)
  return denoise(eps_fn, x, noises, schedule, timesteps, clip_sample)
