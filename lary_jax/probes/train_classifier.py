"""Training the five attentive probes on stored features, epoch by epoch.

  train records (features + label), class-balanced draws, fixed global batch
  -> `multi_head` step on the `data` mesh, every head on the same batch
  -> after each epoch: float32 top-k predictions of every head on every
     evaluated split (each example exactly once), written atomically
  -> orbax checkpoint of parameters and optimizer states

The loop, resuming and writing are `training_core`'s; this module brings
the heads' steps (`multi_head`, `fitted_steps`) and what an epoch reports.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lary_jax import mesh as mesh_lib
from lary_jax.data import pipeline as pl
from lary_jax.probes import attentive_probe
from lary_jax.probes import fitted_steps
from lary_jax.probes import in_memory
from lary_jax.probes import memory_fit
from lary_jax.probes import multi_head as mh
from lary_jax.probes import run_state
from lary_jax.probes import training_core as core

KEYS = ("features", "label")


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
  memory_fit.check_batches(mesh, "classify", options.global_batch,
                           options.eval_batch, options.micro_batch)
  per_epoch = run_state.steps_per_epoch(
      len(train_split.source), options.global_batch, epochs=options.epochs,
      min_updates=options.min_updates)
  step_options = mh.StepOptions(
      heads=tuple(options.heads), total_steps=options.epochs * per_epoch,
      label_smoothing=options.label_smoothing,
      compute_dtype=options.compute_dtype, head_batch=options.head_batch)
  graphdef, params = mh.init_heads(probe, len(options.heads), seed,
                                   mh.compute_dtype(options.compute_dtype))
  state = jax.device_put(
      {"params": params, "opt_state": mh.init_optimizer(params, step_options)},
      NamedSharding(mesh, P()))
  run = core.Run(workdir, "classify", f"classify {os.path.basename(workdir)}",
                 _settings(probe, seed, options, inputs, train_split, evals),
                 state, epochs=options.epochs, per_epoch=per_epoch,
                 progress=progress)
  held, compiled = core.hold(
      store or held_store(probe, options),
      {name: (split.source, KEYS)
       for name, split in {"train": train_split, **evals}.items()}, mesh,
      lambda train: _fitted_epoch(graphdef, step_options, mesh, run.state,
                                  train, per_epoch, options))
  labels = train_split.labels if options.balanced else None
  if held is not None:
    train_epoch = run.held_epoch(compiled, pl.train_order(
        len(train_split.source), seed=seed, labels=labels), held["train"],
                                 options.global_batch)
    x = held["train"].arrays["features"]
    eval_step = _eval_step(probe, options, mesh, run.state,
                           jax.ShapeDtypeStruct(x.shape[1:], x.dtype), {})
    train_step, eval_prefetch = None, core.EVAL_PREFETCH
  else:
    train_epoch, train_step, eval_step, eval_prefetch = _streamed(
        probe, graphdef, step_options, mesh, run, train_split, labels, seed,
        options)
  _say_micro_batches(run, train_step, eval_step,
                     options.eval_batch // mesh.devices.size)
  return run.fit(
      train_epoch, core.Predictor(
          lambda params, k, x: eval_step(params, x), evals, held,
          options.eval_batch, eval_step.micro * mesh.devices.size, mesh,
          axis=1, dtype=np.int32, cut=eval_step.micro_batches,
          prefetch=eval_prefetch),
      lambda outs, outputs: _record(outs, outputs, evals, per_epoch,
                                    options.global_batch))


def _settings(probe: attentive_probe.Config, seed: int, options: Options,
              inputs: Mapping[str, Any] | None, train_split: Split,
              evals: Mapping[str, Split]) -> dict[str, Any]:
  """What the run is, for `run_claim.claim`."""
  # The micro-batch changes how a step is computed, not its numbers (beyond
  # fp32 rounding): a run may resume with another.
  settings = dataclasses.asdict(options)
  del settings["micro_batch"]
  return {"probe": dataclasses.asdict(probe), "seed": seed,
          "options": settings, "inputs": inputs or {},
          "examples": core.examples(train_split, evals)}


def _eval_step(probe: attentive_probe.Config, options: Options, mesh: Mesh,
               state: core.State, example: jax.ShapeDtypeStruct,
               fit: Mapping[str, Any]) -> fitted_steps.EvalStep:
  """The float32 top-k step of every head, at a micro-batch that fits."""
  return fitted_steps.EvalStep(
      mh.graphdef_for(probe, jnp.float32), probe.num_classes,
      options.head_batch, mesh, state["params"], options.eval_batch, example,
      micro_batch=options.micro_batch, **fit)


def _streamed(probe: attentive_probe.Config, graphdef: Any,
              step_options: mh.StepOptions, mesh: Mesh, run: core.Run,
              train_split: Split, labels: np.ndarray | None, seed: int,
              options: Options) -> tuple[Any, ...]:
  """The streamed epoch (micro-batched steps where a whole batch does not
  fit the device), its train step, the eval step that goes with it and
  the eval pipeline's read-ahead."""
  example = _example(train_split.source)
  row = {"features": example, "label": jax.ShapeDtypeStruct((), np.int32)}
  prefetch, train_ahead = memory_fit.read_ahead(
      row, options.global_batch // jax.process_count(), options.prefetch)
  eval_prefetch, eval_ahead = memory_fit.read_ahead(
      row, options.eval_batch // jax.process_count(), core.EVAL_PREFETCH)
  fit = dict(host_reserve=train_ahead + eval_ahead,
             tokens=attentive_probe.tokens_attended(probe, example.shape))
  state = run.state
  train_step = fitted_steps.TrainStep(
      graphdef, step_options, mesh, state["params"], state["opt_state"],
      options.global_batch, example, micro_batch=options.micro_batch, **fit)
  eval_step = _eval_step(probe, options, mesh, state, example, fit)
  run.time_by(train_step.micro_steps)
  pending = []

  def on_micro(step, i, k, out):
    run.projection.finished(out, run.show, run.bar)
    if k > 1:
      run.bar.n = step + (i + 1) / k
      run.bar.refresh()

  def step(params, opt_state, i, local):
    if pending and train_step.micro_steps > 1:
      # Micro-batches are dispatched one by one: without this, a step's
      # batches and sums would pile up behind the one running.
      jax.block_until_ready(pending.pop())
    out = train_step(params, opt_state, i, local,
                     functools.partial(on_micro, i))
    pending[:] = [out[2]]
    if train_step.micro_steps == 1:
      run.bar.update(1)
    return out

  return run.streamed_epoch(step, core.process_batches(
      train_split.source, KEYS, global_batch=options.global_batch, seed=seed,
      labels=labels, steps=run.steps, read_threads=options.read_threads,
      prefetch=prefetch)), train_step, eval_step, eval_prefetch


def _say_micro_batches(run: core.Run, train_step: Any,
                       eval_step: fitted_steps.EvalStep, per_device: int
                       ) -> None:
  """Says which steps run in micro-batches to fit the device, if any."""
  if (train_step is None or train_step.micro_steps == 1) and (
      eval_step.micro >= per_device):
    return
  train_part = ("" if train_step is None else
                f"{train_step.micro} (train, {train_step.micro_steps} a "
                f"step, {train_step.need / memory_fit.GIB:.1f} GiB) and ")
  run.say(f"{run.label}: micro-batches of {train_part}{eval_step.micro} "
          "(eval) examples a device, to fit its memory")


def _record(outs: tuple[jax.Array, ...], outputs: dict[str, np.ndarray],
            evals: Mapping[str, Split], per_epoch: int, global_batch: int
            ) -> tuple[dict[str, float], str]:
  """Adds what the heads saw while training (bf16 where training is; [H]
  each) to an epoch's outputs; its TensorBoard scalars and summary."""
  losses, hits = outs[0], outs[1]
  loss = np.asarray(losses).mean(0)
  outputs["train_loss"] = loss.astype(np.float32)
  outputs["train_top1"] = (np.asarray(hits).sum(0) / (
      per_epoch * global_batch)).astype(np.float32)
  summary = "  ".join(
      ["loss " + "/".join(f"{x:.3f}" for x in loss),
       "train top-1 " + "/".join(f"{x:.3f}" for x in outputs["train_top1"])]
      + [f"{name} top-1 " + "/".join(
          f"{_top1(p, evals[name].labels):.3f}" for p in outputs[name])
         for name in evals])
  return _epoch_scalars(outputs, evals), summary


def _fitted_epoch(graphdef: Any, step_options: mh.StepOptions, mesh: Mesh,
                  state: core.State, train: Mapping[str, jax.Array],
                  steps: int, options: Options) -> Any:
  """The in-memory epoch (`in_memory.make_epoch`) compiled, or None where
  its step over the whole global batch does not fit the device's memory
  or micro-batches are asked for: the streaming path then runs them."""
  if options.micro_batch not in (0, options.global_batch // mesh.devices.size):
    return None
  params, opt_state = state["params"], state["opt_state"]
  return core.compile_held_epoch(
      in_memory.make_epoch(mh.make_step_fn(graphdef, step_options), KEYS,
                           mesh), (params, opt_state, jnp.int32(0)),
      train, steps, options.global_batch, (params, opt_state, train),
      memory_fit.device_budget(mesh.local_devices[0]))


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
  features = np.asarray(core.first_example(source, "classify")["features"])
  return jax.ShapeDtypeStruct(features.shape, features.dtype)
