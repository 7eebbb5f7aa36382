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

import os
import time
from collections.abc import Mapping

import jax
import numpy as np


class ScalarLog:
  """Scalars by step into an event file in `logdir` (process 0; else no-op).

  Each `write` is on disk when it returns (tensorboardX's SummaryWriter
  queues events for a thread, and a killed run would lose the last ones).
  """

  def __init__(self, logdir: str):
    self._logdir = logdir
    self._writer = None

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Logs `scalars` (tag -> number) at `step`; non-finite ones too."""
    if jax.process_index() != 0:
      return
    # Imported here: tensorboardX's package imports torch where it is
    # installed, seconds that a command which logs nothing should not pay.
    from tensorboardX import event_file_writer  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    if self._writer is None:  # no file for a run with nothing left to do
      os.makedirs(self._logdir, exist_ok=True)
      # The pid keeps a run resumed within the same second from reusing
      # (and truncating) the killed run's file name.
      self._writer = event_file_writer.EventsWriter(
          os.path.join(self._logdir, "events"), f".{os.getpid()}")
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=tag,
                                  simple_value=float(np.asarray(value)))
        for tag, value in scalars.items()])
    self._writer.write_event(event_pb2.Event(wall_time=time.time(),
                                             step=step, summary=summary))
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self) -> ScalarLog:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
