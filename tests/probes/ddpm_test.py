"""The pure-JAX DDPM against diffusers' DDPMScheduler as upstream builds it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers import scheduling_ddpm

from lary_jax.errors import LaryError
from lary_jax.probes import ddpm

SHAPE = (6, 5, 7)


def _scheduler(num_inference: int | None = None) -> DDPMScheduler:
  s = DDPMScheduler(num_train_timesteps=1000,
                    beta_schedule="squaredcos_cap_v2", clip_sample=True,
                    prediction_type="epsilon")
  if num_inference:
    s.set_timesteps(num_inference)
  return s


def _eps(x, t):
  """A made-up noise predictor that depends on x and t (either framework)."""
  if isinstance(x, torch.Tensor):
    return 0.8 * torch.tanh(x) + (t.float() / 1000 - 0.5)
  return 0.8 * jnp.tanh(x) + (t.astype(jnp.float32)[:, None, None] / 1000
                              - 0.5)


def test_schedule_is_diffusers_bit_for_bit():
  theirs = _scheduler()
  ours = ddpm.Schedule.squaredcos_cap_v2(1000)
  np.testing.assert_array_equal(np.asarray(ours.betas), theirs.betas.numpy())
  np.testing.assert_array_equal(np.asarray(ours.alphas_cumprod),
                                theirs.alphas_cumprod.numpy())
  assert ours.num_steps == 1000
  assert np.asarray(ours.betas).max() == np.float32(0.999)  # the cap bites
  assert 0 < np.asarray(ours.alphas_cumprod)[-1] < 1e-8


@pytest.mark.parametrize("num_train,num_inference",
                         [(1000, 500), (1000, 1000), (1000, 3), (100, 7)])
def test_sampling_timesteps_are_leading_spacing(num_train, num_inference):
  theirs = DDPMScheduler(num_train_timesteps=num_train,
                         beta_schedule="squaredcos_cap_v2")
  theirs.set_timesteps(num_inference)
  got = ddpm.sampling_timesteps(num_train, num_inference)
  np.testing.assert_array_equal(got, theirs.timesteps.numpy())
  if (num_train, num_inference) == (1000, 500):
    assert list(got[:2]) == [998, 996] and got[-1] == 0


def test_sampling_timesteps_rejects_too_many_steps():
  with pytest.raises(LaryError, match="num_inference=1001"):
    ddpm.sampling_timesteps(1000, 1001)


def test_add_noise_matches_diffusers():
  rng = np.random.default_rng(0)
  x0, noise = (rng.standard_normal(SHAPE).astype(np.float32)
               for _ in range(2))
  t = np.array([0, 1, 499, 998, 999, 250])
  want = _scheduler().add_noise(torch.from_numpy(x0), torch.from_numpy(noise),
                                torch.from_numpy(t)).numpy()
  got = ddpm.add_noise(ddpm.Schedule.squaredcos_cap_v2(), jnp.asarray(x0),
                       jnp.asarray(noise), jnp.asarray(t))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6, rtol=0)
  got = np.asarray(got)
  assert np.abs(got[0] - x0[0]).max() < 0.03  # t = 0: nearly clean
  assert np.abs(got[4] - noise[4]).max() < 1e-3  # t = 999: nearly all noise


@pytest.mark.parametrize("index", [0, 1, 250, 498, 499])
def test_step_matches_diffusers(index):
  theirs = _scheduler(500)
  t = int(theirs.timesteps[index])
  prev_t = int(theirs.timesteps[index + 1]) if index < 499 else -1
  rng = np.random.default_rng(index)
  # Scaled so that some predicted x_0 fall outside [-1, 1] and get clipped.
  x = 1.5 * rng.standard_normal(SHAPE).astype(np.float32)
  eps = rng.standard_normal(SHAPE).astype(np.float32)
  noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(index))
  out = theirs.step(torch.from_numpy(eps), theirs.timesteps[index],
                    torch.from_numpy(x),
                    generator=torch.Generator().manual_seed(index))
  ours = ddpm.Schedule.squaredcos_cap_v2()
  got = ddpm.step(ours, jnp.asarray(eps), jnp.int32(t), jnp.int32(prev_t),
                  jnp.asarray(x), jnp.asarray(noise.numpy()))
  np.testing.assert_allclose(np.asarray(got), out.prev_sample.numpy(),
                             atol=1e-5, rtol=1e-6)
  x0 = out.pred_original_sample.numpy()
  assert np.abs(x0).max() == 1.0  # clipping was exercised
  if index == 499:  # the last step returns the clipped x_0 itself
    np.testing.assert_allclose(np.asarray(got), x0, atol=3e-7, rtol=0)
    no_clip = ddpm.step(ours, jnp.asarray(eps), jnp.int32(t),
                        jnp.int32(prev_t), jnp.asarray(x),
                        jnp.asarray(noise.numpy()), clip_sample=False)
    assert np.abs(np.asarray(no_clip)).max() > 1.0


def _diffusers_loop(num_inference: int, seed: int, eps_fn=_eps):
  """Upstream's sampling loop, all noise from one seeded generator."""
  theirs = _scheduler(num_inference)
  gen = torch.Generator().manual_seed(seed)
  x = torch.randn(SHAPE, generator=gen)
  for t in theirs.timesteps:
    x = theirs.step(eps_fn(x, t), t, x, generator=gen).prev_sample
  return x.numpy()


