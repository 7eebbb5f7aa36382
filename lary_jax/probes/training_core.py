"""The one training loop of the probes (classifier heads, action decoders).

  claim the run folder (`run_claim.claim`) -> restore the last checkpoint
  -> each epoch left: train it (a held epoch, one compiled scan over the
     device-held split; or streamed steps from the input pipeline)
     -> predict every evaluated split once -> the epoch's outputs written
        atomically -> orbax checkpoint (and the test kill hook)
  -> every epoch's outputs, stacked

A probe brings what differs: its step functions, how it predicts a batch
and what an epoch's outputs mean (`Run.fit`'s `record`). Resuming gives the
numbers of an uninterrupted run because batches and random draws are pure
functions of (seed, step).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from lary_jax import progress as progress_lib
from lary_jax import run_checkpoints
from lary_jax import run_claim
from lary_jax import tensorboard_log
from lary_jax.data import pipeline as pl
from lary_jax.errors import LaryError
from lary_jax.probes import in_memory
from lary_jax.probes import memory_fit
from lary_jax.probes import run_projection
from lary_jax.probes import run_state

_log = logging.getLogger(__name__)
EVAL_PREFETCH = 2  # eval batches read ahead
State = dict[str, Any]  # {"params", "opt_state"}: what a checkpoint holds
# (state, first step of the epoch) -> (state, per-step outputs [steps, ...])
TrainEpoch = Callable[[State, int], tuple[State, tuple[jax.Array, ...]]]


def examples(train: Any, evals: Mapping[str, Any]) -> dict[str, int]:
  """Rows of the training split and of each evaluated split (`.source`)."""
  return {"train": len(train.source),
          **{name: len(split.source) for name, split in evals.items()}}


def first_example(source: Any, section: str) -> Mapping[str, Any]:
  """The training split's first record, or an error if it has none."""
  if not len(source):
    raise LaryError(f"{section}: the training split has no examples")
  return source[0]


def process_batches(source: Any, keys: Sequence[str], *, global_batch: int,
                    seed: int, labels: np.ndarray | None, steps: range,
                    read_threads: int, prefetch: int) -> Iterator[Any]:
  """This process's rows of the training batches `steps` (pipeline)."""
  batches = pl.train_dataset(source, (), keys, global_batch=global_batch,
                             seed=seed, labels=labels)
  return pl.make_iterator(batches[steps.start:steps.stop],
                          read_threads=read_threads, prefetch=prefetch)


def hold(store: in_memory.Store,
         splits: Mapping[str, tuple[Any, Sequence[str]]], mesh: Mesh,
         compile_epoch: Callable[[Mapping[str, jax.Array]], Any | None]
         ) -> tuple[dict[str, in_memory.Held] | None, Any | None]:
  """(held splits, the held epoch compiled for the held "train" arrays), or
  (None, None) where they do not fit: the store then frees its arrays and
  the run streams."""
  held = store.hold(splits, mesh)
  compiled = None if held is None else compile_epoch(held["train"].arrays)
  if compiled is None:
    store.drop()
    return None, None
  return held, compiled


def compile_held_epoch(epoch: Any, state: tuple[Any, ...],
                       train: Mapping[str, jax.Array], steps: int,
                       global_batch: int, resident: Any, budget: int
                       ) -> Any | None:
  """The held epoch (`in_memory.make_epoch`) compiled for `state` (params,
  optimizer state, first step), or None where it adds more than `budget`
  bytes beside the `resident` arrays: the streamed steps then run."""
  ids = jax.ShapeDtypeStruct((steps, global_batch), jnp.int32)
  compiled, need = memory_fit.compile_within(epoch, (*state, train, ids),
                                             resident, budget)
  if compiled is None:
    _log.info("in-memory epoch needs %.2f GiB: streamed instead",
              need / memory_fit.GIB)
  return compiled


@dataclasses.dataclass(frozen=True)
class Predictor:
  """How a probe predicts the rows of its evaluated splits, each once.

  `fn(params, k, features)` predicts batch k: this process's rows (numpy)
  when streamed, the global rows on the devices when held; the batch is
  axis `axis` of its output. `cut` splits a streamed local batch into the
  parts `fn` takes (micro-batches); `held_batch` is the rows of one call on
  held features.
  """

  fn: Callable[[Any, int, Any], jax.Array]
  splits: Mapping[str, Any]  # name -> a split with `.source`
  held: Mapping[str, in_memory.Held] | None
  eval_batch: int
  held_batch: int
  mesh: Mesh
  axis: int = 0
  dtype: Any = np.float32
  cut: Callable[[dict[str, np.ndarray]], list[dict[str, np.ndarray]]] = (
      lambda batch: [batch])
  prefetch: int = EVAL_PREFETCH

  def __call__(self, params: Any) -> dict[str, np.ndarray]:
    """split -> its predictions, every row once, in row order."""
    if self.held is not None:
      return {name: in_memory.predict(
          lambda k, x: self.fn(params, k, x), self.held[name],
          self.held_batch, self.mesh, axis=self.axis)
              for name in self.splits}
    return {name: self.streamed(params, split.source)
            for name, split in self.splits.items()}

  def streamed(self, params: Any, source: Any) -> np.ndarray:
    """The predictions of `source`'s rows, read by the eval pipeline."""
    ds = pl.eval_dataset(source, (), ("features",),
                         global_batch=self.eval_batch)
    lead = (slice(None),) * self.axis
    out = None
    for k, batch in enumerate(pl.make_iterator(ds, read_threads=2,
                                               prefetch=self.prefetch)):
      for part in self.cut({key: batch[key]
                            for key in ("features", "index", "_mask")}):
        index = multihost_utils.process_allgather(part["index"], tiled=True)
        mask = multihost_utils.process_allgather(part["_mask"], tiled=True)
        pred = np.asarray(multihost_utils.process_allgather(
            self.fn(params, k, part["features"]), tiled=True))
        if out is None:
          shape = list(pred.shape)
          shape[self.axis] = len(source)
          out = np.zeros(shape, self.dtype)
        out[lead + (index[mask],)] = pred[lead + (mask,)]
    return out


