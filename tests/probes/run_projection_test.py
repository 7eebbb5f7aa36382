"""The one line that says how long a training run will take."""

from lary_jax.probes import run_projection


class Clock:
  """Returns the given times one after another."""

  def __init__(self, *times):
    self.times = list(times)

  def __call__(self):
    return self.times.pop(0)


def test_short_first_unit_is_warm_up_then_two_units_are_measured():
  # Start at 0; units end at 1 s (warm-up, left out), 3 s and 5 s: 2 s a
  # micro-batch, 4 of them a step, 100 steps.
  p = run_projection.Projection("classify seed_0", 100, 4,
                                clock=Clock(0.0, 1.0, 3.0, 5.0))
  assert p.unit_done() is None
  assert p.unit_done() is None
  assert p.unit_done() == (
      "classify seed_0: 100 training steps at 8.0 s a step (4 "
      "micro-batches) -> about 13.3 min of training on this machine, "
      "evaluation not included")
  assert p.done and p.unit_done() is None


def test_a_long_first_unit_is_enough():
  p = run_projection.Projection("regress mlp", 1200, clock=Clock(0.0, 600.0))
  assert p.unit_done() == (
      "regress mlp: 1200 training steps at 600.0 s a step -> about 8.3 "
      "days of training on this machine, evaluation not included")


def test_epochs_as_units_leave_out_what_runs_between_them():
  # 10 steps an epoch, 5 epochs. Epoch 1 runs 0-1 s (warm-up), evaluation
  # until 9 s, epoch 2 from 9 s to 12 s, epoch 3 from 20 s to 23 s.
  p = run_projection.Projection("classify seed_0", 50, 1 / 10,
                                clock=Clock(0.0, 0.0, 1.0, 9.0, 12.0, 20.0,
                                            23.0))
  p.start()
  assert p.unit_done() is None
  p.start()
  assert p.unit_done() is None
  p.start()
  assert p.unit_done() == (
      "classify seed_0: 50 training steps at 0.3 s a step -> about 15 s "
      "of training on this machine, evaluation not included")


def test_durations():
  assert [run_projection.duration(s) for s in (3, 252, 27000, 1e6)] == [
      "3 s", "4.2 min", "7.5 h", "11.6 days"]
