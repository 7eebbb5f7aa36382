"""Training one action decoder (MLP or DiT) on stored features.

  train records (features, normalised target), shuffled, fixed global batch
  -> flatten the pair's tokens -> decoder loss -> AdamW (lr 1e-4, wd 1e-4,
     linear warm-up over the first 10% of steps, then constant)
  -> after each epoch: predictions for every evaluated split (`run_state`)
  -> orbax checkpoint

Parameters whose float32 bytes reach `shard_min_mb` are sharded over the
`data` mesh axis together with their AdamW moments (FSDP-style): upstream's
MLP on flattened DiNOv2 pair tokens has a 524,288 x 4096 first layer, 34 GB
with its optimizer state, more than one accelerator holds. Smaller leaves
are replicated. The numbers do not depend on the sharding.
"""

from __future__ import annotations

import dataclasses
import logging
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
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lary_jax import mesh as mesh_lib
from lary_jax import progress as progress_lib
from lary_jax import tensorboard_log
from lary_jax.data import pipeline as pl
from lary_jax.errors import LaryError
from lary_jax.probes import attentive_probe
from lary_jax.probes import in_memory
from lary_jax.probes import memory_fit
from lary_jax.probes import run_projection
from lary_jax.probes import run_state

_log = logging.getLogger(__name__)
KEYS = ("features", "target")
EVAL_PREFETCH = 2  # eval batches read ahead


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


