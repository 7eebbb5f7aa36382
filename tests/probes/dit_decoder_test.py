"""The DiT action decoder against upstream's, re-created in PyTorch."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers import scheduling_ddpm
from flax import nnx

from lary_jax.errors import LaryError
from lary_jax.probes import ddpm
from lary_jax.probes import dit_decoder as dd
from tests.probes import torch_dit
from tests.probes.torch_probe import load_into

LATENT, ACTION, STEPS, HIDDEN, DEPTH, HEADS = 24, 7, 5, 64, 2, 4
CONFIG = dd.Config(latent_dim=LATENT, action_dim=ACTION, steps=STEPS,
                   hidden=HIDDEN, depth=DEPTH, num_heads=HEADS)


def _scheduler() -> DDPMScheduler:
  return DDPMScheduler(num_train_timesteps=1000,
                       beta_schedule="squaredcos_cap_v2", clip_sample=True,
                       prediction_type="epsilon")


def _unit_scale(model: torch.nn.Module) -> None:
  # At upstream's init the final layer is zero and the embedders tiny;
  # unit-gain weights and non-zero biases make any slip show in the output.
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for p in model.parameters():
      scale = p.shape[-1]**-0.5 if p.dim() >= 2 else 0.3
      p.copy_(scale * torch.randn(p.shape, generator=g))


def _pair(seed: int, unit: bool = True):
  torch.manual_seed(seed)
  theirs = torch_dit.TorchDiT(LATENT, ACTION, STEPS, HIDDEN, DEPTH, HEADS)
  if unit:
    _unit_scale(theirs)
  # Every leaf is overwritten: build ours abstractly (no eager init).
  graphdef, state = nnx.split(nnx.eval_shape(lambda: dd.make(CONFIG,
                                                             seed=seed)))
  return theirs, graphdef, load_into(state, torch_dit.jax_params(theirs))


@jax.jit
def _forward(model, x, t, z, drop=None):
  return model(x, t, z, drop)


def _inputs(seed: int, batch: int = 6):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, STEPS, ACTION)).astype(np.float32)
  z = rng.standard_normal((batch, LATENT)).astype(np.float32)
  return x, z


def _flat(state) -> dict[str, np.ndarray]:
  return {".".join(map(str, p)): np.asarray(v[...])
          for p, v in nnx.to_flat_state(state)}


@pytest.mark.parametrize("t,drop", [
    ([0, 1, 250, 500, 998, 999], [0, 1, 0, 0, 1, 0]),
    ([10.5, 0.25, 3.0, 700.75, 999.0, 2.0], None),  # fractional t
])
def test_outputs_match_pytorch(t, drop):
  theirs, graphdef, params = _pair(0)
  x, z = _inputs(0)
  t = np.asarray(t)
  torch_drop = None if drop is None else torch.tensor(drop, dtype=torch.bool)
  want = theirs(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(z),
                torch_drop).detach().numpy()
  model = nnx.merge(graphdef, params)
  got = np.asarray(_forward(model, jnp.asarray(x), jnp.asarray(t),
                            jnp.asarray(z),
                            None if drop is None else jnp.asarray(drop, bool)))
  assert got.shape == (6, STEPS, ACTION) and got.dtype == np.float32
  assert np.abs(want).max() > 1.0
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_scalar_timestep_broadcasts_like_upstream_sampling():
  # Upstream's sampler passes one timestep, shape [1], for the whole batch.
  theirs, graphdef, params = _pair(1)
  x, z = _inputs(1)
  want = theirs(torch.from_numpy(x), torch.tensor([996]),
                torch.from_numpy(z)).detach().numpy()
  got = _forward(nnx.merge(graphdef, params), jnp.asarray(x),
                 jnp.int32(996), jnp.asarray(z))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


def test_loss_grads_and_one_adamw_step_match_pytorch():
  lr = wd = 1e-4
  theirs, graphdef, params = _pair(2)
  x, z = _inputs(2, batch=8)
  target = x.reshape(8, STEPS * ACTION)
  rng = np.random.default_rng(3)
  t = rng.integers(0, 1000, 8)
  noise = rng.standard_normal((8, STEPS, ACTION)).astype(np.float32)
  drop = np.arange(8) % 3 == 0

  opt = torch.optim.AdamW(theirs.parameters(), lr=lr, betas=(0.9, 0.999),
                          eps=1e-8, weight_decay=wd)
  want_loss = torch_dit.huber_loss(
      theirs, _scheduler(), torch.from_numpy(z), torch.from_numpy(target),
      torch.from_numpy(t), torch.from_numpy(noise), torch.from_numpy(drop))
  want_loss.backward()
  want_grads = torch_dit.jax_params(theirs, lambda p: p.grad.numpy().copy())
  opt.step()
  want_after = torch_dit.jax_params(theirs)

  def loss_fn(p):
    return dd.denoising_loss(nnx.merge(graphdef, p), jnp.asarray(z),
                             jnp.asarray(target), jnp.asarray(t),
                             jnp.asarray(noise), jnp.asarray(drop))

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  assert 0.1 < want_loss.item() < 10
  np.testing.assert_allclose(float(loss), want_loss.item(), atol=1e-6)
  for key, g in _flat(grads).items():
    np.testing.assert_allclose(g, want_grads[key], atol=1e-6, rtol=0,
                               err_msg=key)
  assert np.abs(want_grads["uncondition"]).max() > 0  # drop reached it

  # AdamW from torch's own gradients agrees tightly; from ours, Adam's
  # g / (|g| + eps) can turn float32 rounding of a ~1e-8 gradient into up
  # to lr of update, so there only nearly all coordinates must.
  tx = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd)
  step = jax.jit(lambda g: optax.apply_updates(
      params, tx.update(g, tx.init(params), params)[0]))
  for key, value in _flat(step(load_into(params, want_grads))).items():
    np.testing.assert_allclose(value, want_after[key], atol=1e-6, rtol=0,
                               err_msg=key)
  stepped = _flat(step(grads))
  diff = np.concatenate([np.abs(v - want_after[k]).ravel()
                         for k, v in stepped.items()])
  assert (diff <= 1e-6).mean() > 0.998 and diff.max() <= lr


def test_init_matches_upstream_statistics():
  config = dd.Config(latent_dim=256, action_dim=7, steps=5, depth=2)
  ours = _flat(nnx.state(nnx.jit(lambda: dd.make(config, seed=3))()))
  torch.manual_seed(3)
  theirs = torch_dit.jax_params(torch_dit.TorchDiT(256, 7, 5, depth=2))
  assert set(ours) == set(theirs)
  for key, want in theirs.items():
    got = ours[key]
    assert got.shape == want.shape and got.dtype == np.float32, key
    if want.std() == 0:  # zero biases and the zero final layer
      np.testing.assert_array_equal(got, want, err_msg=key)
    else:
      assert abs(got.std() / want.std() - 1) < 0.1, key
      assert abs(np.abs(got).max() / np.abs(want).max() - 1) < 0.35, key
  np.testing.assert_array_equal(ours["final.kernel"], 0)
  for key in ("x_embedder.kernel", "z_embedder.kernel", "uncondition",
              "t_embedder.fc1.kernel", "t_embedder.fc2.kernel"):
    assert abs(ours[key].std() - 0.02) < 0.003, key
  assert abs(ours["pos_embed"].std() - 512**-0.5) < 0.01
  bound = math.sqrt(6 / (512 + 3 * 512))  # xavier-uniform, fused qkv
  assert abs(np.abs(ours["blocks.0.attn.qkv.kernel"]).max() - bound) < 1e-3


def _known_eps_pair():
  """A decoder whose noise prediction is a per-dimension constant."""
  _, graphdef, params = _pair(4)
  flat = _flat(params)
  flat["final.kernel"] = np.zeros_like(flat["final.kernel"])
  flat["final.bias"] = np.linspace(-1.5, 1.5, ACTION).astype(np.float32)
  return nnx.merge(graphdef, load_into(params, flat)), flat["final.bias"]


def _diffusers_predict(eps_fn, key, batch):
  """Upstream's sampling loop with the noise `dd.predict` draws from key."""
  shape = (batch, STEPS, ACTION)
  x, noises = ddpm.sample_noise(key, shape, 500)
  draws = iter(torch.from_numpy(np.array(n)) for n in noises)
  scheduler = _scheduler()
  scheduler.set_timesteps(500)
  sample = torch.from_numpy(np.array(x))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(scheduling_ddpm, "randn_tensor", lambda *a, **k: next(draws))
    for t in scheduler.timesteps:
      sample = scheduler.step(eps_fn(sample, t), t, sample).prev_sample
  return sample.reshape(batch, -1).numpy()