class Run:
  """One probe run in its folder: claimed, resumed, trained epoch by epoch.

  Args:
    workdir: the run's folder (run.json, checkpoints/, evals/).
    name: the stage, e.g. "classify" (sync points).
    label: the run in progress lines, e.g. "classify seed_0".
    settings: what the run is; a folder holding another run is refused.
    state: the freshly initialised {"params", "opt_state"}; a checkpoint
      in the folder replaces it.
    epochs: epochs in all.
    per_epoch: steps of one epoch.
    progress: show a bar (default: on a terminal); only process 0 does.
  """

  def __init__(self, workdir: str, name: str, label: str,
               settings: Mapping[str, Any], state: State, *, epochs: int,
               per_epoch: int, progress: bool | None):
    self.workdir, self.name, self.label = workdir, name, label
    self.epochs, self.per_epoch = epochs, per_epoch
    if jax.process_index() == 0:
      run_claim.claim(workdir, settings)
    self._checkpoints = run_checkpoints.Checkpoints(
        workdir, kill_env=run_state.KILL_AFTER_EPOCHS_ENV)
    self.start_epoch, self.state = self._checkpoints.restore(state)
    if self.start_epoch:
      _log.info("%s: resumed after epoch %d", workdir, self.start_epoch)
    self.show = progress if jax.process_index() == 0 else False
    self.bar = progress_lib.bar(epochs * per_epoch,
                                initial=self.start_epoch * per_epoch,
                                unit="step", desc=label, show=self.show)
    self.projection = None
    self._batches = None

  @property
  def steps(self) -> range:
    """The training steps left to run."""
    return range(self.start_epoch * self.per_epoch,
                 self.epochs * self.per_epoch)

  def time_by(self, unit: float) -> None:
    """Projects the run's length from its first units of `unit` steps."""
    self.projection = run_projection.Projection(self.label, len(self.steps),
                                                unit)

  def say(self, line: str) -> None:
    run_projection.say(self.show, self.bar, line)

  def held_epoch(self, compiled: Any, order: Any, train: in_memory.Held,
                 global_batch: int) -> TrainEpoch:
    """An epoch as one call of the compiled held epoch, its batches the
    streaming pipeline's (`order`)."""
    self.time_by(1 / self.per_epoch)

    def train_epoch(state, first):
      ids = train.rows(in_memory.epoch_indices(order, first, self.per_epoch,
                                               global_batch))
      self.projection.start()
      params, opt_state, outs = compiled(
          state["params"], state["opt_state"], jnp.int32(first),
          train.arrays, ids)
      self.projection.finished(outs[0], self.show, self.bar)
      self.bar.update(self.per_epoch)
      return {"params": params, "opt_state": opt_state}, outs

    return train_epoch

  def streamed_epoch(self, step: Callable[..., tuple[Any, ...]],
                     batches: Iterator[Any]) -> TrainEpoch:
    """An epoch as `per_epoch` calls of `step(params, opt_state, step,
    local_batch) -> (params, opt_state, *outs)`, outs stacked; `batches`
    (closed at the end of `fit`) gives each step's local batch."""
    self._batches = batches

    def train_epoch(state, first):
      params, opt_state, outs = state["params"], state["opt_state"], []
      for i in range(first, first + self.per_epoch):
        params, opt_state, *out = step(params, opt_state, i, next(batches))
        outs.append(out)
      return ({"params": params, "opt_state": opt_state},
              tuple(jnp.stack(x) for x in zip(*outs)))

    return train_epoch

  def fit(self, train_epoch: TrainEpoch,
          predict: Callable[[Any], dict[str, np.ndarray]],
          record: Callable[[tuple[jax.Array, ...], dict[str, np.ndarray]],
                           tuple[dict[str, float], str]]
          ) -> dict[str, np.ndarray]:
    """Trains the epochs left and returns every epoch's outputs stacked.

    Args:
      train_epoch: `held_epoch` or `streamed_epoch`.
      predict: params -> split -> predictions.
      record: (the epoch's step outputs, its outputs so far) -> (its
        TensorBoard scalars, a summary line); adds what it reports of the
        training steps (e.g. `train_loss`) to the outputs.
    """
    events = tensorboard_log.ScalarLog(self.workdir)
    for epoch in range(self.start_epoch, self.epochs):
      self.state, outs = train_epoch(self.state, epoch * self.per_epoch)
      outputs = predict(self.state["params"])
      scalars, summary = record(outs, outputs)
      if jax.process_index() == 0:
        run_state.write_epoch(self.workdir, epoch, outputs)
      events.write(epoch + 1, scalars)
      multihost_utils.sync_global_devices(f"lary_{self.name}_epoch_written")
      self._checkpoints.save(epoch + 1, self.state)
      _log.info("epoch %d/%d  %s", epoch + 1, self.epochs, summary)
      if self.show is not False:
        self.bar.write(f"epoch {epoch + 1}/{self.epochs}: {summary}")
    self.bar.close()
    events.close()
    self._checkpoints.close()
    if hasattr(self._batches, "close"):
      self._batches.close()
    return run_state.read_history(self.workdir, self.epochs)
