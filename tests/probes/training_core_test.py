"""The probes' one training loop: a run resumes where it stopped and ends
with the outputs of an uninterrupted run; a folder of another run is
refused; streamed and held predictions are the same rows in the same order.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from lary_jax import mesh as mesh_lib
from lary_jax.errors import LaryError
from lary_jax.probes import in_memory
from lary_jax.probes import training_core as core

STEPS = 2  # a epoch


class _Stop(Exception):
  pass


def _train_epoch(stop_at=None):
  def train_epoch(state, first):
    if first == stop_at:
      raise _Stop()
    steps = jnp.arange(first, first + STEPS, dtype=jnp.float32)
    return {"params": state["params"] + steps.sum(),
            "opt_state": state["opt_state"] + 1}, (steps,)
  return train_epoch


def _record(outs, outputs):
  outputs["train_loss"] = np.asarray(outs[0]).mean(keepdims=True)
  return {"train/loss": float(outputs["train_loss"][0])}, "ok"


def _fit(workdir, stop_at=None, settings=None):
  run = core.Run(str(workdir), "test", "test run", settings or {"seed": 0},
                 {"params": jnp.zeros(3), "opt_state": jnp.int32(0)},
                 epochs=3, per_epoch=STEPS, progress=False)
  history = run.fit(_train_epoch(stop_at),
                    lambda params: {"validation": np.asarray(params) * 2},
                    _record)
  return run, history


def test_a_stopped_run_resumes_to_the_uninterrupted_numbers(tmp_path):
  _, whole = _fit(tmp_path / "whole")
  np.testing.assert_array_equal(whole["validation"][:, 0], [2, 12, 30])
  np.testing.assert_array_equal(whole["train_loss"][:, 0], [0.5, 2.5, 4.5])
  with pytest.raises(_Stop):
    _fit(tmp_path / "stopped", stop_at=2 * STEPS)
  run, resumed = _fit(tmp_path / "stopped")
  assert run.start_epoch == 2
  assert int(run.state["opt_state"]) == 3
  for key in whole:
    np.testing.assert_array_equal(resumed[key], whole[key])


def test_a_folder_of_another_run_is_refused(tmp_path):
  _fit(tmp_path)
  with pytest.raises(LaryError, match=r"holds a run with other settings "
                     r"\(differing: \['seed'\]\)"):
    _fit(tmp_path, settings={"seed": 1})


def test_streamed_and_held_predictions_are_the_same_rows(tmp_path):
  mesh = mesh_lib.make_mesh()
  rows = [{"features": np.full((2,), i, np.float32)} for i in range(11)]
  ids = np.asarray([7, 0, 3, 9, 4])
  split = in_memory.Rows(rows, ids)

  def fn(params, k, x):  # [2, B]: the batch on axis 1
    return jnp.stack([jnp.asarray(x)[:, 0] + params, jnp.full(
        (len(x),), k, jnp.float32)])

  held = in_memory.Store(1.0).hold({"v": (split, ("features",))}, mesh)
  streamed, on_device = (core.Predictor(
      fn, {"v": type("S", (), {"source": split})}, h, eval_batch=2,
      held_batch=2, mesh=mesh, axis=1)(10.0) for h in (None, held))
  np.testing.assert_array_equal(streamed["v"][0], ids + 10)
  np.testing.assert_array_equal(streamed["v"][1], [0, 0, 1, 1, 2])
  np.testing.assert_array_equal(on_device["v"], streamed["v"])
