"""The orbax checkpoint of a resumable run, shared by every training loop.

  Checkpoints(workdir) -> restore(fresh state) -> (done, state)
  -> save(done, state) after each unit of progress (a probe's epoch,
     `train_lam`'s `ckpt_every` steps): on disk before it returns, only
     the latest kept -> the test kill hook

`done` counts what the run has finished (epochs or steps). A run that reads
its data through a grain iterator checkpoints the iterator's position
beside the state, so a restart reads on from where the checkpoint was made.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import grain
import orbax.checkpoint as ocp

from lary_jax import workdir_layout as layout

# Orbax coordinates a save through process-wide signals numbered by
# operation: two managers saving at once from two threads (`run`'s probe
# stages side by side) wait on each other's signals until they time out.
# Every manager's work is done one at a time (saves are small and waited for).
_orbax_lock = threading.RLock()


class Checkpoints:
  """The orbax checkpoint of a run in `workdir/checkpoints`, numbered by
  progress.

  Args:
    workdir: the run's folder.
    kill_env: test hook: the process SIGKILLs itself once the checkpoint
      numbered by this environment variable's value is on disk.
    iterator: a grain iterator whose position is saved and restored beside
      the state (items "state" and "data"); None: the state alone.
  """

  def __init__(self, workdir: str, *, kill_env: str,
               iterator: Any | None = None):
    self._kill_env, self._iterator = kill_env, iterator
    names = None if iterator is None else ("state", "data")
    with _orbax_lock:
      self._manager = ocp.CheckpointManager(
          os.path.abspath(layout.checkpoints_dir(workdir)),
          item_names=names,
          options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))

  def restore(self, state: Any) -> tuple[int, Any]:
    """(progress, state) from the latest checkpoint, or (0, state).

    `state` is the freshly initialised pytree; restored arrays take its
    shapes, dtypes and shardings. The iterator, if any, is moved to its
    saved position in place.
    """
    with _orbax_lock:
      done = self._manager.latest_step() or 0
      if not done:
        return 0, state
      if self._iterator is None:
        return done, self._manager.restore(
            done, args=ocp.args.StandardRestore(state))
      restored = self._manager.restore(done, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(state),
          data=grain.checkpoint.CheckpointRestore(self._iterator)))
      return done, restored["state"]

  def save(self, done: int, state: Any) -> None:
    """Saves after `done` units of progress and waits until it is on disk."""
    if self._iterator is None:
      args = ocp.args.StandardSave(state)
    else:
      args = ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=grain.checkpoint.CheckpointSave(self._iterator))
    with _orbax_lock:
      self._manager.save(done, args=args)
      self._manager.wait_until_finished()
    if os.environ.get(self._kill_env) == str(done):
      os.kill(os.getpid(), signal.SIGKILL)

  def close(self) -> None:
    with _orbax_lock:
      self._manager.close()
