"""A probe run's schedule: epochs sized by a minimum number of updates."""

import types
from concurrent import futures

import jax.numpy as jnp

from lary_jax.probes import run_state


def test_steps_per_epoch_grow_to_the_minimum_updates():
  # The protocol: one pass over train, ceil(N / B).
  assert run_state.steps_per_epoch(264, 16) == 17
  assert run_state.steps_per_epoch(3, 16) == 1
  # run on LARY-Sim: 1000 updates over 10 epochs, however few examples.
  assert run_state.steps_per_epoch(264, 16, epochs=10, min_updates=1000) == 100
  # A dataset big enough already makes them.
  assert run_state.steps_per_epoch(50_000, 16, epochs=10,
                                   min_updates=1000) == 3125


def test_schedule_and_what_both_numbers_were_trained_on():
  options = types.SimpleNamespace(global_batch=16, epochs=10, min_updates=1000)
  assert run_state.schedule(264, options) == {
      "train_examples": 264, "epochs": 10, "steps_per_epoch": 100,
      "updates": 1000, "global_batch": 16}
  assert run_state.trained_on(0.0) == "all of train, as upstream"
  assert "10% held-out slice" in run_state.trained_on(0.1)


def test_checkpoints_of_two_threads_at_once(tmp_path):
  """`run` trains two probe stages in threads; orbax's per-operation signals
  of two managers saving at once once hung until a 300 s timeout (within
  ~25 saves each, without run_state's lock)."""
  def train(name):
    ckpt = run_state.Checkpoints(str(tmp_path / name))
    for epoch in range(1, 26):
      ckpt.save(epoch, {"w": jnp.full((8,), float(epoch))})
    epochs, state = ckpt.restore({"w": jnp.zeros((8,))})
    ckpt.close()
    return epochs, float(state["w"][0])

  with futures.ThreadPoolExecutor(2) as pool:
    done = [pool.submit(train, n) for n in ("a", "b")]
    assert [f.result(timeout=120) for f in done] == [(25, 25.0)] * 2
