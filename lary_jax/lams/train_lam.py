"""Training a LAPA-style latent action model (LAM) in JAX.

  prepared datasets: each clip gives its 8 consecutive-frame pairs, each
  regression row its (src, tgt) pair -> one random-access list of pairs
  -> grain: seeded shuffle, fixed global batch, each process its rows
  -> uint8 [B, 2, S, S, 3] split over the `data` mesh axis
  -> jitted step: [0, 1] floats resized to the model's size, the model's
     loss (NSVQ noise from fold_in(seed, step)), global-norm clipping,
     AdamW with warm-up + cosine (or constant, as upstream), code usage
     counted; at LAPA's steps the codes used less than the threshold are
     re-seeded from the used ones and the counters reset
  -> orbax checkpoint every `ckpt_every` steps: parameters, optimizer state,
     code usage, step and the grain iterator's position
  -> `<workdir>/model`: the trained LAM in `encoders.convert.save`'s format,
     so `extract --model lapa --checkpoint <workdir>/model` loads it.

A run killed at any point resumes from its last checkpoint with the same
command and ends with exactly the parameters of an uninterrupted run: batch
order, noise and code re-seeding are pure functions of (seed, step). The
global batch is fixed whatever the device count, so 1 and 8 devices follow
the same loss curve up to float summation order.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lary_jax import atomic_io as fs
from lary_jax import mesh as mesh_lib
from lary_jax import progress as progress_lib
from lary_jax import run_checkpoints
from lary_jax import run_claim
from lary_jax import tensorboard_log
from lary_jax import workdir_layout as layout
from lary_jax import xla_options
from lary_jax.data import images as images_lib
from lary_jax.data import pipeline as pl
from lary_jax.encoders import convert
from lary_jax.errors import LaryError
from lary_jax.lams import lapa
from lary_jax.lams import nsvq

_log = logging.getLogger(__name__)

# Test hook: the process SIGKILLs itself once the checkpoint of this step is
# on disk.
KILL_AFTER_STEPS_ENV = "LARY_LAM_KILL_AFTER_STEPS"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
# LAPA's re-seeding steps, as (every, before): steps 10, 20, ..., 90, then
# 100, ..., 900, then 1000, 1500, ..., 4500 (never step 0).
LAPA_REPLACE_SCHEDULE = ((10, 100), (100, 1000), (500, 5000))


# ----------------------------------------------------------------- the pairs


class PairSource(Sequence):
  """The frame pairs of prepared records, random access, as encoded bytes.

  kind "clips": record r's frames (t, t + g) for every gap g in `gaps`
  (consecutive frames, (1,), by default); kind "pairs": record r's
  (src_image, tgt_image) is pair r. A pair is {"src_image": bytes,
  "tgt_image": bytes}; nothing is decoded here.
  """

  def __init__(self, records: Sequence[Mapping[str, Any]], kind: str,
               frames: int = 9, gaps: Sequence[int] = (1,)):
    if kind not in ("clips", "pairs"):
      raise LaryError(f"pair source kind {kind!r}: expected clips or pairs")
    if not gaps or min(gaps) < 1 or max(gaps) >= frames:
      raise LaryError(f"clip pair gaps {tuple(gaps)}: expected frame gaps "
                      f"in 1..{frames - 1}")
    self._records = records
    self._kind = kind
    self._pairs = [(t, t + g) for g in gaps for t in range(frames - g)]
    self._per_record = len(self._pairs) if kind == "clips" else 1

  def __len__(self) -> int:
    return len(self._records) * self._per_record

  def __getitem__(self, index: int) -> dict[str, bytes]:
    if not 0 <= index < len(self):
      raise IndexError(index)
    r, t = divmod(int(index), self._per_record)
    record = self._records[r]
    if self._kind == "pairs":
      return {"src_image": record["src_image"],
              "tgt_image": record["tgt_image"]}
    frames = record["frames"]
    first, second = self._pairs[t]
    return {"src_image": frames[first], "tgt_image": frames[second]}


class ConcatPairs(Sequence):
  """Several pair sources as one (their pairs in order)."""

  def __init__(self, sources: Sequence[Sequence[Any]]):
    if not sources:
      raise LaryError("no pair sources to train on")
    self._sources = list(sources)
    self._ends = np.cumsum([len(s) for s in self._sources])

  def __len__(self) -> int:
    return int(self._ends[-1])

  def __getitem__(self, index: int) -> Any:
    if not 0 <= index < len(self):
      raise IndexError(index)
    s = int(np.searchsorted(self._ends, index, side="right"))
    start = int(self._ends[s - 1]) if s else 0
    return self._sources[s][int(index) - start]


def stored_size(pairs: Sequence[Mapping[str, bytes]]) -> int:
  """Side of the stored square frames (224 for prepared LARY datasets)."""
  image = images_lib.decode_image(pairs[0]["src_image"])
  if image.shape[0] != image.shape[1]:
    raise LaryError(f"stored frames are {image.shape[:2]}, expected square")
  return int(image.shape[0])


def to_model_input(images: jax.Array, size: int) -> jax.Array:
  """uint8 [B, 2, S, S, 3] -> float32 [B, 2, size, size, 3] in [0, 1].

  Resized as extraction resizes (`lapa.PairEncoder`: bilinear,
  antialiased), so the trained LAM later sees frames made the same way.
  """
  x = images.astype(jnp.float32) / 255.0
  if x.shape[2] != size or x.shape[3] != size:
    x = jax.image.resize(x, (*x.shape[:2], size, size, x.shape[-1]),
                         method="bilinear", antialias=True)
  return x


# ------------------------------------------------------------------ options


@dataclasses.dataclass(frozen=True)
class Options:
  """Training options (config section `lam`)."""

  steps: int = 1000
  global_batch: int = 32
  lr: float = 1e-4
  schedule: str = "cosine"  # or "constant" (upstream LAPA)
  warmup_steps: int = 0
  end_lr_factor: float = 0.0  # cosine ends at lr * end_lr_factor
  weight_decay: float = 0.0  # on parameters with >= 2 dims, as upstream
  b1: float = 0.9
  b2: float = 0.99
  eps: float = 1e-8
  clip_norm: float = 0.5  # global gradient norm; <= 0: none
  compute_dtype: str = "auto"  # float32 / bfloat16; auto: bf16 off CPU
  seed: int = 0
  replace_schedule: tuple[tuple[int, int], ...] = LAPA_REPLACE_SCHEDULE
  reseed_noise: float = 1e-12  # upstream's; see nsvq.replace_unused_codes
  log_every: int = 10
  ckpt_every: int = 100
  read_threads: int = 4
  prefetch: int = 4
  worker_count: int = 0
  decode_cache_mb: float = 1024.0  # decoded frames kept (pl.DecodePair)


def replace_step(step: jax.Array,
                 schedule: Sequence[tuple[int, int]]) -> jax.Array:
  """Whether codes are re-seeded after counting step `step` (0-based)."""
  hit = jnp.zeros((), bool)
  for every, before in schedule:
    hit |= (step % every == 0) & (step < before)
  return hit & (step != 0)


def lr_schedule(options: Options) -> optax.Schedule:
  """Learning rate of update `count`: warm-up + cosine, or constant."""
  if options.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, options.lr, options.warmup_steps,
        max(options.steps, options.warmup_steps + 1),
        end_value=options.lr * options.end_lr_factor)
  if options.schedule != "constant":
    raise LaryError(f"lam.schedule={options.schedule!r}: expected "
                    "cosine or constant")
  if not options.warmup_steps:
    return optax.constant_schedule(options.lr)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, options.lr, options.warmup_steps),
       optax.constant_schedule(options.lr)], [options.warmup_steps])


def make_optimizer(options: Options) -> optax.GradientTransformation:
  """Clip by global norm, then AdamW (Adam when weight_decay is 0)."""
  # Upstream's AdamW groups: no decay on biases, norms (< 2 dims).
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  adamw = optax.adamw(lr_schedule(options), b1=options.b1, b2=options.b2,
                      eps=options.eps, weight_decay=options.weight_decay,
                      mask=decay_mask)
  if options.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(options.clip_norm), adamw)
  return adamw


def compute_dtype(name: str, platform: str) -> Any:
  if name == "auto":
    # bf16 matmuls are slower than fp32 on CPUs without AMX.
    return jnp.float32 if platform == "cpu" else jnp.bfloat16
  if name not in ("float32", "bfloat16"):
    raise LaryError(f"lam.compute_dtype={name!r}: expected auto, "
                    "float32 or bfloat16")
  return getattr(jnp, name)


def perplexity(counts: jax.Array) -> jax.Array:
  """exp(entropy) of code usage counts [..., K], as upstream's NSVQ."""
  p = counts / jnp.maximum(counts.sum(-1, keepdims=True), 1)
  return jnp.exp(-jnp.sum(p * jnp.log(p + 1e-12), axis=-1))


