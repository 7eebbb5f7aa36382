"""What the whole LARYBench costs: storage, wall time and chip-hours, up front.

  python benchmarks/cost_model.py [--encoder vit:L/14] [--mfu 0.4]
      [--metadata_dir DIR] [--write]
  python benchmarks/cost_model.py --check WORKDIR [--write]

The model multiplies each split's rows by what one row costs in each stage:

- prepare (host CPU): decode a source frame, resize it to 224 (prepare's
  bicubic), store it as PNG; seconds a frame on one core, measured here.
- decode (host CPU): extraction's PNG decode of a stored frame, likewise.
- encode (chip): the encoder's FLOPs on one row (a clip's 9 frames, a
  pair's 2), XLA's cost analysis of the compiled forward.
- store: the row's float16 feature bytes, from the token shape.
- probe (chip): the protocol's probes (the five attentive heads, or the
  MLP action decoder; 20 epochs, batch 256, evaluation every epoch), XLA's
  cost analysis of one head's compiled training step (value_and_grad +
  AdamW) and forward, split into a per-example and a per-step part.

FLOPs are counted on the program an accelerator runs: attention through
`jax.nn.dot_product_attention`, as vit_layers uses off the CPU (its CPU form
loops over blocks, and XLA's cost analysis counts a loop body once).

Time on N chips (benchmarks/chips.py: bf16 peak, host cores per chip), every
stage split over the chips by rows: prepare + max(decode, encode, store)
(extraction overlaps its input, compute and writes) + probe, chip time at
--mfu of the peak (an assumption until benchmarks/device_check.py measures
it on the card); chip-hours = wall time x chips.

Rows: `ROWS`, counted from upstream's committed metadata CSVs where the
public snapshot holds them (8 files); the larger CSVs are not in it, so the
rest is estimated from upstream README's totals (1.2M videos, 620K image
pairs; marked ~). `--metadata_dir` counts the CSVs of a LARYBench data/
folder instead.

--check WORKDIR: the same model for this CPU (peak: a jitted fp32 GEMM
measured now; its cores as the host) on a finished `run` (e.g. the tiny one
that `benchmarks/compile_cache.py --keep DIR` keeps), each stage's prediction
plus the compile seconds `run` measured, against the stage's measured wall
time from its run_timings.json.

--write puts the projection between the `cost_model` markers of README.md
and the check into BENCHMARKS.md's `cost_model` section.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time
from unittest import mock

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import chips  # pylint: disable=g-import-not-at-top
from benchmarks import report  # pylint: disable=g-import-not-at-top

README_MD = os.path.join(ROOT, "README.md")
FRAMES = {"classification": 9, "regression": 2}  # stored frames a row
SOURCE_SIZE = (480, 640)  # a camera frame before prepare resizes it
# Where a README projection runs: (chip, chips).
TARGETS = (("NVIDIA H100 SXM", 1), ("TPU v5e", 8), ("TPU v5e", 64))
UPSTREAM = "meituan-longcat/LARYBench data/ at e046433"


@dataclasses.dataclass(frozen=True)
class Split:
  task: str  # classification / regression
  dataset: str
  split: str  # train / validation / unseen
  rows: int
  source: str  # how the count is known


def _estimated_rows() -> list[Split]:
  """LARYBench's splits: counted where upstream's CSV is public, else ~."""
  counted = [  # rows of upstream's CSVs (header excluded)
      ("regression", "agibotbeta", "unseen", 12303),
      ("regression", "calvin", "validation", 11969),
      ("regression", "libero", "validation", 6485),
      ("regression", "robocoin", "unseen", 14159),
      ("regression", "vlabench_15", "validation", 8919),
      ("regression", "vlabench_30", "train", 12546),
      ("regression", "vlabench_30", "validation", 4182),
  ]
  out = [Split(*c, f"counted ({UPSTREAM})") for c in counted]
  # The same episodes at stride 15 and 5 give 2x and 6x the stride-30 pairs
  # (vlabench_15's validation: 8919 = 2.1 x 4182).
  for name, factor in (("vlabench_15", 2), ("vlabench", 6)):
    for split, base in (("train", 12546), ("validation", 4182)):
      if (name, split) != ("vlabench_15", "validation"):
        out.append(Split("regression", name, split, factor * base,
                         f"~{factor}x vlabench_30 {split}"))
  # The rest of upstream README's 620K image pairs: the train and seen_val
  # CSVs of calvin, libero, agibotbeta and robocoin, 9:1.
  rest = 620_000 - sum(s.rows for s in out)
  out.append(Split("regression", "calvin+libero+agibotbeta+robocoin",
                   "train", round(rest * 0.9), "~620K pairs - the above, 90%"))
  out.append(Split("regression", "calvin+libero+agibotbeta+robocoin",
                   "validation", round(rest * 0.1), "~ the other 10%"))
  # README: "1.2M videos" over human_1st and robot_1st, 9:1.
  out.append(Split("classification", "human_1st+robot_1st", "train",
                   1_080_000, "~1.2M videos, 90%"))
  out.append(Split("classification", "human_1st+robot_1st", "validation",
                   120_000, "~ the other 10%"))
  return out


def counted_rows(metadata_dir: str) -> list[Split]:
  """Rows of every LARYBench CSV in `metadata_dir` (upstream's data/)."""
  from lary_jax.errors import LaryError  # pylint: disable=g-import-not-at-top
  from tfds_builders import metadata  # pylint: disable=g-import-not-at-top
  out = []
  for name, spec in metadata.DATASETS.items():
    if name.startswith("sim"):
      continue
    try:
      found = metadata.find_csvs(spec, metadata_dir)
    except LaryError:
      continue
    for split, path in sorted(found.items()):
      with open(path, newline="") as f:
        rows = sum(1 for _ in csv.reader(f)) - 1
      out.append(Split(spec.kind, name, split, rows,
                       f"counted ({os.path.basename(path)})"))
  if not out:
    raise SystemExit(f"--metadata_dir {metadata_dir}: no LARYBench CSV")
  return out


# ----------------------------------------------------------- what a row costs


def _accelerator_attention():
  """Traces vit_layers' attention as it runs off the CPU (no block loops)."""
  import jax  # pylint: disable=g-import-not-at-top
  from lary_jax.nn import vit_layers  # pylint: disable=g-import-not-at-top
  return mock.patch.object(vit_layers, "attention",
                           jax.nn.dot_product_attention)


def _flops(fn, *args) -> float:
  """XLA's FLOPs of `fn(*args)` compiled, attention as accelerators run it."""
  import jax  # pylint: disable=g-import-not-at-top
  with _accelerator_attention():
    return report.xla_flops(jax.jit(fn).lower(*args).compile())


def _per_example(cost_at) -> tuple[float, float]:
  """(per step, per example) of a cost linear in the batch (batches 1, 2)."""
  one, two = cost_at(1), cost_at(2)
  return max(2 * one - two, 0.0), two - one


def abstract_vit(variant: str):
  """A DINOv2-architecture ViT `Encoder` with abstract (shape-only) weights."""
  # pylint: disable=g-import-not-at-top
  from flax import nnx
  from lary_jax.encoders import baselines
  from lary_jax.encoders import dinov2
  from lary_jax.encoders import registry
  cfg = baselines.decode_variant(variant)
  model = nnx.eval_shape(lambda: dinov2.Model(cfg, rngs=nnx.Rngs(0)))
  return registry.make_encoder(f"vit:{variant}", model,
                               preprocess=dinov2.preprocess,
                               select_tokens=dinov2.select_tokens)


def encode_cost(encoder, task: str) -> tuple[float, tuple[int, ...]]:
  """(FLOPs of one row, feature shape of one row) for `task`'s rows."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from lary_jax import extract  # pylint: disable=g-import-not-at-top
  mode = "video" if task == "classification" else "image"

  def cost_at(b):
    # A frame encoder reads [b, T, 224, 224, 3] uint8; a states encoder
    # (sim_oracle) one recorded state a frame.
    if encoder.inputs == "states":
      row = (encoder.example.shape, encoder.example.dtype)
    else:
      row = ((224, 224, 3), jnp.uint8)
    frames = jax.ShapeDtypeStruct((b, FRAMES[task], *row[0]), row[1])
    return _flops(lambda p, f: extract.encode_rows(encoder, p, f),
                  encoder.params, frames)

  return _per_example(cost_at)[1], extract.token_shape(encoder, mode)


@dataclasses.dataclass(frozen=True)
class ProbeCost:
  """FLOPs of a probe: a training step and an evaluation forward."""

  train_step: float  # per step, whatever the batch (the optimizer)
  train_example: float  # per example of a training step
  eval_example: float  # per example evaluated
  heads: int  # models trained side by side (FLOPs above are all of them)


def classify_cost(token_shape, classes: int, model_dim: int = 768,
                  num_heads: int = 16, depth: int = 4, pool_grid: int = 0,
                  heads: int = 5) -> ProbeCost:
  """The attentive probes' FLOPs on features of `token_shape`."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx
  from lary_jax.probes import attentive_probe
  from lary_jax.probes import multi_head
  config = attentive_probe.Config(
      dim=token_shape[-1], num_classes=classes, model_dim=model_dim,
      num_heads=num_heads, depth=depth, pool_grid=pool_grid)
  graphdef, params = nnx.split(nnx.eval_shape(
      lambda: attentive_probe.AttentiveProbe(config, rngs=nnx.Rngs(0))))
  opt = optax.adamw(1e-4, weight_decay=0.05)
  opt_state = jax.eval_shape(opt.init, params)

  def train(p, s, x, y):
    (loss, _), g = jax.value_and_grad(
        multi_head.loss_and_logits, argnums=1, has_aux=True)(
            graphdef, p, x, y, 0.1)
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss

  def batch(b):
    return (jax.ShapeDtypeStruct((b, *token_shape), jnp.float32),
            jax.ShapeDtypeStruct((b,), jnp.int32))

  step, example = _per_example(
      lambda b: _flops(train, params, opt_state, *batch(b)))
  _, forward = _per_example(lambda b: _flops(
      lambda p, x: nnx.merge(graphdef, p)(x), params, batch(b)[0]))
  return ProbeCost(heads * step, heads * example, heads * forward, heads)


def regress_cost(token_shape, output_dim: int, hidden: int = 4096,
                 blocks: int = 2, pool_grid: int = 0) -> ProbeCost:
  """The MLP action decoder's FLOPs on pair features of `token_shape`."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx
  from lary_jax.probes import mlp_decoder
  from lary_jax.probes import train_regressor
  config = mlp_decoder.Config(
      train_regressor.input_dim(tuple(token_shape), pool_grid), output_dim,
      hidden=hidden, blocks=blocks)
  graphdef, params = nnx.split(nnx.eval_shape(
      lambda: mlp_decoder.make(config, seed=0)))
  opt = optax.adamw(1e-4, weight_decay=1e-4)
  opt_state = jax.eval_shape(opt.init, params)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)

  def train(p, s, x, y, k):
    def loss(p):
      z = train_regressor.flatten_features(x, pool_grid)
      return mlp_decoder.loss(nnx.merge(graphdef, p), z, y, k)
    value, g = jax.value_and_grad(loss)(p)
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s, value

  def batch(b):
    return (jax.ShapeDtypeStruct((b, *token_shape), jnp.float32),
            jax.ShapeDtypeStruct((b, output_dim), jnp.float32))

  step, example = _per_example(
      lambda b: _flops(train, params, opt_state, *batch(b), key))
  _, forward = _per_example(lambda b: _flops(
      lambda p, x: nnx.merge(graphdef, p)(
          train_regressor.flatten_features(x, pool_grid)),
      params, batch(b)[0]))
  return ProbeCost(step, example, forward, 1)


def probe_flops(cost: ProbeCost, train_rows: int, eval_rows: int, *,
                epochs: int, global_batch: int, holdout: float) -> float:
  """FLOPs of training on a split `epochs` times, evaluating every epoch."""
  train = round(train_rows * (1 - holdout))
  steps = max(1, math.ceil(train / global_batch))
  evaluated = eval_rows + train_rows - train
  return epochs * (steps * (cost.train_step + global_batch *
                            cost.train_example)
                   + evaluated * cost.eval_example)


@dataclasses.dataclass(frozen=True)
class HostRates:
  """Seconds a frame on one host core, and stored bytes a frame."""

  prepare_s: float  # decode a source frame, resize to 224, encode PNG
  decode_s: float  # decode a stored 224 PNG
  png_bytes: float  # a stored 224 frame


def measure_host(repeats: int = 20) -> HostRates:
  """Times prepare's and extraction's per-frame host work on one core."""
  # pylint: disable=g-import-not-at-top
  from lary_jax.data import images
  rng = np.random.default_rng(0)
  h, w = SOURCE_SIZE
  # A smooth scene plus camera noise: PNG sizes and speeds like a camera
  # frame's, not like noise or a flat render.
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  base = np.stack([np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(3)],
                  -1) * 90 + 128
  frame = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(
      np.uint8)
  source = images.encode_png(frame)
  start = time.process_time()
  for _ in range(repeats):
    stored = images.encode_png(images.resize_bicubic(
        images.decode_image(source), (224, 224)))
  prepare_s = (time.process_time() - start) / repeats
  start = time.process_time()
  for _ in range(repeats):
    images.decode_image(stored)
  decode_s = (time.process_time() - start) / repeats
  return HostRates(prepare_s, decode_s, len(stored))


# ---------------------------------------------------------------- projection


@dataclasses.dataclass
class Totals:
  rows: int = 0
  frames: int = 0
  encode_flops: float = 0.0
  feature_bytes: float = 0.0
  probe_flops: float = 0.0


def protocol_totals(splits: list[Split], encoder) -> dict[str, Totals]:
  """Per task: rows, frames, encode FLOPs, feature bytes, probe FLOPs."""
  out = {}
  for task in ("classification", "regression"):
    mine = [s for s in splits if s.task == task]
    if not mine:
      continue
    per_row, shape = encode_cost(encoder, task)
    t = Totals()
    t.rows = sum(s.rows for s in mine)
    t.frames = t.rows * FRAMES[task]
    t.encode_flops = t.rows * per_row
    t.feature_bytes = t.rows * 2 * math.prod(shape)
    if task == "classification":
      cost = classify_cost(shape, classes=123)
    else:
      cost = regress_cost(shape, output_dim=5 * 7)
    # Each dataset is its own probe, trained on its train split and
    # evaluated on the others.
    for name in sorted({s.dataset for s in mine}):
      rows = [s for s in mine if s.dataset == name]
      train = sum(s.rows for s in rows if s.split == "train")
      held = sum(s.rows for s in rows if s.split != "train")
      if train:
        t.probe_flops += probe_flops(cost, train, held, epochs=20,
                                     global_batch=256, holdout=0.1)
    out[task] = t
  return out


def project(totals: dict[str, Totals], host: HostRates, chip: chips.Chip,
            n: int, mfu: float) -> dict[str, float]:
  """Seconds of each stage on `n` chips at `mfu`; storage in bytes."""
  frames = sum(t.frames for t in totals.values())
  cores = chip.host_cores * n
  flop_s = chip.bf16_tflops * 1e12 * mfu * n
  out = {
      "prepare": frames * host.prepare_s / cores,
      "decode": frames * host.decode_s / cores,
      "encode": sum(t.encode_flops for t in totals.values()) / flop_s,
      "probe": sum(t.probe_flops for t in totals.values()) / flop_s,
      "frames_bytes": frames * host.png_bytes,
      "features_bytes": sum(t.feature_bytes for t in totals.values()),
  }
  out["extract"] = max(out["decode"], out["encode"])
  out["wall"] = out["prepare"] + out["extract"] + out["probe"]
  out["chip_hours"] = out["wall"] * n / 3600
  return out


def _hours(s: float) -> str:
  if s >= 3600:
    return f"{s / 3600:.1f} h"
  return f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"


def projection_table(splits: list[Split], encoder_name: str, mfu: float,
                     host: HostRates, totals: dict[str, Totals]) -> str:
  """The README-ready table (and what it assumes)."""
  rows = []
  for name, n in TARGETS:
    chip = chips.by_name(name)
    p = project(totals, host, chip, n, mfu)
    label = f"1 x {name}" if n == 1 else f"{name.split()[-1]}-{n}"
    rows.append(
        f"| {label} | {_hours(p['prepare'])} | {_hours(p['decode'])} / "
        f"{_hours(p['encode'])} | {_hours(p['probe'])} | "
        f"**{_hours(p['wall'])}** | {p['chip_hours']:,.0f} |")
  t = {k: totals[k] for k in totals}
  clips = t["classification"].rows if "classification" in t else 0
  pairs = t["regression"].rows if "regression" in t else 0
  storage = project(totals, host, chips.by_name(TARGETS[0][0]), 1, mfu)
  estimated = sum(s.rows for s in splits if s.source.startswith("~"))
  enc = sum(x.encode_flops for x in t.values())
  probe = sum(x.probe_flops for x in t.values())
  return f"""All of LARYBench ({clips:,} clips and {pairs:,} pairs; \
{estimated:,} of these rows estimated, see `benchmarks/cost_model.py`) with \
`{encoder_name}` features (DINOv2 ViT-L/14's architecture), the protocol's \
probes (five attentive heads; the MLP decoder; 20 epochs, one seed), bf16 \
at {mfu:.0%} MFU (assumed), each stage split over the chips:

| where | prepare (host) | extract: decode (host) / encode (chips) | probes | wall time | chip-hours |
|---|---|---|---|---|---|
""" + "\n".join(rows) + f"""

Storage: {storage['frames_bytes'] / 1e12:.2f} TB of prepared frames (PNG, \
{host.png_bytes / 1024:.0f} KiB a frame), \
{storage['features_bytes'] / 1e12:.2f} TB of float16 features. Work: \
{enc / 1e18:.2f} EFLOP to encode, {probe / 1e18:.2f} EFLOP for the probes \
(XLA's counts). Host: {host.prepare_s * 1e3:.1f} ms a frame to prepare, \
{host.decode_s * 1e3:.1f} ms to decode (one core, measured), \
{chips.by_name(TARGETS[0][0]).host_cores:g} (H100) / \
{chips.by_name(TARGETS[1][0]).host_cores:g} (v5e) host cores a chip."""


# --------------------------------------------------------------- the check


def check(workdir: str, host: HostRates) -> tuple[str, dict[str, float]]:
  """Predicted vs measured stage times of a finished `run` in `workdir`.

  Returns:
    The table (markdown) and measured / predicted of each modelled stage.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  from lary_jax import benchmark_run
  from lary_jax import commands
  from lary_jax import config_args
  from lary_jax import feature_store
  from lary_jax import workdir_layout
  from lary_jax.configs import default
  from lary_jax.encoders import registry
  from lary_jax.lams import train_lam
  gemm = min(_timed(report.gemm_step()) for _ in range(5))
  peak = report.GEMM_FLOPS / gemm
  cores = os.cpu_count()
  with open(workdir_layout.run_timings_file(workdir)) as f:
    timing = json.load(f)[0]  # the run from nothing
  cfg = benchmark_run.stage_config(default.get_config())
  stores = {}  # (dataset, split, model) -> manifest
  for path in sorted(_find(workdir_layout.features_root(workdir),
                           feature_store.MANIFEST)):
    parts = os.path.relpath(path, workdir).split(os.sep)
    with open(path) as f:
      stores[tuple(parts[1:4])] = json.load(f)
  rows, predicted = [], {}  # stage -> (chip s, host s)
  # Extraction: every split of every dataset, host decode then compute
  # (on a CPU they share the cores).
  lam = config_args.read(cfg.run.lam_config, "--config.run.lam_config").lam
  # Where `run` trained it in this workdir (a copied workdir's stores still
  # name the original's path).
  lam_checkpoint = train_lam.checkpoint_dir(train_lam.workdir_of(workdir,
                                                                 lam))
  for stage in timing["stages_s"]:
    if not stage.startswith("extract_"):
      continue
    model = stage.removeprefix("extract_")
    mine = {k: v for k, v in stores.items() if k[2] == model}
    store = workdir_layout.features_dir(
        workdir_layout.features_root(workdir), *next(iter(mine)))
    with open(os.path.join(store, feature_store.RUN)) as f:
      fields = json.load(f)
    name, checkpoint = model, fields.get("checkpoint")
    if model == benchmark_run.RUN_LAM:
      name, checkpoint = lam.model, lam_checkpoint
    encoder = registry.load(name, checkpoint, **commands.encoder_options(
        fields.get("encoder_options", "")))
    flops = frames = 0
    for (dataset, _, _), manifest in mine.items():
      task = ("classification" if dataset.endswith("classification")
              else "regression")
      flops += manifest["num_rows"] * encode_cost(encoder, task)[0]
      if encoder.inputs == "frames":  # nothing to decode for states
        frames += manifest["num_rows"] * FRAMES[task]
    predicted[stage] = (flops / peak, frames * host.decode_s / cores)
  # Probes.
  for stage in timing["stages_s"]:
    if not stage.startswith(("classify_", "regress_")):
      continue
    task, rest = stage.split("_", 1)
    dataset = "sim_classification" if task == "classify" else (
        "sim_regression")
    model = rest.removeprefix(dataset + "_")
    if task == "regress":
      model = model.rsplit("_", 2)[0]
    splits = {k[1]: v for k, v in stores.items()
              if k[0] == dataset and k[2] == model}
    shape = tuple(splits["train"]["token_shape"])
    train = splits["train"]["num_rows"]
    held = sum(v["num_rows"] for s, v in splits.items() if s != "train")
    if task == "classify":
      c = cfg.classify
      cost = classify_cost(shape, classes=12, **c.probe.to_dict())
    elif stage.endswith(("_mlp_absolute", "_mlp_relative")):
      c = cfg.regress
      cost = regress_cost(shape, 5 * 7 if stage.endswith("absolute") else 7,
                          hidden=c.mlp_hidden, blocks=c.mlp_blocks,
                          pool_grid=c.pool_grid)
    else:
      continue  # the DiT: its sampling is a 500-step loop
    flops = probe_flops(cost, train, held, epochs=c.epochs,
                        global_batch=c.global_batch, holdout=c.holdout)
    predicted[stage] = (flops / peak, 0.0)
  # The LAM: its training steps.
  if "train_lam" in timing["stages_s"]:
    predicted["train_lam"] = (lam.steps * lam_step_flops(lam) / peak,
                              lam.steps * lam.global_batch * 2 *
                              host.decode_s / cores)
  ratios = {}
  for stage, wall in timing["stages_s"].items():
    compile_s = timing.get("compile", {}).get(stage, {}).get("compile_s", 0)
    if stage not in predicted:
      rows.append(f"| {stage} | - | - | {compile_s:.1f} | not modelled | "
                  f"{wall:.1f} | - |")
      continue
    chip_s, host_s = predicted[stage]
    total = chip_s + host_s + compile_s
    ratios[stage] = wall / total
    rows.append(f"| {stage} | {chip_s:.2f} | {host_s:.2f} | {compile_s:.1f} "
                f"| {total:.1f} | {wall:.1f} | {wall / total:.1f}x |")
  load = os.getloadavg()[0]
  return f"""The model on this CPU against a finished `run` \
(`{os.path.basename(os.path.normpath(workdir))}`, from its \
`run_timings.json`): chip = a jitted {report.GEMM_N}^3 fp32 GEMM measured \
now, {peak / 1e9:.0f} GFLOP/s (load average {load:.1f}), at 100% \
"MFU"; host = {cores} cores at the per-frame rates measured here; plus the \
compile seconds `run` measured in the stage. Rendering (in `data`) and the \
report are not modelled.{_overlap_note(timing)}

| stage | compute at the GEMM peak, s | host decode, s | compile, s (measured) | predicted, s | measured, s | measured / predicted |
|---|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n", ratios


def _overlap_note(timing: dict) -> str:
  """What a measured probe stage's time includes when stages overlapped."""
  threads = timing.get("probe_threads", 1)
  if threads <= 1:
    return ""
  return (f" The run trained {threads} probe stages at a time (its "
          "`probe_threads`): each probe stage's measured time includes the "
          "cores it shared with another, and the small probes' fixed costs "
          "(dispatch, evaluation, checkpoints, plots), which the model does "
          "not count.")


def lam_step_flops(lam_cfg) -> float:
  """XLA's FLOPs of one training step of the LAM config section."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from lary_jax import mesh as mesh_lib
  from lary_jax.lams import lapa
  from lary_jax.lams import train_lam
  cfg = getattr(lapa.Config, lam_cfg.preset)()
  options = train_lam.Options(global_batch=lam_cfg.global_batch,
                              compute_dtype="float32")
  mesh = mesh_lib.make_mesh()
  graphdef, state = train_lam.init_state(lapa, cfg, options, jnp.float32,
                                         mesh)
  step = train_lam.make_train_step(lapa, cfg, graphdef, state, options, mesh)
  images = jax.ShapeDtypeStruct(
      (lam_cfg.global_batch, 2, cfg.image_size, cfg.image_size, 3), jnp.uint8)
  with _accelerator_attention():
    return report.xla_flops(step.lower(state, images,
                                       jnp.int32(0)).compile())


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def _find(root: str, name: str):
  for dirpath, _, files in os.walk(root):
    if name in files:
      yield os.path.join(dirpath, name)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--encoder", default="L/14",
                      help="ViT size of the features (DINOv2 layout)")
  parser.add_argument("--mfu", type=float, default=0.4)
  parser.add_argument("--metadata_dir", default=None,
                      help="count rows from LARYBench's data/ CSVs here")
  parser.add_argument("--check", default=None, metavar="WORKDIR",
                      help="predicted vs measured stages of a `run`")
  parser.add_argument("--write", action="store_true")
  args = parser.parse_args()
  host = measure_host()
  if args.check:
    table, ratios = check(args.check, host)
    body = (f"## cost_model: predicted vs measured stage times\n\n"
            f"`python benchmarks/cost_model.py --check WORKDIR` "
            f"({report.machine()}).\n\n" + table)
    beside = (
        f"Checked on this project's CPU against a measured `run` (BENCHMARKS."
        f"md, cost_model): each modelled stage took "
        f"{min(ratios.values()):.1f}-{max(ratios.values()):.1f}x the "
        "predicted time, the model counting compute at the GEMM peak, host "
        "decoding and the compile seconds the run measured.")
    print(body + "\n" + beside)
    if args.write:
      report.write_section("cost_model", body)
      report.write_section("cost_model_check", beside, README_MD)
    return
  splits = (counted_rows(args.metadata_dir) if args.metadata_dir
            else _estimated_rows())
  encoder = abstract_vit(args.encoder)
  totals = protocol_totals(splits, encoder)
  table = projection_table(splits, f"vit:{args.encoder}", args.mfu, host,
                           totals)
  body = (f"<!-- written by `python benchmarks/cost_model.py --write` "
          f"({report.machine()}) -->\n" + table)
  print(body)
  if args.write:
    report.write_section("cost_model", body, README_MD)


if __name__ == "__main__":
  main()
