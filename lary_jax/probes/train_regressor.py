"""Training one action decoder (MLP or DiT) on stored features.

  train records (features, normalised target), shuffled, fixed global batch
  -> flatten the pair's tokens -> decoder loss -> AdamW (lr 1e-4, wd 1e-4,
     linear warm-up over the first 10% of steps, then constant)
  -> after each epoch: predictions for every evaluated split, written
     atomically -> orbax checkpoint (the loop: `training_core`)

Parameters whose float32 bytes reach `shard_min_mb` are sharded over the
`data` mesh axis together with their AdamW moments (FSDP-style): upstream's
MLP on flattened DiNOv2 pair tokens has a 524,288 x 4096 first layer, 34 GB
with its optimizer state, more than one accelerator holds. Smaller leaves
are replicated. The numbers do not depend on the sharding.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lary_jax import mesh as mesh_lib
from lary_jax import xla_options
from lary_jax.data import pipeline as pl
from lary_jax.errors import LaryError
from lary_jax.probes import attentive_probe
from lary_jax.probes import in_memory
from lary_jax.probes import memory_fit
from lary_jax.probes import run_state
from lary_jax.probes import training_core as core

KEYS = ("features", "target")


@dataclasses.dataclass(frozen=True)
class Options:
  """Training options (config section `regress`)."""

  epochs: int = 20
  min_updates: int = 0  # as train_classifier.Options.min_updates
  global_batch: int = 256
  eval_batch: int = 256
  lr: float = 1e-4
  weight_decay: float = 1e-4
  warmup: float = 0.1  # share of all steps with a linear warm-up
  compute_dtype: str = "float32"
  pool_grid: int = 0  # >0: average each frame's tokens to a g x g grid
  shard_min_mb: float = 256.0  # shard parameters at least this big
  read_threads: int = 4
  prefetch: int = 4
  in_memory_mb: float = 1024.0  # as train_classifier.Options.in_memory_mb


@dataclasses.dataclass(frozen=True)
class Split:
  """Random-access records with `features` and `target` [S * A], and those
  targets [N, S * A] (for the epoch lines' MSE) where the caller has them."""

  source: Any
  targets: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Decoder:
  """How to build, train and run one kind of decoder.

  `make(input_dim, seed, dtype)` returns an nnx module;
  `loss(model, z, target, key)` a scalar; `predict(model, z, key)` the
  [B, S * A] normalised chunk.
  """

  name: str
  make: Callable[[int, int, Any], nnx.Module]
  loss: Callable[..., jax.Array]
  predict: Callable[..., jax.Array]


def decoder_from_module(name: str, module: ModuleType,
                        make: Callable[[int, int, Any], nnx.Module]
                        ) -> Decoder:
  return Decoder(name, make, module.loss, module.predict)


def lr_factor(step: jax.Array, warmup_steps: int) -> jax.Array:
  """Upstream's constant-with-warm-up factor of update `step` (0-based).

  Its scheduler steps after each update, so update s uses min(s / W, 1):
  the very first update has learning rate 0.
  """
  # Not optax.linear_schedule: it computes 1 - (1 - s / W), which rounds
  # differently (1261 of 1914 float32 factors differ in a check).
  if warmup_steps <= 0:
    return jnp.ones_like(step, jnp.float32)
  return jnp.minimum(step / warmup_steps, 1.0).astype(jnp.float32)


def flatten_features(x: jax.Array, pool_grid: int) -> jax.Array:
  """[B, T, N, D] (or [B, N, D]) tokens -> [B, T * N * D], float32."""
  x = pool_features(x, pool_grid)
  return x.reshape(x.shape[0], -1).astype(jnp.float32)


def pool_features(x: jax.Array, pool_grid: int) -> jax.Array:
  """The pooling `flatten_features` starts with (float32), rank kept; done
  once ahead for features held in memory (then a no-op per step)."""
  if not pool_grid:
    return x
  return attentive_probe.pool_features(x.astype(jnp.float32), pool_grid)


def input_dim(token_shape: tuple[int, ...], pool_grid: int) -> int:
  """Width of the flattened input for stored tokens of `token_shape`."""
  shape = tuple(token_shape)
  if pool_grid and shape[-2] > pool_grid * pool_grid:
    frames = shape[0] if len(shape) == 3 else 1
    return frames * pool_grid * pool_grid * shape[-1]
  return int(np.prod(shape))


def param_shardings(tree: Any, mesh: Mesh, min_mb: float) -> Any:
  """Per leaf: split the largest evenly divisible axis over `data` when the
  leaf holds at least `min_mb` MiB of float32, else replicate."""
  n = mesh.shape["data"]

  def one(leaf):
    shape = getattr(leaf, "shape", ())
    if n > 1 and min_mb >= 0 and shape and (
        np.prod(shape) * 4 >= min_mb * 2**20):
      axes = [a for a in np.argsort(shape)[::-1] if shape[a] % n == 0]
      if axes:
        spec = [None] * len(shape)
        spec[axes[0]] = "data"
        return NamedSharding(mesh, P(*spec))
    return NamedSharding(mesh, P())

  return jax.tree.map(one, tree)


def _optimizer(options: Options, warmup_steps: int
               ) -> optax.GradientTransformation:
  schedule = lambda count: options.lr * lr_factor(count, warmup_steps)
  return optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8,
                     weight_decay=options.weight_decay)