# ------------------------------------------------ the metrics log, host copies


def _read_metrics(workdir: str, upto: int) -> list[dict[str, Any]]:
  """Logged rows of steps <= upto (a killed run may have logged past its
  last checkpoint; those steps are redone)."""
  path = os.path.join(workdir, METRICS)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if r["step"] <= upto]


def _write_metrics(workdir: str, rows: list[dict[str, Any]]) -> None:
  text = "".join(json.dumps(r) + "\n" for r in rows)
  fs.write_atomic(os.path.join(workdir, METRICS), text.encode())


def _host(tree: Any) -> Any:
  """Replicated global arrays -> numpy, on every process."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


# ------------------------------------------------------------------ training


def init_state(module: ModuleType, cfg: Any, options: Options, dtype: Any,
               mesh: Mesh) -> tuple[nnx.GraphDef, dict[str, Any]]:
  """(graphdef, train state) of a fresh model, replicated over `mesh`.

  The state holds `params` (float32 nnx.Param), `rest` (any other model
  variables), `opt_state` and `usage` (steps each code was used in since
  the last re-seeding, upstream's counter).
  """
  model = module.Model(cfg, dtype=dtype, rngs=nnx.Rngs(options.seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  state = {"params": params, "rest": rest,
           "opt_state": make_optimizer(options).init(params),
           "usage": jnp.zeros((int(cfg.codebook_size),), jnp.int32)}
  return graphdef, jax.device_put(state, NamedSharding(mesh, P()))


def make_train_step(module: ModuleType, cfg: Any, graphdef: nnx.GraphDef,
                    state: Mapping[str, Any], options: Options, mesh: Mesh):
  """The jitted `step(state, images, step) -> (state, out)`.

  `images` uint8 [B, 2, S, S, 3] split over `data`; `step` the 0-based
  update; `out` holds `loss`, `recon_loss`, `counts` [K] (code histogram of
  the step) and `replaced` (codes re-seeded at this step). `state` is
  donated.
  """
  tx = make_optimizer(options)
  size, codes = int(cfg.image_size), int(cfg.codebook_size)
  base_key = jax.random.key(options.seed)

  def step_fn(state, images, step):
    key = jax.random.fold_in(base_key, step)
    noise_key, replace_key = jax.random.split(key)
    pair = to_model_input(images, size)

    def loss_fn(params):
      model = nnx.merge(graphdef, params, state["rest"])
      loss, metrics = model.loss(pair, key=noise_key)
      return loss, (metrics, nnx.state(model, nnx.Not(nnx.Param)))

    (loss, (metrics, rest)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state["params"])
    indices = metrics["indices"]
    counts = jnp.bincount(indices.reshape(-1), length=codes)  # for the logs
    usage = nsvq.count_usage(state["usage"], indices)

    # As upstream: the codes are re-seeded after this step's forward pass
    # counted, before the optimizer applies its (old-codebook) gradients.
    # Upstream divides usage by its batch size; ours is the global batch,
    # so the rule does not depend on the device count.
    def reseed(params, usage):
      model = nnx.merge(graphdef, params, rest)
      n = module.replace_unused_codes(model, usage, replace_key,
                                      num_batches=options.global_batch,
                                      noise_scale=options.reseed_noise)
      return nnx.state(model, nnx.Param), jnp.zeros_like(usage), n

    def keep(params, usage):
      return params, usage, jnp.zeros((), jnp.int32)

    params, new_usage, replaced = jax.lax.cond(
        replace_step(step, options.replace_schedule), reseed, keep,
        state["params"], usage)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    params = optax.apply_updates(params, updates)
    out = {"loss": loss.astype(jnp.float32),
           "recon_loss": metrics["recon_loss"].astype(jnp.float32),
           "counts": counts, "replaced": replaced.astype(jnp.int32)}
    return ({"params": params, "rest": rest, "opt_state": opt_state,
             "usage": new_usage}, out)

  replicated = NamedSharding(mesh, P())
  state_sharding = jax.tree.map(lambda _: replicated, state)
  return jax.jit(
      step_fn, in_shardings=(state_sharding, NamedSharding(mesh, P("data")),
                             replicated),
      out_shardings=(state_sharding, replicated), donate_argnums=(0,),
      compiler_options=xla_options.training_step(
          mesh.devices.flat[0].platform))


def _check_batch(options: Options, mesh: Mesh, num_pairs: int) -> None:
  """The global batch splits over the devices and fits the pairs."""
  if options.global_batch % mesh.devices.size:
    raise LaryError(f"lam.global_batch={options.global_batch} must be "
                    f"a multiple of the {mesh.devices.size} devices")
  if num_pairs < options.global_batch:
    raise LaryError(f"{num_pairs} training pairs, fewer than one global "
                    f"batch of {options.global_batch}")


# Not probes.training_core's loop: that one trains epochs and predicts the
# evaluated splits after each; a LAM trains steps from an endless grain
# stream, logs every `log_every` and checkpoints every `ckpt_every` of them.
def _run_steps(train_step: Callable, state: Any, iterator: Any,
               checkpoints: run_checkpoints.Checkpoints,
               history: list[dict[str, Any]], start: int, workdir: str, *,
               name: str, options: Options, mesh: Mesh, codes: int,
               progress: bool | None) -> Any:
  """Steps `start..options.steps`: logs, checkpoints; returns the state."""
  show = progress if jax.process_index() == 0 else False
  bar = progress_lib.bar(options.steps, initial=start, unit="step",
                         desc=f"train_lam {name}", show=show)
  pending: list[dict[str, jax.Array]] = []
  events = tensorboard_log.ScalarLog(workdir)
  for step in range(start, options.steps):
    local = next(iterator)
    images = pl.to_device({"images": local["images"]}, mesh)["images"]
    state, out = train_step(state, images, jnp.int32(step))
    pending.append(out)
    last = step + 1 == options.steps
    if (step + 1) % options.log_every == 0 or last:
      row = _log_row(step + 1, jax.device_get(pending), options, codes)
      history.append(row)
      events.write(row["step"], {f"train/{k}": v for k, v in row.items()
                                 if k not in ("step", "codes")})
      pending = []
      bar.set_postfix(loss=f"{row['loss']:.4f}", ppl=f"{row['perplexity']:.2f}",
                      dead=row["dead_codes"])
    bar.update(1)
    if (step + 1) % options.ckpt_every == 0 or last:
      if jax.process_index() == 0:
        _write_metrics(workdir, history)
      multihost_utils.sync_global_devices("lary_train_lam_metrics")
      checkpoints.save(step + 1, state)
  bar.close()
  events.close()
  return state


def _save_model(graphdef: nnx.GraphDef, state: Any, cfg: Any, workdir: str,
                name: str) -> str:
  """Writes the trained model under `workdir/model`; returns that folder."""
  model = nnx.merge(graphdef, _host(state["params"]), _host(state["rest"]))
  model_dir = layout.lam_model_dir(workdir)
  # Every process calls orbax's save (it synchronises them); the
  # parameters are replicated, so what is written is the same.
  convert.save(model_dir, name, cfg, convert.flat_params(model))
  return model_dir


def train(module: ModuleType, cfg: Any, pairs: Sequence[Mapping[str, bytes]],
          workdir: str, *, name: str, options: Options = Options(),
          mesh: Mesh | None = None, progress: bool | None = None,
          inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Trains a LAM on frame pairs (resuming what `workdir` holds).

  Args:
    module: the model module: `Config`, `Model(cfg, *, dtype, rngs)` with
      `loss(pair, *, key) -> (loss, {"recon_loss", "indices", ...})`, and
      `replace_unused_codes(model, usage, key, *, num_batches, noise_scale)
      -> count`
      (re-seeds in place; `lary_jax.lams.lapa`).
    cfg: its Config (`to_dict()`; `image_size`, `codebook_size`).
    pairs: random-access {"src_image", "tgt_image"} encoded frames
      (`PairSource` / `ConcatPairs`).
    workdir: this run's folder: checkpoints/, metrics.jsonl, model/.
    name: registry name the trained model is saved under (e.g. "lapa").
    options: training options.
    mesh: device mesh (default: every device on `data`).
    progress: tqdm bar (default: on a terminal, process 0).
    inputs: what identifies the data; with the rest, a folder holding
      another run is refused.

  Returns:
    The summary also written to `<workdir>/summary.json`.
  """
  mesh = mesh or mesh_lib.make_mesh()
  _check_batch(options, mesh, len(pairs))
  platform = mesh.devices.flat[0].platform
  dtype = compute_dtype(options.compute_dtype, platform)
  codes = int(cfg.codebook_size)
  if jax.process_index() == 0:
    run_claim.claim(workdir, {
        "model": name, "config": cfg.to_dict(),
        "options": dataclasses.asdict(options), "pairs": len(pairs),
        "inputs": inputs or {}})

  graphdef, state = init_state(module, cfg, options, dtype, mesh)
  batches = pl.train_dataset(
      pairs, (pl.DecodePair(image_size=stored_size(pairs),
                            cache_mb=options.decode_cache_mb),), ("images",),
      global_batch=options.global_batch, seed=options.seed)
  iterator = pl.make_iterator(batches, worker_count=options.worker_count,
                              read_threads=options.read_threads,
                              prefetch=options.prefetch)
  checkpoints = run_checkpoints.Checkpoints(
      workdir, kill_env=KILL_AFTER_STEPS_ENV, iterator=iterator)
  start, state = checkpoints.restore(state)
  history = _read_metrics(workdir, start)
  train_step = make_train_step(module, cfg, graphdef, state, options, mesh)

  t0, done_at_start = time.perf_counter(), start
  state = _run_steps(train_step, state, iterator, checkpoints, history, start,
                     workdir, name=name, options=options, mesh=mesh,
                     codes=codes, progress=progress)
  checkpoints.close()
  if hasattr(iterator, "close"):
    iterator.close()
  seconds = time.perf_counter() - t0

  model_dir = _save_model(graphdef, state, cfg, workdir, name)
  summary = {
      "model": name, "model_dir": os.path.abspath(model_dir),
      "steps": options.steps, "pairs": len(pairs),
      "first_loss": history[0]["loss"] if history else None,
      "final_loss": history[-1]["loss"] if history else None,
      "final_perplexity": history[-1]["perplexity"] if history else None,
      "final_dead_codes": history[-1]["dead_codes"] if history else None,
      "resumed_from": done_at_start,
      "steps_per_s": ((options.steps - done_at_start) / seconds
                      if options.steps > done_at_start else None),
  }
  if jax.process_index() == 0:
    fs.write_json(os.path.join(workdir, SUMMARY), summary)
  return summary


def _log_row(step: int, outs: list[dict[str, np.ndarray]], options: Options,
             codes: int) -> dict[str, Any]:
  """One metrics.jsonl row for the steps since the last one."""
  counts = np.stack([o["counts"] for o in outs])  # [steps, K]
  return {
      "step": step,
      "loss": float(np.mean([o["loss"] for o in outs])),
      "recon_loss": float(np.mean([o["recon_loss"] for o in outs])),
      # Per step as upstream logs it, averaged over the window.
      "perplexity": float(np.mean(np.asarray(perplexity(counts)))),
      "dead_codes": int(np.sum(counts.sum(0) == 0)),
      "replaced_codes": int(sum(int(o["replaced"]) for o in outs)),
      "lr": float(lr_schedule(options)(step - 1)),
      "codes": codes,
  }



# ------------------------------------------------------------ from a config


def lam_module(name: str) -> ModuleType:
  """The model module of a trainable LAM name (pixel LAPA: "lapa")."""
  modules = {"lapa": lapa}
  if name not in modules:
    raise LaryError(f"lam.model={name!r}: trainable LAMs are "
                    f"{sorted(modules)}")
  return modules[name]


def model_config(c: Any) -> tuple[ModuleType, Any]:
  """(module, Config) from a `lam` config section."""
  module = lam_module(c.model)
  preset = getattr(module.Config, c.preset, None)
  if not callable(preset):
    raise LaryError(f"lam.preset={c.preset!r}: not a {c.model} Config "
                    f"preset (e.g. {sorted(module.VARIANTS)})")
  try:
    cfg = preset(**c.model_overrides.to_dict())
  except TypeError as e:
    raise LaryError(f"lam.model_overrides: {e}") from None
  if getattr(cfg, "features", ""):
    raise LaryError(f"lam.preset={c.preset!r} reads {cfg.features} "
                    "tokens; train_lam trains the pixel LAQ only")
  return module, cfg


def options_from_config(c: Any, seed: int | None = None) -> Options:
  """`Options` from a `lam` config section (`seed` overrides)."""
  fields = {f.name for f in dataclasses.fields(Options)}
  kw = {k: v for k, v in c.items() if k in fields}
  kw["replace_schedule"] = tuple(tuple(int(v) for v in p)
                                 for p in kw.get("replace_schedule", ()))
  if seed is not None:
    kw["seed"] = seed
  return Options(**kw)


def workdir_of(root: str, c: Any) -> str:
  """Where `train_lam` with config section `c` writes under `--workdir`."""
  return layout.lam_dir(root, c.name)


def checkpoint_dir(workdir: str) -> str:
  """The trained model a run in `workdir` leaves (`extract --checkpoint`)."""
  return layout.lam_model_dir(workdir)


def prepared_pairs(dataset: str, tfds_dir: str, split: str = "train", *,
                   stride: int | None = None, clip_gaps: Sequence[int] = (1,)
                   ) -> tuple[ConcatPairs, dict[str, Any]]:
  """The frame pairs of prepared datasets, and what identifies them.

  Args:
    dataset: `--dataset` names (comma-separated; "sim" is both LARY-Sim
      halves).
    tfds_dir: where they were prepared.
    split: the split whose pairs are trained on.
    stride: `--stride`, as for the other commands.
    clip_gaps: a clip gives its frame pairs (t, t + g) for each gap g.

  Returns:
    (pairs, {dataset: {"split", "records", "pairs", "bytes"}}).
  """
  from tfds_builders import metadata  # pylint: disable=g-import-not-at-top
  from tfds_builders import prepare  # pylint: disable=g-import-not-at-top
  sources, inputs = [], {}
  for spec in metadata.resolve_datasets(dataset, stride):
    builder = prepare.builder(spec, tfds_dir)
    if not builder.is_prepared():
      raise LaryError(f"{spec.name} is not prepared in {tfds_dir}; run "
                      "`prepare` first (or pass --tfds_dir)")
    if split not in builder.info.splits:
      raise LaryError(f"split {split!r}: {builder.data_dir} has splits "
                      f"{list(builder.info.splits)}")
    records = builder.as_data_source()[split]
    kind = "clips" if spec.kind == "classification" else "pairs"
    source = PairSource(records, kind, gaps=tuple(clip_gaps))
    sources.append(source)
    inputs[spec.name] = {"split": split, "records": len(records),
                         "pairs": len(source),
                         "bytes": builder.info.splits[split].num_bytes}
  return ConcatPairs(sources), inputs


def train_from_config(c: Any, pairs: Sequence[Mapping[str, bytes]],
                      workdir: str, *, inputs: Mapping[str, Any],
                      seed: int | None = None, mesh: Mesh | None = None,
                      progress: bool | None = None) -> dict[str, Any]:
  """`train` with the model and options of config section `c`."""
  module, cfg = model_config(c)
  return train(module, cfg, pairs, workdir, name=c.model,
               options=options_from_config(c, seed), mesh=mesh,
               progress=progress, inputs=inputs)


def train_for_run(config: Any, *, workdir: str, tfds_dir: str,
                  progress: bool | None = None) -> dict[str, Any]:
  """Trains the LAM of a config file's `lam` section into `workdir`.

  What `run` calls: the data are `lam.dataset`'s `lam.split` in `tfds_dir`;
  the model ends up in `checkpoint_dir(workdir)`.
  """
  if "lam" not in config:
    raise LaryError("the LAM config has no `lam` section (see "
                    "configs/lam/lapa_sim.py)")
  c = config.lam
  pairs, inputs = prepared_pairs(c.dataset, tfds_dir, c.split,
                                 clip_gaps=c.clip_gaps)
  return train_from_config(c, pairs, workdir, inputs=inputs,
                           progress=progress)


def describe(summary: Mapping[str, Any]) -> str:
  """Two lines for the terminal: the result and how to extract with it."""
  return (f"{summary['model']}: {summary['steps']} steps on "
          f"{summary['pairs']} pairs, loss {summary['first_loss']:.4f} -> "
          f"{summary['final_loss']:.4f}, perplexity "
          f"{summary['final_perplexity']:.2f}, dead codes "
          f"{summary['final_dead_codes']}\nmodel: {summary['model_dir']} "
          f"(extract --model {summary['model']} --checkpoint "
          f"{summary['model_dir']})")
