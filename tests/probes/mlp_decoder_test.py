"""The MLP action decoder against upstream's, re-created in PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

from lary_jax.probes import mlp_decoder
from lary_jax.probes import train_regressor as tr
from tests.probes import torch_mlp
from tests.probes import torch_probe

IN, OUT, HIDDEN = 96, 35, 64


def _pair(seed=0):
  torch.manual_seed(seed)
  theirs = torch_mlp.TorchMlp(IN, OUT, HIDDEN)
  graphdef, state = nnx.split(mlp_decoder.make(
      mlp_decoder.Config(IN, OUT, hidden=HIDDEN), seed=seed))
  return theirs, graphdef, torch_probe.load_into(
      state, torch_mlp.jax_params(theirs))


def _flat(state):
  return {".".join(map(str, p)): np.asarray(v[...])
          for p, v in nnx.to_flat_state(state)}


def test_outputs_loss_grads_and_adamw_step_match_pytorch():
  theirs, graphdef, params = _pair()
  rng = np.random.default_rng(0)
  x = rng.standard_normal((8, IN)).astype(np.float32) * 3
  y = rng.standard_normal((8, OUT)).astype(np.float32) * 2
  want = theirs(torch.from_numpy(x))
  got = nnx.merge(graphdef, params)(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), want.detach().numpy(),
                             atol=1e-5, rtol=0)
  loss = torch.nn.functional.huber_loss(want, torch.from_numpy(y), delta=1.0)
  loss.backward()
  ours_loss, grads = jax.value_and_grad(
      lambda p: mlp_decoder.loss(nnx.merge(graphdef, p), jnp.asarray(x),
                                 jnp.asarray(y), None))(params)
  assert abs(float(ours_loss) - loss.item()) < 1e-5
  assert loss.item() > 0.5  # a real error, partly in Huber's linear part
  want_grads = torch_mlp.jax_params(theirs, lambda p: p.grad.numpy().copy())
  for key, g in _flat(grads).items():
    np.testing.assert_allclose(g, want_grads[key], atol=1e-5, rtol=0,
                               err_msg=key)


def test_adamw_with_warmup_matches_upstreams_schedule():
  """Three updates from fixed gradients: AdamW(1e-4, wd 1e-4) under
  upstream's LambdaLR constant-with-warm-up (2 warm-up steps), which steps
  after each update, so the learning rates are 0, 0.5e-4, 1e-4."""
  theirs, graphdef, params = _pair(1)
  grads = {k: np.random.default_rng(len(k)).standard_normal(v.shape).astype(
      np.float32) * 1e-3 for k, v in torch_mlp.jax_params(theirs).items()}
  opt = torch.optim.AdamW(theirs.parameters(), lr=1e-4, weight_decay=1e-4)
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda s: min(1.0, s / 2))
  tx = tr._optimizer(tr.Options(), warmup_steps=2)  # pylint: disable=protected-access
  state = tx.init(params)
  g = torch_probe.load_into(params, grads)
  named = dict(zip(torch_mlp.jax_params(theirs), [None] * len(grads)))
  by_key = {}
  for key, p in zip(named, _torch_params_in_key_order(theirs, named)):
    by_key[key] = p
  for _ in range(3):
    for key, p in by_key.items():
      p.grad = torch.from_numpy(
          grads[key].T.copy() if key.endswith("kernel") else grads[key])
    opt.step()
    sched.step()
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  got, want = _flat(params), torch_mlp.jax_params(theirs)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], atol=1e-6, rtol=0,
                               err_msg=key)
  assert tr.lr_factor(jnp.arange(4), 2).tolist() == [0.0, 0.5, 1.0, 1.0]


def _torch_params_in_key_order(mlp, keys):
  """The torch tensor behind each dotted key of `torch_mlp.jax_params`."""
  out = []
  for key in keys:
    *path, leaf = key.split(".")
    module = mlp
    for part in path:
      module = module[int(part)] if part.isdigit() else getattr(
          module, {"linear": "1", "norm": "0"}.get(part, part)
          if isinstance(module, torch.nn.Sequential) else part)
    if isinstance(module, torch.nn.Sequential):
      raise AssertionError(key)
    out.append(module.weight if leaf in ("kernel", "scale") else module.bias)
  return out


def test_init_is_pytorchs_default_linear_init():
  ours = _flat(nnx.state(mlp_decoder.make(mlp_decoder.Config(400, 35, 300),
                                          seed=0)))
  fan_in = {"fc1": 400, "blocks": 300, "fc2": 300}
  for key, got in ours.items():
    if "norm" in key:  # LayerNorm: ones and zeros, as torch
      np.testing.assert_array_equal(got, float(key.endswith("scale")))
      continue
    bound = 1 / np.sqrt(fan_in[key.split(".")[0]])
    # uniform(-bound, bound) for weight and bias alike
    assert np.abs(got).max() <= bound and np.abs(got).max() > 0.9 * bound
    if got.size >= 10_000:
      assert abs(got.std() / (bound / np.sqrt(3)) - 1) < 0.02, key
      assert abs(got.mean()) < 0.02 * bound, key