def _same_noises(num_inference: int, seed: int):
  """The draws `_diffusers_loop` makes, in order (none at t == 0)."""
  gen = torch.Generator().manual_seed(seed)
  x = torch.randn(SHAPE, generator=gen)
  noises = [torch.randn(SHAPE, generator=gen) for _ in range(num_inference - 1)]
  noises.append(torch.zeros(SHAPE))
  return jnp.asarray(x.numpy()), jnp.asarray(torch.stack(noises).numpy())


@pytest.mark.parametrize("num_inference,atol", [(10, 1e-6),
                                                (500, 1e-5)])
def test_denoise_loop_matches_diffusers_loop(num_inference, atol):
  want = _diffusers_loop(num_inference, seed=3)
  x, noises = _same_noises(num_inference, seed=3)
  timesteps = ddpm.sampling_timesteps(1000, num_inference)
  run = jax.jit(lambda x, n: ddpm.denoise(
      _eps, x, n, ddpm.Schedule.squaredcos_cap_v2(), timesteps))
  got = np.asarray(run(x, noises))
  assert np.abs(want).max() == 1.0  # the final clip shows
  np.testing.assert_allclose(got, want, atol=atol, rtol=0)


def test_sample_is_denoise_of_sample_noise():
  schedule = ddpm.Schedule.squaredcos_cap_v2()
  key = jax.random.key(7)
  got = jax.jit(lambda k: ddpm.sample(_eps, SHAPE, k, schedule, 20))(key)
  x, noises = ddpm.sample_noise(key, SHAPE, 20)
  want = ddpm.denoise(_eps, x, noises, schedule,
                      ddpm.sampling_timesteps(1000, 20))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  assert np.asarray(noises).shape == (20, *SHAPE)


def test_exact_score_recovers_the_data_distribution():
  # Data x0 ~ N(m, s^2) per coordinate: the optimal noise prediction is
  # E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) m) / (a s^2 + 1 - a), so the
  # 500-step sampler must give back mean m and standard deviation s.
  m, s = 0.2, 0.25
  schedule = ddpm.Schedule.squaredcos_cap_v2()

  def exact_eps(x, t):
    a = schedule.alphas_cumprod[t][:, None]
    return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * m) / (a * s**2 + 1 - a)

  x = jax.jit(lambda k: ddpm.sample(exact_eps, (4096, 8), k, schedule))(
      jax.random.key(0))
  x = np.asarray(x)
  assert abs(x.mean() - m) < 0.01
  assert abs(x.std() - s) < 0.01
