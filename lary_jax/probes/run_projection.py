"""How long a training run will take, said once from its first steps.

A protocol-size probe on encoder tokens runs for days on a 2-core CPU; the
user should hear that in minutes, not find out by waiting. `Projection`
times the first units of work (a step, or a micro-batch of one), then
gives one line: the steps, the seconds a step, the projected wall time.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jax

_log = logging.getLogger(__name__)

# The first unit carries one-off costs (page faults, caches, the input
# pipeline starting); it is left out of the measurement unless it is long
# enough for them not to matter.
_WARMUP_S = 5.0
# Measure at least this many units or seconds, whichever comes first.
_MIN_UNITS = 2
_MIN_S = 5.0


def duration(seconds: float) -> str:
  """3 s, 4.2 min, 7.5 h, 3.1 days."""
  if seconds < 60:
    return f"{seconds:.0f} s"
  if seconds < 3600:
    return f"{seconds / 60:.1f} min"
  if seconds < 48 * 3600:
    return f"{seconds / 3600:.1f} h"
  return f"{seconds / 86400:.1f} days"


class Projection:
  """Times units of work and says once how long the rest will take.

  Call `unit_done()` when a unit has finished (after blocking on its
  result); it returns the line once, then None. A unit is a step, a
  micro-batch of one (`units_per_step` > 1) or an epoch of steps (< 1);
  `start()` leaves out what ran since the last unit (e.g. evaluation).
  """

  def __init__(self, what: str, steps_left: int,
               units_per_step: float = 1, clock=time.perf_counter):
    self.what = what
    self.steps_left = steps_left
    self.units_per_step = units_per_step
    self._clock = clock
    self._start = clock()
    self._units = 0
    self._measured = 0.0
    self._seen = 0
    self.done = steps_left == 0

  def start(self) -> None:
    """The next unit starts now."""
    self._start = self._clock()

  def finished(self, pending: Any, show: bool | None, bar: Any) -> None:
    """A unit whose result is `pending` was dispatched: until the line has
    been said, waits for it (the clock needs finished work), records it
    and says the line once it is known (`say`)."""
    if self.done:
      return
    jax.block_until_ready(pending)
    line = self.unit_done()
    if line:
      say(show, bar, line)

  def unit_done(self) -> str | None:
    """Records a finished unit; the projection line once it is known."""
    if self.done:
      return None
    now = self._clock()
    elapsed, self._start = now - self._start, now
    self._seen += 1
    if self._seen == 1 and elapsed < _WARMUP_S and (
        self.steps_left * self.units_per_step > 1):
      return None
    self._units += 1
    self._measured += elapsed
    left = self.steps_left * self.units_per_step - self._seen
    if left > 0 and self._units < _MIN_UNITS and self._measured < _MIN_S:
      return None
    self.done = True
    per_step = self._measured / self._units * self.units_per_step
    micro = (f" ({self.units_per_step} micro-batches)"
             if self.units_per_step > 1 else "")
    return (f"{self.what}: {self.steps_left} training steps at "
            f"{per_step:.1f} s a step{micro} -> about "
            f"{duration(per_step * self.steps_left)} of training on this "
            "machine, evaluation not included")


def say(show: bool | None, bar: Any, line: str) -> None:
  """Logs a line, and prints it beside the tqdm `bar` in process 0 unless
  the run's progress display is off (`show` False)."""
  if jax.process_index() == 0:
    _log.info("%s", line)
    if show is not False:
      bar.write(line)