def train(decoder: Decoder, token_shape: tuple[int, ...], train_split: Split,
          evals: Mapping[str, Split], workdir: str, *, seed: int,
          options: Options = Options(), mesh: Mesh | None = None,
          progress: bool | None = None,
          inputs: Mapping[str, Any] | None = None,
          store: in_memory.Store | None = None) -> dict[str, np.ndarray]:
  """Trains a decoder (resuming what `workdir` holds) and evaluates it.

  Args:
    decoder: the decoder kind.
    token_shape: stored features per example, e.g. (2, 256, 1024).
    train_split: training records.
    evals: split name -> records predicted after every epoch.
    workdir: this run's folder.
    seed: init, batch order and noise seed.
    options: training options.
    mesh: device mesh (default: every device on `data`).
    progress: tqdm bar (default: on a terminal, process 0).
    inputs: what identifies the data and the decoder's shape; with the
      rest, a folder holding another run is refused.
    store: the command's held splits (`held_store`), shared by its seeds;
      default: this run's own.

  Returns:
    split -> predictions [epochs, N, S * A] (normalised), and `train_loss`
    [epochs] (mean training loss of each epoch).
  """
  mesh = mesh or mesh_lib.make_mesh()
  memory_fit.check_batches(mesh, "regress", options.global_batch,
                           options.eval_batch)
  per_epoch = run_state.steps_per_epoch(
      len(train_split.source), options.global_batch, epochs=options.epochs,
      min_updates=options.min_updates)
  make = lambda: decoder.make(input_dim(token_shape, options.pool_grid),
                              seed, getattr(jnp, options.compute_dtype))
  graphdef, abstract = nnx.split(nnx.eval_shape(make))
  tx = _optimizer(options, int(options.epochs * per_epoch * options.warmup))
  shardings = (param_shardings(abstract, mesh, options.shard_min_mb),
               param_shardings(jax.eval_shape(tx.init, abstract), mesh,
                               options.shard_min_mb))
  step_fn, eval_fn = _step_functions(decoder, graphdef, tx, seed, options)
  platform_options = xla_options.training_step(mesh.devices.flat[0].platform)
  held, compiled = _hold(store or held_store(options), train_split, evals,
                         mesh, in_memory.make_epoch(
                             step_fn, KEYS, mesh, platform_options,
                             state_shardings=shardings),
                         (abstract, jax.eval_shape(tx.init, abstract)),
                         per_epoch, options)
  eval_prefetch = core.EVAL_PREFETCH
  if held is None:  # streamed
    train_step, prefetch, eval_prefetch = _streamed_step(
        step_fn, abstract, tx, shardings, mesh, options, decoder.name,
        train_split.source, platform_options)
  params = jax.device_put(nnx.state(make()), shardings[0])
  run = core.Run(
      workdir, "regress",
      f"regress {decoder.name} {os.path.basename(workdir)}",
      {"decoder": decoder.name, "token_shape": list(token_shape),
       "seed": seed, "options": dataclasses.asdict(options),
       "inputs": inputs or {}, "examples": core.examples(train_split, evals)},
      {"params": params,
       "opt_state": jax.device_put(tx.init(params), shardings[1])},
      epochs=options.epochs, per_epoch=per_epoch, progress=progress)
  if held is not None:
    train_epoch = run.held_epoch(compiled, pl.train_order(
        len(train_split.source), seed=seed), held["train"],
                                 options.global_batch)
  else:
    train_epoch = run.streamed_epoch(_timed(train_step, mesh, run),
                                     core.process_batches(
        train_split.source, KEYS, global_batch=options.global_batch,
        seed=seed, labels=None, steps=run.steps,
        read_threads=options.read_threads, prefetch=prefetch))
  return run.fit(train_epoch, _predictor(eval_fn, shardings[0], mesh, options,
                                         evals, held, eval_prefetch),
                 lambda outs, outputs: _record(outs, outputs, evals))