def compiler_options(platform: str) -> dict[str, Any] | None:
  """XLA options for the training step on `platform` ("cpu", "gpu", ...).

  On CPU, XLA's default copy insertion copies every donated parameter that
  the backward pass reads as well as updates (0.6 GiB a step for upstream's
  MLP, its 512 MiB first kernel included); region analysis sees that the
  reads come first and drops the copies: ~3% of the step's CPU time.
  """
  if platform == "cpu":
    return {"xla_cpu_copy_insertion_use_region_analysis": True}
  return None


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
  for name, batch in (("global_batch", options.global_batch),
                      ("eval_batch", options.eval_batch)):
    if batch % mesh.devices.size:
      raise LaryError(f"regress.{name}={batch} must be a multiple of the "
                      f"{mesh.devices.size} devices")
  per_epoch = run_state.steps_per_epoch(
      len(train_split.source), options.global_batch, epochs=options.epochs,
      min_updates=options.min_updates)
  total = options.epochs * per_epoch
  warmup_steps = int(total * options.warmup)
  dtype = getattr(jnp, options.compute_dtype)
  make = lambda: decoder.make(input_dim(token_shape, options.pool_grid),
                              seed, dtype)
  graphdef, abstract = nnx.split(nnx.eval_shape(make))
  tx = _optimizer(options, warmup_steps)
  p_sharding = param_shardings(abstract, mesh, options.shard_min_mb)
  o_sharding = param_shardings(jax.eval_shape(tx.init, abstract), mesh,
                               options.shard_min_mb)
  data = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
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

  store = store or held_store(options)
  held = store.hold({"train": (train_split.source, KEYS), **{
      name: (split.source, ("features",)) for name, split in evals.items()}},
                    mesh)
  platform_options = compiler_options(mesh.devices.flat[0].platform)
  run_epoch = None if held is None else _fitted_epoch(
      in_memory.make_epoch(step_fn, KEYS, mesh, platform_options,
                           state_shardings=(p_sharding, o_sharding)),
      abstract, tx, held["train"].arrays, per_epoch, options, mesh)
  if run_epoch is None:
    held = None  # streamed instead: the held copies are freed
    store.drop()
    row = _row_spec(train_split.source)
    prefetch, train_ahead = memory_fit.read_ahead(
        row, options.global_batch // jax.process_count(), options.prefetch)
    eval_prefetch, eval_ahead = memory_fit.read_ahead(
        row, options.eval_batch // jax.process_count(), EVAL_PREFETCH)
    # Compiled before any parameter exists, so that a decoder too big for
    # the device is refused up front instead of dying in its first step.
    train_step = _compile_fitting(
        jax.jit(step_fn,
                in_shardings=(p_sharding, o_sharding, replicated, data, data),
                out_shardings=(p_sharding, o_sharding, replicated),
                donate_argnums=(0, 1), compiler_options=platform_options),
        abstract, tx, mesh, options, decoder.name, row,
        train_ahead + eval_ahead)
  params = jax.device_put(nnx.state(make()), p_sharding)
  opt_state = jax.device_put(tx.init(params), o_sharding)
  if jax.process_index() == 0:
    run_state.claim(workdir, {
        "decoder": decoder.name, "token_shape": list(token_shape),
        "seed": seed, "options": dataclasses.asdict(options),
        "inputs": inputs or {},
        "examples": {"train": len(train_split.source),
                     **{k: len(v.source) for k, v in evals.items()}}})
  checkpoints = run_state.Checkpoints(workdir)
  start_epoch, state = checkpoints.restore(
      {"params": params, "opt_state": opt_state})
  params, opt_state = state["params"], state["opt_state"]

  def eval_fn(params, batch_index, features):
    z = flatten_features(features, options.pool_grid)
    key = jax.random.fold_in(eval_key, batch_index)
    return decoder.predict(nnx.merge(graphdef, params), z, key)

  eval_step = jax.jit(eval_fn, in_shardings=(p_sharding, replicated, data),
                      out_shardings=data)

  if held is not None:
    order = pl.train_order(len(train_split.source), seed=seed)
  else:
    batches = pl.train_dataset(train_split.source, (), KEYS,
                               global_batch=options.global_batch, seed=seed)
    iterator = pl.make_iterator(batches[start_epoch * per_epoch:total],
                                read_threads=options.read_threads,
                                prefetch=prefetch)
  show = progress if jax.process_index() == 0 else False
  bar = progress_lib.bar(total, initial=start_epoch * per_epoch, unit="step",
                         desc=f"regress {decoder.name}", show=show)
  # Timed by steps, or by epochs where an epoch is one call (a scan).
  projection = run_projection.Projection(
      f"regress {decoder.name} {os.path.basename(workdir)}",
      total - start_epoch * per_epoch, 1 if held is None else 1 / per_epoch)
  events = tensorboard_log.ScalarLog(workdir)
  for epoch in range(start_epoch, options.epochs):
    first = epoch * per_epoch
    if held is not None:
      ids = held["train"].rows(in_memory.epoch_indices(
          order, first, per_epoch, options.global_batch))
      projection.start()
      params, opt_state, (losses,) = run_epoch(
          params, opt_state, jnp.int32(first), held["train"].arrays, ids)
      projection.finished(losses, show, bar)
      bar.update(per_epoch)
    else:
      losses = []
      for step in range(first, first + per_epoch):
        batch = pl.to_device(next(iterator), mesh)
        params, opt_state, loss = train_step(
            params, opt_state, jnp.int32(step), batch["features"],
            batch["target"])
        losses.append(loss)
        projection.finished(loss, show, bar)
        bar.update(1)
    out = {name: (predict(eval_step, params, split.source, options.eval_batch,
                          mesh, eval_prefetch) if held is None else
                  in_memory.predict(
                      lambda k, x: eval_step(params, jnp.int32(k), x),
                      held[name], options.eval_batch, mesh))
           for name, split in evals.items()}
    out["train_loss"] = np.asarray(float(np.mean(jax.device_get(losses))))
    if jax.process_index() == 0:
      run_state.write_epoch(workdir, epoch, out)
    multihost_utils.sync_global_devices("lary_regress_epoch_written")
    checkpoints.save(epoch + 1, {"params": params, "opt_state": opt_state})
    scalars = {"train/loss": float(out["train_loss"]), **{
        f"{name}/mse": float(np.mean((out[name] - split.targets) ** 2))
        for name, split in evals.items() if split.targets is not None}}
    events.write(epoch + 1, scalars)
    summary = "  ".join(f"{tag.replace('/', ' ')} {value:.4f}"
                        for tag, value in scalars.items())
    _log.info("epoch %d/%d  %s", epoch + 1, options.epochs, summary)
    if show is not False:
      bar.write(f"epoch {epoch + 1}/{options.epochs}: {summary}")
  bar.close()
  events.close()
  checkpoints.close()
  if held is None and hasattr(iterator, "close"):
    iterator.close()
  return run_state.read_history(workdir, options.epochs)


def held_store(options: Options) -> in_memory.Store:
  """Where a command's runs hold their splits' pooled features (and
  targets) on the devices, read once for all of its seeds."""
  return in_memory.Store(options.in_memory_mb, prepare=lambda x: (
      pool_features(x, options.pool_grid)))


def _fitted_epoch(epoch: Any, params: Any, tx: Any,
                  train: Mapping[str, jax.Array], steps: int,
                  options: Options, mesh: Mesh) -> Any:
  """The in-memory epoch compiled for the abstract `params`, or None where
  it does not fit the device beside the held `train` arrays (the streaming
  step, which holds no data, is then tried)."""
  compiled, need = memory_fit.compile_within(
      epoch, (params, jax.eval_shape(tx.init, params),
              jax.ShapeDtypeStruct((), jnp.int32), train,
              jax.ShapeDtypeStruct((steps, options.global_batch), jnp.int32)),
      train, memory_fit.device_budget(mesh.local_devices[0], host_share=1.0))
  if compiled is None:
    _log.info("in-memory epoch needs %.2f GiB: streamed instead",
              need / memory_fit.GIB)
  return compiled


def _row_spec(source: Any) -> dict[str, jax.ShapeDtypeStruct]:
  """Shape and dtype of one record's features and target, as they reach
  the device."""
  if not len(source):
    raise LaryError("regress: the training split has no examples")
  row = source[0]
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


def predict(eval_step, params: Any, source: Any, eval_batch: int,
            mesh: Mesh, prefetch: int = EVAL_PREFETCH) -> np.ndarray:
  """Normalised predictions for every record once: [N, S * A] float32."""
  ds = pl.eval_dataset(source, (), ("features",), global_batch=eval_batch)
  out = None
  for k, batch in enumerate(pl.make_iterator(ds, read_threads=2,
                                             prefetch=prefetch)):
    index = multihost_utils.process_allgather(batch["index"], tiled=True)
    mask = multihost_utils.process_allgather(batch["_mask"], tiled=True)
    features = pl.to_device({"features": batch["features"]}, mesh)
    pred = np.asarray(multihost_utils.process_allgather(
        eval_step(params, jnp.int32(k), features["features"]), tiled=True))
    if out is None:
      out = np.zeros((len(source), pred.shape[-1]), np.float32)
    out[index[mask]] = pred[mask]
  return out
