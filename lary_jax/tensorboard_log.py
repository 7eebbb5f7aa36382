"""Training metrics as TensorBoard event files, beside a run's JSON.

    tensorboard --logdir lary_workdir

shows every probe seed (`classify/.../seed_0`, `regress/.../seed_0`) and
every LAM (`lam/NAME`) as a run. The files are written with tensorboardX:
pure Python (protobuf and numpy, which TFDS already brings), no TensorFlow,
where `clu.metric_writers` would need TensorFlow (or torch) to write events.

Only process 0 writes. A resumed run appends a new event file and logs the
epochs it trains; an epoch interrupted after its scalars were written and
trained again logs the same numbers at the same step.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np


class ScalarLog:
  """Scalars by step into event files in `logdir` (process 0; else no-op)."""

  def __init__(self, logdir: str):
    self._logdir = logdir
    self._writer = None

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Logs `scalars` (tag -> number) at `step`; non-finite ones too."""
    if jax.process_index() != 0:
      return
    if self._writer is None:  # no file for a run with nothing left to do
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(self._logdir, flush_secs=30)
    for tag, value in scalars.items():
      self._writer.add_scalar(tag, float(np.asarray(value)), global_step=step)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self) -> ScalarLog:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
