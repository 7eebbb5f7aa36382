"""The attentive probe against upstream's, re-created in PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from lary_jax.errors import LaryError
from lary_jax.probes import attentive_probe as ap
from lary_jax.probes import multi_head as mh
from tests.probes import torch_probe

DIM, CLASSES, WIDTH, HEADS = 24, 7, 64, 4


def _pair(seed: int, depth: int = 4):
  torch.manual_seed(seed)
  theirs = torch_probe.TorchProbe(DIM, CLASSES, WIDTH, HEADS, depth=depth)
  config = ap.Config(dim=DIM, num_classes=CLASSES, model_dim=WIDTH,
                     num_heads=HEADS, depth=depth)
  graphdef, state = nnx.split(ap.AttentiveProbe(config, rngs=nnx.Rngs(0)))
  return theirs, graphdef, torch_probe.load_into(
      state, torch_probe.jax_params(theirs))


def _unit_scale(probe: torch.nn.Module) -> None:
  # At upstream's init the blocks barely move the tokens; larger weights
  # make a wrong head split, scale or residual show in the logits.
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, p in probe.named_parameters():
      if p.dim() >= 2 and "embed" not in name and "query" not in name:
        p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1]**0.5)


@pytest.mark.parametrize("shape", [(5, 3, 4, DIM), (5, 6, DIM)])
def test_logits_match_pytorch(shape):
  theirs, graphdef, params = _pair(0)
  _unit_scale(theirs)
  params = torch_probe.load_into(params, torch_probe.jax_params(theirs))
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  want = theirs(torch.from_numpy(x)).detach().numpy()
  got = np.asarray(nnx.merge(graphdef, params)(jnp.asarray(x)))
  assert got.shape == (shape[0], CLASSES)
  assert np.abs(want).max() > 0.5  # the logits are not all ~0
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def _flat(state) -> dict[str, np.ndarray]:
  return {".".join(map(str, p)): np.asarray(v[...])
          for p, v in nnx.to_flat_state(state)}


def test_loss_grads_and_one_adamw_step_match_pytorch():
  heads = ((5e-3, 0.01), (3e-4, 0.8))
  total = 10
  rng = np.random.default_rng(1)
  x = rng.standard_normal((6, 3, 4, DIM)).astype(np.float32)
  y = rng.integers(0, CLASSES, 6)
  scale = 0.5 * (1 + np.cos(np.pi * 1 / total))  # update 0 of 10
  options = mh.StepOptions(heads=heads, total_steps=total,
                           compute_dtype="float32", head_batch=1)
  states, want_loss, want_after, grads, own_after = [], [], [], [], []
  for (lr, wd), seed in zip(heads, range(len(heads))):
    theirs, graphdef, params = _pair(seed)
    states.append(params)
    opt = torch.optim.AdamW(theirs.parameters(), lr=lr * scale,
                            betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    loss = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(
        theirs(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    grads.append(torch_probe.jax_params(
        theirs, lambda p: p.grad.detach().numpy()))
    opt.step()
    want_loss.append(loss.item())
    want_after.append(torch_probe.jax_params(theirs))

    # Gradients of one head, then AdamW from torch's own gradients: the
    # update divides by sqrt(v) + 1e-8, so on its own it must agree tightly.
    ours = jax.grad(mh.loss_and_logits, argnums=1, has_aux=True)(
        graphdef, params, jnp.asarray(x), jnp.asarray(y), 0.1)[0]
    for key, g in _flat(ours).items():
      np.testing.assert_allclose(g, grads[-1][key], atol=1e-5, rtol=0,
                                 err_msg=key)
    tx = mh._adamw(options, lr * scale, wd)  # pylint: disable=protected-access
    torch_grads = torch_probe.load_into(params, grads[-1])
    updates, _ = tx.update(torch_grads, tx.init(params), params)
    stepped = _flat(jax.tree.map(lambda p, u: p + u, params, updates))
    for key, value in stepped.items():
      np.testing.assert_allclose(value, want_after[-1][key], atol=1e-6,
                                 rtol=0, err_msg=key)
    updates, _ = tx.update(ours, tx.init(params), params)
    own_after.append(_flat(jax.tree.map(lambda p, u: p + u, params, updates)))

  # The jitted multi-head step: torch's losses, and per head exactly the
  # update of that head's gradients. (Against torch's own step a few
  # coordinates whose gradient is ~1e-8 differ: Adam's g / (|g| + eps) turns
  # float32 rounding of g into up to ~lr of update there; jit's own
  # rounding does the same. The gradients and
  # the optimizer agree separately above.)
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
  step = mh.make_train_step(graphdef, options)
  new, _, loss, correct, finite = step(
      stacked, mh.init_optimizer(stacked, options), jnp.int32(0),
      jnp.asarray(x), jnp.asarray(y))
  np.testing.assert_allclose(np.asarray(loss), want_loss, atol=1e-5, rtol=0)
  assert np.asarray(finite).all() and np.asarray(correct).shape == (2,)
  for h, (lr, _) in enumerate(heads):
    got = _flat(jax.tree.map(lambda a, h=h: a[h], new))
    for key, value in got.items():
      for want, tol in ((own_after[h][key], 1e-6), (want_after[h][key], 1e-5)):
        diff = np.abs(value - want)
        # Coordinates whose true gradient is ~0 (the key bias, to which
        # softmax is blind) get rounding-sized updates of up to ~lr; every
        # other coordinate must agree to `tol`.
        g = np.abs(grads[h][key])
        live = g > 1e-6 * max(g.max(), 1e-30)
        assert (diff[live] <= tol).mean() > 0.999, key
        assert diff.max() <= lr, key


def test_init_matches_upstream_statistics():
  config = ap.Config(dim=96, num_classes=50, model_dim=256, num_heads=8)
  model = ap.AttentiveProbe(config, rngs=nnx.Rngs(3))
  torch.manual_seed(3)
  theirs = torch_probe.jax_params(torch_probe.TorchProbe(96, 50, 256, 8))
  ours = {".".join(map(str, p)): np.asarray(v[...])
          for p, v in nnx.to_flat_state(nnx.state(model))}
  assert set(ours) == set(theirs)
  for key, want in theirs.items():
    got = ours[key]
    assert got.shape == want.shape, key
    if want.std() == 0:  # zero biases, unit LayerNorm scales
      np.testing.assert_array_equal(got, want, err_msg=key)
    else:
      assert abs(got.std() / want.std() - 1) < 0.1, key
      assert abs(np.abs(got).max() / np.abs(want).max() - 1) < 0.35, key


def test_pool_tokens_averages_cells():
  x = jnp.arange(2 * 1 * 16 * 3, dtype=jnp.float32).reshape(2, 1, 16, 3)
  out = ap.pool_tokens(x, 2)
  grid = np.asarray(x).reshape(2, 1, 4, 4, 3)
  want = grid.reshape(2, 1, 2, 2, 2, 2, 3).mean((3, 5)).reshape(2, 1, 4, 3)
  np.testing.assert_allclose(np.asarray(out), want)
  # Uneven cells overlap like AdaptiveAvgPool2d: side 5 -> 2 takes rows
  # [0, 3) and [2, 5).
  y = jnp.arange(25, dtype=jnp.float32).reshape(1, 1, 25, 1)
  got = np.asarray(ap.pool_tokens(y, 2))[0, 0, :, 0]
  g = np.arange(25.0).reshape(5, 5)
  np.testing.assert_allclose(got, [g[:3, :3].mean(), g[:3, 2:].mean(),
                                   g[2:, :3].mean(), g[2:, 2:].mean()])
  with pytest.raises(LaryError, match="square token grid"):
    ap.pool_tokens(jnp.zeros((1, 1, 15, 2)), 2)


def test_bfloat16_compute_is_close_to_float32():
  theirs, graphdef, params = _pair(2)
  _unit_scale(theirs)
  params = torch_probe.load_into(params, torch_probe.jax_params(theirs))
  config = ap.Config(dim=DIM, num_classes=CLASSES, model_dim=WIDTH,
                     num_heads=HEADS)
  bf16 = mh.graphdef_for(config, jnp.bfloat16)
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 2, 4, DIM)),
                  jnp.float32)
  full = np.asarray(nnx.merge(graphdef, params)(x))
  half = np.asarray(nnx.merge(bf16, params)(x))
  assert half.dtype == np.float32
  err = np.abs(full - half).max() / np.abs(full).max()
  assert 0 < err < 0.05


def test_jitted_init_gives_the_eager_parameters_in_one_compilation():
  # Head h of `init_heads` is the probe built op by op from
  # fold_in(key(seed), h): the same numbers to the bit, every leaf. Depth 4
  # has blocks whose residual outputs start divided by sqrt(2) and sqrt(6),
  # the leaves a jitted draw once rounded differently.
  config = ap.Config(dim=96, num_classes=50, model_dim=128, num_heads=4)
  compiles = []

  def count(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    _, stacked = mh.init_heads(config, 3, seed=7)
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  assert len(compiles) == 1
  key = jax.random.key(7)
  for h in range(3):
    eager = _flat(nnx.state(ap.AttentiveProbe(
        config, rngs=nnx.Rngs(params=jax.random.fold_in(key, h)))))
    jitted = _flat(jax.tree.map(lambda a, h=h: a[h], stacked))
    assert set(jitted) == set(eager)
    for name, value in eager.items():
      np.testing.assert_array_equal(jitted[name], value, err_msg=name)