def test_predict_with_constant_eps_matches_diffusers_loop():
  model, bias = _known_eps_pair()
  key = jax.random.key(5)
  _, z = _inputs(5)
  got = jax.jit(dd.predict)(model, jnp.asarray(z), key)
  want = _diffusers_predict(
      lambda s, t: torch.from_numpy(np.broadcast_to(bias, s.shape).copy()),
      key, len(z))
  assert got.shape == (6, STEPS * ACTION)
  assert np.abs(want).max() == 1.0  # the clip bounds every prediction
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


def test_predict_feeds_condition_and_timesteps_to_denoise(monkeypatch):
  model, _ = _known_eps_pair()
  _, z = _inputs(6)
  cond = np.array(model.embed_condition(jnp.asarray(z)))[:, :1, None]

  def fake_denoise(self, x, t, c):
    del self
    return (0.8 * jnp.tanh(x) + t[:, None, None] / 1000 - 0.5
            + c[:, :1, None]).astype(jnp.float32)

  monkeypatch.setattr(dd.DiT, "denoise", fake_denoise)
  key = jax.random.key(6)
  # A fresh function: jit(dd.predict) may hold a trace of the real denoise.
  got = jax.jit(lambda *a: dd.predict(*a))(model, jnp.asarray(z), key)
  want = _diffusers_predict(
      lambda s, t: 0.8 * torch.tanh(s) + t / 1000 - 0.5
      + torch.from_numpy(cond), key, len(z))
  assert np.abs(want).max() == 1.0
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