def _hold(store: in_memory.Store, train_split: Split,
          evals: Mapping[str, Split], mesh: Mesh, epoch: Any,
          state: tuple[Any, Any], steps: int, options: Options
          ) -> tuple[Any, Any]:
  """(held splits, compiled held `epoch` for the abstract `state`), or
  (None, None) where they do not fit the device beside the held "train"
  arrays (the streamed step, which holds no data, is then tried)."""
  return core.hold(
      store, {"train": (train_split.source, KEYS), **{
          name: (split.source, ("features",))
          for name, split in evals.items()}}, mesh,
      lambda train: core.compile_held_epoch(
          epoch, (*state, jax.ShapeDtypeStruct((), jnp.int32)), train,
          steps, options.global_batch, train,
          memory_fit.device_budget(mesh.local_devices[0], host_share=1.0)))


def _step_functions(decoder: Decoder, graphdef: Any,
                    tx: optax.GradientTransformation, seed: int,
                    options: Options) -> tuple[Any, Any]:
  """The decoder's training step and prediction, before jit.

  step(params, opt_state, step, features, target) -> (params, opt_state,
  loss); predict(params, batch_index, features) -> [B, S * A]; the noise
  of each is a pure function of (seed, step or batch index).
  """
  train_key = jax.random.key(seed)
  eval_key = jax.random.fold_in(train_key, 2**31 - 1)

  def step_fn(params, opt_state, step, features, target):
    key = jax.random.fold_in(train_key, step)
    z = flatten_features(features, options.pool_grid)

    def loss_fn(p):
      return decoder.loss(nnx.merge(graphdef, p), z, target, key)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def eval_fn(params, batch_index, features):
    z = flatten_features(features, options.pool_grid)
    key = jax.random.fold_in(eval_key, batch_index)
    return decoder.predict(nnx.merge(graphdef, params), z, key)

  return step_fn, eval_fn


def _predictor(eval_fn: Any, param_sharding: Any, mesh: Mesh,
               options: Options, evals: Mapping[str, Split],
               held: Mapping[str, in_memory.Held] | None, prefetch: int
               ) -> core.Predictor:
  """The jitted `eval_fn` on held (device) or streamed (host) features."""
  data = NamedSharding(mesh, P("data"))
  eval_step = jax.jit(eval_fn, in_shardings=(
      param_sharding, NamedSharding(mesh, P()), data), out_shardings=data)

  def predict(params, k, x):
    if not isinstance(x, jax.Array):
      x = pl.to_device({"features": x}, mesh)["features"]
    return eval_step(params, jnp.int32(k), x)

  return core.Predictor(predict, evals, held, options.eval_batch,
                        options.eval_batch, mesh, prefetch=prefetch)


