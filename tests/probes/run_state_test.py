"""A probe run's schedule: epochs sized by a minimum number of updates."""

import types

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
