"""Micro-batched probe steps: the numbers of one big batch, sized to memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from lary_jax import mesh as mesh_lib
from lary_jax.errors import LaryError
from lary_jax.probes import attentive_probe
from lary_jax.probes import fitted_steps
from lary_jax.probes import memory_fit
from lary_jax.probes import multi_head as mh
from tests.probes import eight_devices

PROBE = attentive_probe.Config(dim=16, num_classes=4, model_dim=32,
                               num_heads=2, depth=2)
OPTIONS = mh.StepOptions(total_steps=10, compute_dtype="float32")
BATCH, STEPS = 16, 2


def batch(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {"features": rng.standard_normal((BATCH, 2, 4, 16)).astype(
      np.float32), "label": rng.integers(0, 4, BATCH).astype(np.int32)}


def whole_batch() -> int:
  """Rows a device gets of the batch: one micro-batch holds them all."""
  return BATCH // mesh_lib.make_mesh().devices.size


def make_step(micro_batch: int):
  """The five heads' step on BATCH examples, `micro_batch` rows a device
  at a time (0: what fits), with the parameters it starts from."""
  mesh = mesh_lib.make_mesh()
  graphdef, params = mh.init_heads(PROBE, len(OPTIONS.heads), seed=0)
  opt_state = mh.init_optimizer(params, OPTIONS)
  params, opt_state = jax.device_put((params, opt_state),
                                     NamedSharding(mesh, P()))
  example = jax.ShapeDtypeStruct(batch()["features"].shape[1:], np.float32)
  step = fitted_steps.TrainStep(graphdef, OPTIONS, mesh, params, opt_state,
                                BATCH, example, micro_batch=micro_batch)
  return step, params, opt_state


def train(micro_batch: int) -> dict[str, np.ndarray]:
  """STEPS steps of `make_step(micro_batch)`: losses, right answers,
  finiteness and the parameters at the end."""
  step, params, opt_state = make_step(micro_batch)
  x = batch()
  losses = []
  for s in range(STEPS):
    params, opt_state, loss, correct, finite = step(params, opt_state, s, x)
    losses.append(np.asarray(loss))
  flat = {"/".join(map(str, path)): np.asarray(leaf) for path, leaf in
          jax.tree_util.tree_leaves_with_path(params)}
  return {"micro_steps": step.micro_steps, "loss": np.stack(losses),
          "correct": np.asarray(correct), "finite": np.asarray(finite),
          **flat}


def assert_same_training(got: dict, want: dict) -> None:
  """Losses to 1e-6; parameters to 1e-6 on 99.9% of all coordinates and to
  the largest learning rate everywhere.

  After AdamW's first steps an update is lr * g / (|g| + eps): fp32
  rounding of a gradient that is itself ~0 (the key bias, to which softmax
  is blind) can move that coordinate by up to lr, whatever the batching.
  """
  np.testing.assert_allclose(got["loss"], want["loss"], atol=1e-6, rtol=0)
  np.testing.assert_array_equal(got["correct"], want["correct"])
  assert got["finite"].all() and want["finite"].all()
  lr = max(h[0] for h in OPTIONS.heads)
  diffs = []
  for key, value in want.items():
    if key in ("loss", "correct", "finite", "micro_steps"):
      continue
    diff = np.abs(got[key] - value)
    assert diff.max() <= lr, key
    diffs.append(diff.ravel())
  diffs = np.concatenate(diffs)
  assert (diffs <= 1e-6).mean() >= 0.999, np.sort(diffs)[-10:]


def test_micro_batches_give_the_big_batch_numbers():
  whole = train(whole_batch())
  assert whole["micro_steps"] == 1
  for micro in (4, 1):
    got = train(micro)
    assert got["micro_steps"] == BATCH // micro
    assert_same_training(got, whole)


def test_summed_gradients_equal_the_big_batch_gradients():
  # The core of accumulation, without AdamW: four micro-batches' sums
  # against one call on the whole batch, to fp32 rounding (2e-6 of the
  # largest gradient of each leaf, ~16 ulps: the sums add in another order;
  # the input projection's bias adds 128 tokens' terms that mostly cancel,
  # and reached 1.03e-6 on an AVX2 x86 CPU).
  graphdef, params = mh.init_heads(PROBE, 2, seed=1)
  options = mh.StepOptions(heads=mh.HEADS[:2], compute_dtype="float32")
  grad = mh.make_grad_step(graphdef, options, BATCH)
  x = batch(1)
  whole = grad(params, mh.zero_sums(params), x["features"], x["label"])
  sums = mh.zero_sums(params)
  for i in range(0, BATCH, 4):
    sums = grad(params, sums, x["features"][i:i + 4], x["label"][i:i + 4])
  np.testing.assert_allclose(sums["loss"], whole["loss"], atol=1e-6, rtol=0)
  np.testing.assert_array_equal(sums["correct"], whole["correct"])
  for g, w in zip(jax.tree.leaves(sums["grads"]),
                  jax.tree.leaves(whole["grads"])):
    g, w = np.asarray(g), np.asarray(w)
    np.testing.assert_allclose(g, w, rtol=0,
                               atol=2e-6 * max(np.abs(w).max(), 1e-30))
  # ... and the big batch's mean-loss gradient is what the fused step uses.
  want = jax.grad(mh.loss_and_logits, argnums=1, has_aux=True)(
      graphdef, jax.tree.map(lambda a: a[0], params),
      jnp.asarray(x["features"]), jnp.asarray(x["label"]), 0.1)[0]
  for g, w in zip(jax.tree.leaves(sums["grads"]), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g)[0], np.asarray(w), rtol=0,
                               atol=1e-6 * max(np.abs(w).max(), 1e-30))


def test_micro_batches_on_eight_devices_match_one_device(tmp_path):
  info = eight_devices.run_worker("tests.probes.micro_batch_worker",
                                  tmp_path, timeout=600)
  assert info == {"devices": 8, "micro_steps": {"whole": 1, "micro": 2}}
  one_device = train(whole_batch())
  for name in ("whole", "micro"):
    got = dict(np.load(tmp_path / f"{name}.npz"))
    assert_same_training(got, one_device)


def test_the_step_takes_the_largest_micro_batch_that_fits(monkeypatch):
  # A budget between what micro-batches of 2 and of 4 need: the step is
  # cut into micro-batches of 2, and trains like the whole batch.
  need = {m: make_step(m)[0].need for m in (2, 4)}
  assert need[2] < need[4]
  whole = train(whole_batch())
  monkeypatch.setattr(memory_fit, "device_budget",
                      lambda device, reserve=0: (need[2] + need[4]) // 2)
  got = train(0)
  assert got["micro_steps"] == BATCH // 2
  assert_same_training(got, whole)
  # A micro-batch set by hand is taken as given, fitting or not.
  assert make_step(BATCH)[0].micro_steps == 1


def test_fit_compiles_few_candidates_and_takes_the_largest_that_fits():
  w = jnp.ones((256, 256), jnp.float32)
  compiled_sizes = []

  def compile_at(size):
    compiled_sizes.append(size)
    f = jax.jit(lambda x: jnp.tanh(x @ w) @ w)
    return f.lower(jax.ShapeDtypeStruct((size, 256), jnp.float32)
                   ).compile(), 0

  need = memory_fit.compiled_bytes(compile_at(16)[0])
  compiled_sizes.clear()
  sizes = memory_fit.divisors(64)  # 64, 32, 16, 8, 4, 2, 1
  size, compiled, planned = memory_fit.fit(compile_at, sizes, need, "f", "")
  assert (size, planned) == (16, need)
  assert memory_fit.compiled_bytes(compiled) == need
  assert compiled_sizes == [64, 1, 16]  # whole, smallest, the line's guess
  compiled_sizes.clear()
  assert memory_fit.fit(compile_at, sizes, 10**12, "f", "")[0] == 64
  assert compiled_sizes == [64]
  with pytest.raises(LaryError, match=r"f needs .* GiB per device even at 1 "
                     r"example\(s\) at a time.*; use a smaller thing"):
    memory_fit.fit(compile_at, sizes, 100, "f", "use a smaller thing")


def test_micro_slices_keep_each_devices_rows():
  rows = np.arange(12)
  parts = memory_fit.micro_slices({"x": rows, "y": -rows}, 2, 3)
  # Device 0 holds rows 0-5, device 1 rows 6-11: micro-batch i takes the
  # i-th three of each.
  np.testing.assert_array_equal(parts[0]["x"], [0, 1, 2, 6, 7, 8])
  np.testing.assert_array_equal(parts[1]["x"], [3, 4, 5, 9, 10, 11])
  np.testing.assert_array_equal(parts[1]["y"], -parts[1]["x"])
  with pytest.raises(LaryError, match="micro-batches of 4"):
    memory_fit.micro_slices({"x": rows}, 2, 4)


def test_micro_batch_setting_must_divide_a_devices_share():
  mesh = mesh_lib.make_mesh()
  with pytest.raises(LaryError, match=r"classify.micro_batch=5 must divide "
                     r"the 16 examples of classify.global_batch=16"):
    memory_fit.check_batches(mesh, "classify", 16, 16, 5)


def test_cpu_micro_batches_stop_at_enough_tokens():
  # 64 tokens an example: a micro-batch of 64 examples is 4096 tokens,
  # enough for full-speed matmuls on CPU, so a device's 128 examples run in
  # two micro-batches even where the whole batch fits.
  mesh = mesh_lib.make_mesh()
  graphdef, params = mh.init_heads(PROBE, len(OPTIONS.heads), seed=0)
  opt_state = mh.init_optimizer(params, OPTIONS)
  example = jax.ShapeDtypeStruct((4, 16, 16), np.float16)
  rows = 128 * mesh.devices.size
  step = fitted_steps.TrainStep(graphdef, OPTIONS, mesh, params, opt_state,
                                rows, example)
  assert (step.micro, step.micro_steps) == (64, 2)
  assert fitted_steps.CPU_MICRO_TOKENS == 64 * 64
  # Pooled to 8 tokens an example: all 128 in one.
  step = fitted_steps.TrainStep(graphdef, OPTIONS, mesh, params, opt_state,
                                rows, example, tokens=8)
  assert step.micro_steps == 1
  # Set by hand, any divisor goes.
  step = fitted_steps.TrainStep(graphdef, OPTIONS, mesh, params, opt_state,
                                rows, example, micro_batch=128)
  assert step.micro_steps == 1