def _streamed_step(step_fn: Any, params: Any, tx: Any,
                   shardings: tuple[Any, Any], mesh: Mesh, options: Options,
                   name: str, source: Any,
                   platform_options: dict[str, Any] | None
                   ) -> tuple[Any, int, int]:
  """The compiled streamed step (refused up front, before any parameter
  exists, where the decoder does not fit the device), and the train and
  eval pipelines' read-ahead."""
  row = _row_spec(source)
  prefetch, train_ahead = memory_fit.read_ahead(
      row, options.global_batch // jax.process_count(), options.prefetch)
  eval_prefetch, eval_ahead = memory_fit.read_ahead(
      row, options.eval_batch // jax.process_count(), core.EVAL_PREFETCH)
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  step = _compile_fitting(
      jax.jit(step_fn,
              in_shardings=(*shardings, replicated, data, data),
              out_shardings=(*shardings, replicated),
              donate_argnums=(0, 1), compiler_options=platform_options),
      params, tx, mesh, options, name, row, train_ahead + eval_ahead)
  return step, prefetch, eval_prefetch


def _timed(train_step: Any, mesh: Mesh, run: core.Run) -> Any:
  """`train_step` on a process's batch, each step timed and counted."""
  run.time_by(1)

  def step(params, opt_state, i, local):
    batch = pl.to_device(local, mesh)
    params, opt_state, loss = train_step(params, opt_state, jnp.int32(i),
                                         batch["features"], batch["target"])
    run.projection.finished(loss, run.show, run.bar)
    run.bar.update(1)
    return params, opt_state, loss

  return step


def _record(outs: tuple[jax.Array, ...], outputs: dict[str, np.ndarray],
            evals: Mapping[str, Split]) -> tuple[dict[str, float], str]:
  """Adds the epoch's mean training loss to its outputs; its TensorBoard
  scalars (and MSE per split with targets) and summary."""
  outputs["train_loss"] = np.asarray(float(np.mean(jax.device_get(outs[0]))))
  scalars = {"train/loss": float(outputs["train_loss"]), **{
      f"{name}/mse": float(np.mean((outputs[name] - split.targets) ** 2))
      for name, split in evals.items() if split.targets is not None}}
  return scalars, "  ".join(f"{tag.replace('/', ' ')} {value:.4f}"
                            for tag, value in scalars.items())


def held_store(options: Options) -> in_memory.Store:
  """Where a command's runs hold their splits' pooled features (and
  targets) on the devices, read once for all of its seeds."""
  return in_memory.Store(options.in_memory_mb, prepare=lambda x: (
      pool_features(x, options.pool_grid)))


def _row_spec(source: Any) -> dict[str, jax.ShapeDtypeStruct]:
  """Shape and dtype of one record's features and target, as they reach
  the device."""
  row = core.first_example(source, "regress")
  return {k: jax.ShapeDtypeStruct(np.shape(row[k]), np.asarray(row[k]).dtype)
          for k in KEYS}


def _compile_fitting(step: Any, params: Any, tx: Any, mesh: Mesh,
                     options: Options, name: str,
                     row: Mapping[str, jax.ShapeDtypeStruct],
                     host_reserve: int) -> Any:
  """The compiled train step, or an error saying what would make it fit.

  Args:
    step: the jitted step (with its shardings).
    params: the decoder's parameters, abstract.
    tx: the optimizer.
    mesh: the device mesh.
    options: training options.
    name: the decoder's name, for the error.
    row: one row's features and target (`_row_spec`).
    host_reserve: host bytes the input pipelines hold.
  """
  batch = [jax.ShapeDtypeStruct((options.global_batch, *row[k].shape),
                                row[k].dtype) for k in KEYS]
  # No micro-batch makes a decoder smaller: it runs if the memory is free.
  budget = memory_fit.device_budget(mesh.local_devices[0], host_reserve,
                                    host_share=1.0)
  compiled, need = memory_fit.compile_within(
      step, (params, jax.eval_shape(tx.init, params),
             jax.ShapeDtypeStruct((), jnp.int32), *batch), (), budget)
  if compiled is not None:
    return compiled
  # What sharding would split: the large parameters, their two moments
  # and their gradients (at most all of the step).
  big = min(need * mesh.devices.size, 4 * sum(
      x.size * 4 for x in jax.tree.leaves(params)
      if x.size * 4 >= options.shard_min_mb * 2**20))
  count = sum(x.size for x in jax.tree.leaves(params))
  rest = need - big / mesh.devices.size
  devices = (f"on about {math.ceil(big / (budget - rest))} devices of this "
             "size (parameters of at least regress.shard_min_mb="
             f"{options.shard_min_mb:g} MiB are split over the devices with "
             "their moments)" if big and options.shard_min_mb >= 0
             and budget > rest else "on a device with more memory")
  gib = memory_fit.GIB
  raise LaryError(
      f"regress: a training step of the {name} decoder needs {need / gib:.1f}"
      f" GiB on each of {mesh.devices.size} device(s) ({count / 1e9:.2f} B "
      "parameters, with their AdamW moments and gradients), and this "
      f"{mesh.local_devices[0].platform} device has {budget / gib:.1f} GiB "
      f"to give. It fits {devices}, or with a smaller input: "
      "--config.regress.pool_grid=4 (not the protocol)")