def test_loss_draws_upstream_randomness(monkeypatch):
  seen = {}
  denoising_loss = dd.denoising_loss

  def capture(model, z, target, t, noise, drop=None):
    seen.update(t=t, noise=noise, drop=drop)
    return denoising_loss(model, z, target, t, noise, drop)

  _, graphdef, params = _pair(0)
  flat = _flat(params)
  flat["final.kernel"] = np.zeros_like(flat["final.kernel"])  # as at init
  flat["final.bias"] = np.zeros_like(flat["final.bias"])
  model = nnx.merge(graphdef, load_into(params, flat))
  batch = 8192
  z = jnp.ones((batch, LATENT))
  target = jnp.zeros((batch, STEPS * ACTION))
  monkeypatch.setattr(dd, "denoising_loss", capture)

  @jax.jit
  def run(model, key):
    return dd.loss(model, z, target, key), dict(seen)  # seen: while tracing

  loss, drawn = run(model, jax.random.key(0))
  t, noise, drop = (np.asarray(drawn[k]) for k in ("t", "noise", "drop"))
  assert t.min() == 0 and t.max() == 999 and abs(t.mean() - 499.5) < 10
  assert noise.shape == (batch, STEPS, ACTION)
  assert abs(noise.std() - 1) < 0.01 and abs(noise.mean()) < 0.01
  assert abs(drop.mean() - 0.1) < 0.01
  # With upstream's zero final layer eps = 0, and the loss is the mean
  # Huber loss of a standard normal: E = 0.5 E[x^2; |x| < 1] + E[|x| - 0.5;
  # |x| > 1] = 0.5 (erf(1/sqrt2) - 2 phi(1)) + 2 (phi(1) - 0.5 P(x > 1)).
  phi = math.exp(-0.5) / math.sqrt(2 * math.pi)
  inside = math.erf(1 / math.sqrt(2))
  expected = 0.5 * (inside - 2 * phi) + 2 * (phi - 0.25 * (1 - inside))
  assert abs(float(loss) - expected) < 0.005
  jax.eval_shape(lambda m: dd.loss(m, z, target, jax.random.key(0),
                                   train=False), model)
  assert seen["drop"] is None  # upstream's eval loss drops no condition


def test_bfloat16_compute_is_close_to_float32():
  _, graphdef, params = _pair(7)
  x, z = _inputs(7)
  t = jnp.asarray([0, 10, 100, 500, 900, 999])
  full = _forward(nnx.merge(graphdef, params), jnp.asarray(x), t,
                  jnp.asarray(z))
  bf16 = nnx.graphdef(nnx.eval_shape(
      lambda: dd.DiT(CONFIG, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))))
  half = _forward(nnx.merge(bf16, params), jnp.asarray(x), t, jnp.asarray(z))
  assert half.dtype == jnp.float32
  err = np.abs(np.asarray(full - half)).max() / np.abs(np.asarray(full)).max()
  assert 0 < err < 0.05


def test_bad_inputs_raise():
  _, graphdef, params = _pair(0)
  model = nnx.merge(graphdef, params)
  x, z = _inputs(0)
  with pytest.raises(LaryError, match=r"latents \[B, 24\]"):
    model(jnp.asarray(x), 0, jnp.zeros((6, 23)))
  with pytest.raises(LaryError, match=r"actions \[B, 5, 7\]"):
    model(jnp.zeros((6, 7, 5)), 0, jnp.asarray(z))
  no_drop = nnx.eval_shape(lambda: dd.make(dd.Config(
      LATENT, ACTION, STEPS, hidden=HIDDEN, depth=1, num_heads=HEADS,
      cond_dropout=0.0), seed=0))
  assert no_drop.uncondition is None
  with pytest.raises(LaryError, match="cond_dropout=0"):
    no_drop(jnp.asarray(x), 0, jnp.asarray(z), jnp.ones(6, bool))
  with pytest.raises(LaryError, match="multiple of num_heads"):
    dd.Config(LATENT, ACTION, STEPS, hidden=60, num_heads=8)
