"""Training the five attentive probes on stored features, epoch by epoch.

  train records (features + label), class-balanced draws, fixed global batch
  -> `multi_head` step on the `data` mesh, every head on the same batch
  -> after each epoch: float32 top-k predictions of every head on every
     evaluated split (each example exactly once), written atomically
  -> orbax checkpoint of parameters and optimizer states (`run_state`)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lary_jax import mesh as mesh_lib
from lary_jax import progress as progress_lib
from lary_jax import tensorboard_log
from lary_jax.data import pipeline as pl
from lary_jax.errors import LaryError
from lary_jax.probes import attentive_probe
from lary_jax.probes import fitted_steps
from lary_jax.probes import in_memory
from lary_jax.probes import memory_fit
from lary_jax.probes import multi_head as mh
from lary_jax.probes import run_projection
from lary_jax.probes import run_state

_log = logging.getLogger(__name__)
KEYS = ("features", "label")
EVAL_PREFETCH = 2  # eval batches read ahead


@dataclasses.dataclass(frozen=True)
class Options:
  """Training options (config section `classify`)."""

  epochs: int = 20
  # 0: an epoch is one pass (ceil(N / B) steps), as upstream; n > 0: at
  # least n updates in all, by longer epochs (small datasets; `run`).
  min_updates: int = 0
  global_batch: int = 256
  eval_batch: int = 256
  heads: tuple[tuple[float, float], ...] = mh.HEADS
  label_smoothing: float = 0.1
  compute_dtype: str = "auto"  # bf16 on GPU/TPU, fp32 on CPU
  head_batch: int = 1  # heads run at once (1: least memory)
  # Examples a device computes at once; the rest of its share of the global
  # batch follows in further micro-batches, gradients summed. 0: the
  # largest that fits the device's free memory.
  micro_batch: int = 0
  balanced: bool = True  # class-balanced draws with replacement
  read_threads: int = 4
  prefetch: int = 4
  # Splits whose pooled features fit this many MiB are held on the devices
  # and trained without an input pipeline (`in_memory`); 0: never.
  in_memory_mb: float = 1024.0


@dataclasses.dataclass(frozen=True)
class Split:
  """Random-access records with `features` and `label`, and the labels."""

  source: Any
  labels: np.ndarray


def held_store(probe: attentive_probe.Config,
               options: Options) -> in_memory.Store:
  """Where a command's runs hold their splits' pooled features (and labels)
  on the devices, read once for all of its seeds (`in_memory.Store`)."""
  return in_memory.Store(options.in_memory_mb, prepare=lambda x: (
      attentive_probe.pool_features(x, probe.pool_grid)))


def train(probe: attentive_probe.Config, train_split: Split,
          evals: Mapping[str, Split], workdir: str, *, seed: int,
          options: Options = Options(), mesh: Mesh | None = None,
          progress: bool | None = None,
          inputs: Mapping[str, Any] | None = None,
          store: in_memory.Store | None = None) -> dict[str, np.ndarray]:
  """Trains the heads (resuming what `workdir` holds) and evaluates them.

  Args:
    probe: the probe's shape (dim, classes, widths).
    train_split: the training records.
    evals: split name -> records evaluated after every epoch.
    workdir: this run's folder (checkpoints/, evals/).
    seed: initialisation and batch-order seed.
    options: training options.
    mesh: device mesh (default: every device on a `data` axis).
    progress: show a tqdm bar (default: on a terminal, in process 0).
    inputs: what identifies the data (e.g. the stores' manifest digests);
      with the rest, a folder holding another run is refused.
    store: the command's held splits (`held_store`), shared by its seeds;
      default: this run's own.

  Returns:
    split -> top-k predictions [epochs, heads, N, k] (int32, best first),
    and `train_loss` / `train_top1` [epochs, heads] of the training steps.
  """
  mesh = mesh or mesh_lib.make_mesh()
  fitted_steps.check_batches(mesh, options.global_batch, options.eval_batch,
                             options.micro_batch)
  per_epoch = run_state.steps_per_epoch(
      len(train_split.source), options.global_batch, epochs=options.epochs,
      min_updates=options.min_updates)
  total = options.epochs * per_epoch
  step_options = mh.StepOptions(
      heads=tuple(options.heads), total_steps=total,
      label_smoothing=options.label_smoothing,
      compute_dtype=options.compute_dtype, head_batch=options.head_batch)
  dtype = mh.compute_dtype(options.compute_dtype)
  graphdef, params = mh.init_heads(probe, len(options.heads), seed, dtype)
  eval_graphdef = mh.graphdef_for(probe, jnp.float32)
  opt_state = mh.init_optimizer(params, step_options)
  replicated = NamedSharding(mesh, P())
  params, opt_state = jax.device_put((params, opt_state), replicated)

  if jax.process_index() == 0:
    # The micro-batch changes how a step is computed, not its numbers
    # (beyond fp32 rounding): a run may resume with another.
    settings = dataclasses.asdict(options)
    del settings["micro_batch"]
    run_state.claim(workdir, {
        "probe": dataclasses.asdict(probe), "seed": seed,
        "options": settings, "inputs": inputs or {},
        "examples": {"train": len(train_split.source),
                     **{k: len(v.source) for k, v in evals.items()}}})
  checkpoints = run_state.Checkpoints(workdir)
  start_epoch, state = checkpoints.restore(
      {"params": params, "opt_state": opt_state})
  params, opt_state = state["params"], state["opt_state"]
  if start_epoch:
    _log.info("%s: resumed after epoch %d", workdir, start_epoch)

  show = progress if progress is not None else None
  if jax.process_index() != 0:
    show = False
  run_name = f"classify {os.path.basename(workdir)}"
  bar = progress_lib.bar(total, initial=start_epoch * per_epoch, unit="step",
                         desc=run_name, show=show)
  store = store or held_store(probe, options)
  held = store.hold({name: (split.source, KEYS) for name, split in
                     {"train": train_split, **evals}.items()}, mesh)
  run_epoch = None if held is None else _fitted_epoch(
      graphdef, step_options, mesh, params, opt_state, held["train"].arrays,
      per_epoch, options)
  if run_epoch is not None:
    order = pl.train_order(len(train_split.source), seed=seed, labels=(
        train_split.labels if options.balanced else None))
    train_step = None
    # Timed by epochs: a scan is one call.
    projection = run_projection.Projection(
        run_name, total - start_epoch * per_epoch, 1 / per_epoch)
    features = held["train"].arrays["features"]
    eval_step = fitted_steps.EvalStep(
        eval_graphdef, probe.num_classes, options.head_batch, mesh, params,
        options.eval_batch,
        jax.ShapeDtypeStruct(features.shape[1:], features.dtype),
        micro_batch=options.micro_batch)
  else:
    held = None  # streamed instead: the held copies are freed
    store.drop()
    example = _example(train_split.source)
    row = {"features": example, "label": jax.ShapeDtypeStruct((), np.int32)}
    local = options.global_batch // jax.process_count()
    prefetch, train_ahead = memory_fit.read_ahead(row, local,
                                                  options.prefetch)
    eval_prefetch, eval_ahead = memory_fit.read_ahead(
        row, options.eval_batch // jax.process_count(), EVAL_PREFETCH)
    fit = dict(micro_batch=options.micro_batch,
               host_reserve=train_ahead + eval_ahead,
               tokens=attentive_probe.tokens_attended(probe, example.shape))
    train_step = fitted_steps.TrainStep(
        graphdef, step_options, mesh, params, opt_state,
        options.global_batch, example, **fit)
    eval_step = fitted_steps.EvalStep(
        eval_graphdef, probe.num_classes, options.head_batch, mesh, params,
        options.eval_batch, example, **fit)
    batches = pl.train_dataset(
        train_split.source, (), KEYS, global_batch=options.global_batch,
        seed=seed, labels=train_split.labels if options.balanced else None)
    iterator = pl.make_iterator(batches[start_epoch * per_epoch:total],
                                read_threads=options.read_threads,
                                prefetch=prefetch)
    projection = run_projection.Projection(run_name, total - (
        start_epoch * per_epoch), train_step.micro_steps)

    def on_micro(step, i, k, pending):
      projection.finished(pending, show, bar)
      if k > 1:
        bar.n = step + (i + 1) / k
        bar.refresh()

  per_device = options.eval_batch // mesh.devices.size
  if (train_step is not None and train_step.micro_steps > 1) or (
      eval_step.micro < per_device):
    train_part = ("" if train_step is None else
                  f"{train_step.micro} (train, {train_step.micro_steps} a "
                  f"step, {train_step.need / memory_fit.GIB:.1f} GiB) and ")
    run_projection.say(
        show, bar, f"{run_name}: micro-batches of {train_part}"
        f"{eval_step.micro} (eval) examples a device, to fit its memory")
  events = tensorboard_log.ScalarLog(workdir)
  for epoch in range(start_epoch, options.epochs):
    first = epoch * per_epoch
    if held is not None:
      ids = held["train"].rows(in_memory.epoch_indices(
          order, first, per_epoch, options.global_batch))
      projection.start()
      params, opt_state, (losses, hits, _) = run_epoch(
          params, opt_state, jnp.int32(first), held["train"].arrays, ids)
      projection.finished(losses, show, bar)
      bar.update(per_epoch)
    else:
      losses, hits = [], []
      for step in range(first, first + per_epoch):
        if losses and train_step.micro_steps > 1:
          # Micro-batches are dispatched one by one: without this, a
          # step's batches and sums would pile up behind the one running.
          jax.block_until_ready(losses[-1])
        params, opt_state, loss, correct, _ = train_step(
            params, opt_state, step, next(iterator),
            functools.partial(on_micro, step))
        losses.append(loss)
        hits.append(correct)
        if train_step.micro_steps == 1:
          bar.update(1)
      losses, hits = jnp.stack(losses), jnp.stack(hits)
    loss = np.asarray(losses).mean(0)
    predictions = {
        name: (predict(eval_step, params, split.source, options.eval_batch,
                       eval_prefetch) if held is None else in_memory.predict(
                           lambda k, x: eval_step(params, x), held[name],
                           eval_step.micro * mesh.devices.size, mesh, axis=1))
        for name, split in evals.items()}
    # What the heads saw while training (bf16 where training is): [H] each.
    predictions["train_loss"] = loss.astype(np.float32)
    predictions["train_top1"] = (np.asarray(hits).sum(0) / (
        per_epoch * options.global_batch)).astype(np.float32)
    if jax.process_index() == 0:
      run_state.write_epoch(workdir, epoch, predictions)
    events.write(epoch + 1, _epoch_scalars(predictions, evals))
    multihost_utils.sync_global_devices("lary_classify_epoch_written")
    checkpoints.save(epoch + 1, {"params": params, "opt_state": opt_state})
    summary = "  ".join(
        [f"train top-1 " + "/".join(f"{x:.3f}" for x in
                                     predictions["train_top1"])] + [
            f"{name} top-1 " + "/".join(
                f"{_top1(p, evals[name].labels):.3f}"
                for p in predictions[name]) for name in evals])
    _log.info("epoch %d/%d  loss %s  %s", epoch + 1, options.epochs,
              "/".join(f"{x:.3f}" for x in loss), summary)
    if show is not False:
      bar.write(f"epoch {epoch + 1}/{options.epochs}: {summary}")
  bar.close()
  events.close()
  checkpoints.close()
  if held is None and hasattr(iterator, "close"):
    iterator.close()
  return run_state.read_history(workdir, options.epochs)


def _fitted_epoch(graphdef: Any, step_options: mh.StepOptions, mesh: Mesh,
                  params: Any, opt_state: Any, train: Mapping[str, jax.Array],
                  steps: int, options: Options) -> Any:
  """The in-memory epoch (`in_memory.make_epoch`) compiled, or None where
  its step over the whole global batch does not fit the device's memory
  or micro-batches are asked for: the streaming path then runs them."""
  per_device = options.global_batch // mesh.devices.size
  if options.micro_batch not in (0, per_device):
    return None
  epoch = in_memory.make_epoch(mh.make_step_fn(graphdef, step_options), KEYS,
                               mesh)
  ids = jax.ShapeDtypeStruct((steps, options.global_batch), jnp.int32)
  compiled, need = memory_fit.compile_within(
      epoch, (params, opt_state, jnp.int32(0), train, ids),
      (params, opt_state, train),
      memory_fit.device_budget(mesh.local_devices[0]))
  if compiled is None:
    _log.info("in-memory epoch needs %.2f GiB: streamed in micro-batches "
              "instead", need / memory_fit.GIB)
  return compiled


def _epoch_scalars(predictions: Mapping[str, np.ndarray],
                   evals: Mapping[str, Split]) -> dict[str, float]:
  """One epoch's TensorBoard scalars, per head (`head<h>`)."""
  out = {}
  for h, (loss, top1) in enumerate(zip(predictions["train_loss"],
                                       predictions["train_top1"])):
    out[f"train/loss/head{h}"] = loss
    out[f"train/top1/head{h}"] = top1
  for name, split in evals.items():
    for h, p in enumerate(predictions[name]):
      out[f"{name}/top1/head{h}"] = _top1(p, split.labels)
  return out


def _top1(topk: np.ndarray, labels: np.ndarray) -> float:
  return float((topk[:, 0] == labels).mean())


def _example(source: Any) -> jax.ShapeDtypeStruct:
  """Shape and dtype of one record's features, as they reach the device."""
  if not len(source):
    raise LaryError("classify: the training split has no examples")
  features = np.asarray(source[0]["features"])
  return jax.ShapeDtypeStruct(features.shape, features.dtype)


def predict(eval_step: fitted_steps.EvalStep, params: Any, source: Any,
            eval_batch: int, prefetch: int = EVAL_PREFETCH) -> np.ndarray:
  """Top-k predictions of every head on every record once: [H, N, k]."""
  ds = pl.eval_dataset(source, (), KEYS, global_batch=eval_batch)
  out = None
  for batch in pl.make_iterator(ds, read_threads=2, prefetch=prefetch):
    for part in eval_step.micro_batches(
        {k: batch[k] for k in ("features", "index", "_mask")}):
      index = multihost_utils.process_allgather(part["index"], tiled=True)
      mask = multihost_utils.process_allgather(part["_mask"], tiled=True)
      top = np.asarray(multihost_utils.process_allgather(
          eval_step(params, part["features"]), tiled=True))
      if out is None:
        out = np.zeros((top.shape[0], len(source), top.shape[2]), np.int32)
      out[:, index[mask]] = top[:, mask]
  return out
