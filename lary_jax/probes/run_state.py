"""What a probe run keeps on disk to survive interruption.

`<workdir>/evals/epoch_EEE.npz` holds each finished epoch's predictions
(written atomically), `<workdir>/checkpoints/` the orbax checkpoint of the
parameters and optimizer state after the last finished epoch. A restarted
run restores the checkpoint and goes on from the next epoch; because batch
order and random draws are pure functions of (seed, step), it ends with the
numbers of an uninterrupted run.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from lary_jax import atomic_io as fs
from lary_jax.errors import LaryError
from lary_jax.run_claim import SETTINGS  # re-exported
from lary_jax.run_claim import claim  # re-exported
from lary_jax.run_claim import digest_file  # re-exported

# Test hook: the process SIGKILLs itself once this many epochs are saved.
KILL_AFTER_EPOCHS_ENV = "LARY_PROBE_KILL_AFTER_EPOCHS"


def epoch_file(workdir: str, epoch: int) -> str:
  return os.path.join(workdir, "evals", f"epoch_{epoch:03d}.npz")


def write_epoch(workdir: str, epoch: int,
                arrays: Mapping[str, np.ndarray]) -> None:
  """Writes epoch `epoch`'s (0-based) predictions atomically."""
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  path = epoch_file(workdir, epoch)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fs.write_atomic(path, buf.getvalue())


def read_history(workdir: str, epochs: int) -> dict[str, np.ndarray]:
  """Every epoch's predictions stacked: name -> [epochs, ...]."""
  per_epoch = []
  for e in range(epochs):
    path = epoch_file(workdir, e)
    if not os.path.exists(path):
      raise LaryError(f"{path} is missing; rerun the same command to "
                      "finish training")
    with np.load(path, allow_pickle=False) as z:
      per_epoch.append({k: z[k] for k in z.files})
  return {k: np.stack([p[k] for p in per_epoch]) for k in per_epoch[0]}


def steps_per_epoch(num_examples: int, global_batch: int, *,
                    epochs: int = 1, min_updates: int = 0) -> int:
  """Training steps of one epoch: ceil(N / B), at least one, and at least
  ceil(min_updates / epochs).

  An epoch is a count of steps on an endless stream of batches, so a small
  dataset can be given enough updates (`min_updates`, LARY-Sim's `run`)
  without more epochs, i.e. without more evaluations and more candidates
  for the selection to choose among.
  """
  steps = max(1, math.ceil(num_examples / global_batch))
  return max(steps, math.ceil(min_updates / max(epochs, 1)))


def schedule(train_examples: int, options: Any) -> dict[str, int]:
  """How many updates the probes made: epochs x steps of one epoch."""
  per_epoch = steps_per_epoch(train_examples, options.global_batch,
                                 epochs=options.epochs,
                                 min_updates=options.min_updates)
  return {"train_examples": int(train_examples), "epochs": options.epochs,
          "steps_per_epoch": per_epoch, "updates": per_epoch * options.epochs,
          "global_batch": options.global_batch}


def trained_on(holdout: float) -> str:
  """What both numbers were trained on (upstream: all of train)."""
  if holdout <= 0:
    return "all of train, as upstream"
  return (f"train minus the {100 * holdout:g}% held-out slice, for both "
          "numbers (upstream trains on all of train)")
