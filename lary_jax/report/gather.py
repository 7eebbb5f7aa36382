"""Reading a workdir's results and a CSV of published numbers.

  <workdir>/classify/DATASET/MODEL/results.json            (+ seed_<s>/)
  <workdir>/regress/DATASET/MODEL/TYPE_MODE/results.json   (+ seed_<s>/)
  (paths from `workdir_layout`)
  -> `collect`: a `Leaderboard`, each `Run` with the settings in which it
     left the protocol (`deviations`, against configs/default.py)
  --published CSV -> `read_published`: (task, dataset, model, decoder,
     split) -> value
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from lary_jax import result_keys as keys
from lary_jax import upstream_protocol
from lary_jax import workdir_layout as layout
from lary_jax.configs import default
from lary_jax.errors import LaryError
from lary_jax.report.leaderboard import CLASSIFICATION
from lary_jax.report.leaderboard import Leaderboard
from lary_jax.report.leaderboard import METRIC
from lary_jax.report.leaderboard import NOT_RECORDED
from lary_jax.report.leaderboard import PublishedKey
from lary_jax.report.leaderboard import REGRESSION
from lary_jax.report.leaderboard import Run
from lary_jax.report.leaderboard import SELECTIONS

# What a run records (path in a seed's results.json) -> the config field
# (configs/default.py) that holds the protocol's value.
_CLASSIFY_CHECKS = (
    ("probe.model_dim", "classify.probe.model_dim"),
    ("probe.num_heads", "classify.probe.num_heads"),
    ("probe.depth", "classify.probe.depth"),
    ("probe.pool_grid", "classify.probe.pool_grid"),
    ("training.epochs", "classify.epochs"),
    ("training.global_batch", "classify.global_batch"),
    ("training.label_smoothing", "classify.label_smoothing"),
    ("training.balanced", "classify.balanced"))
_REGRESS_CHECKS = (
    ("training.epochs", "regress.epochs"),
    ("training.global_batch", "regress.global_batch"),
    ("training.lr", "regress.lr"),
    ("training.weight_decay", "regress.weight_decay"),
    ("training.warmup", "regress.warmup"),
    ("training.compute_dtype", "regress.compute_dtype"),
    ("training.pool_grid", "regress.pool_grid"))
_DECODER_CHECKS = {
    "mlp": (("decoder_shape.hidden", "regress.mlp_hidden"),
            ("decoder_shape.blocks", "regress.mlp_blocks")),
    "dit": (("decoder_shape.hidden", "regress.dit_hidden"),
            ("decoder_shape.depth", "regress.dit_depth"),
            ("decoder_shape.num_heads", "regress.dit_heads"),
            ("decoder_shape.clip_sample", "regress.dit_clip_sample"))}


def _read_json(path: str) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except (OSError, ValueError) as e:
    raise LaryError(f"{path}: cannot read it as JSON ({e}); run the stage "
                    "again or remove the folder") from None
  if not isinstance(obj, dict):
    raise LaryError(f"{path}: expected a JSON object, got "
                    f"{type(obj).__name__}")
  return obj


def _subdirs(path: str) -> list[str]:
  if not os.path.isdir(path):
    return []
  return sorted(e.path for e in os.scandir(path) if e.is_dir())


def _run_folders(workdir: str) -> Iterable[tuple[str, str]]:
  for dataset in _subdirs(layout.probe_root(workdir, layout.CLASSIFY)):
    for model in _subdirs(dataset):
      yield CLASSIFICATION, model
  for dataset in _subdirs(layout.probe_root(workdir, layout.REGRESS)):
    for model in _subdirs(dataset):
      for decoder in _subdirs(model):
        yield REGRESSION, decoder


def collect(workdir: str) -> Leaderboard:
  """Reads every classification and regression result under `workdir`.

  Args:
    workdir: the folder that `classify` and `regress` wrote into.

  Returns:
    The runs, sorted by task, dataset, model and decoder, and the folders
    of runs that have seeds but no summary yet (killed or still running).

  Raises:
    LaryError: the folder is missing, holds no results, or a results.json
      cannot be read.
  """
  if not os.path.isdir(workdir):
    raise LaryError(f"--workdir {workdir}: no such folder; give the workdir "
                    "that `classify` and `regress` wrote into")
  runs, unfinished = [], []
  for task, folder in _run_folders(workdir):
    rel = os.path.relpath(folder, workdir)
    if os.path.exists(layout.results_file(folder)):
      runs.append(_read_run(task, folder, rel))
    elif any(layout.is_seed_dir(d) for d in _subdirs(folder)):
      unfinished.append(rel)
  if not runs:
    extra = (f"; unfinished runs (no results.json yet): {unfinished}"
             if unfinished else "")
    raise LaryError(
        f"no results in {workdir}: expected classify/DATASET/MODEL/"
        "results.json or regress/DATASET/MODEL/TYPE_MODE/results.json; run "
        f"`classify` or `regress` first{extra}")
  return Leaderboard(workdir, tuple(runs), tuple(unfinished))


def _read_run(task: str, folder: str, rel: str) -> Run:
  path = layout.results_file(folder)
  summary = _read_json(path)
  if not isinstance(summary.get(keys.SEEDS), list) or (
      SELECTIONS[0][0] not in summary):
    raise LaryError(f"{path}: expected the summary over seeds of a "
                    f"{task} run (keys `seeds`, `upstream_style`)")
  seeds = {}
  for seed in summary[keys.SEEDS]:
    seed_path = layout.results_file(layout.seed_dir(folder, seed))
    if os.path.exists(seed_path):
      seeds[int(seed)] = _read_json(seed_path)
  parts = rel.split(os.sep)
  decoder = parts[3] if task == REGRESSION else ""
  model_type = summary.get("model_type", decoder.partition("_")[0])
  return Run(task=task, dataset=str(summary.get("dataset", parts[1])),
             model=str(summary.get("model", parts[2])), decoder=decoder,
             folder=rel, summary=summary, seeds=seeds,
             deviations=deviations(task, seeds, model_type))


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
  for key in dotted.split("."):
    if not isinstance(tree, Mapping) or key not in tree:
      return None
    tree = tree[key]
  return tree


def _same(got: Any, want: Any) -> bool:
  if isinstance(want, float) and isinstance(got, (int, float)):
    return math.isclose(got, want, rel_tol=1e-9)
  return got == want


def deviations(task: str, seeds: Mapping[int, Mapping[str, Any]],
               model_type: str = "mlp") -> tuple[str, ...]:
  """Where a run's recorded settings differ from configs/default.py.

  Args:
    task: CLASSIFICATION or REGRESSION.
    seeds: seed -> that seed's results.json (with `probe`, `training`,
      `decoder_shape` as the stages record them).
    model_type: the regression decoder, "mlp" or "dit".

  Returns:
    One "config.field=value (protocol: value)" per differing setting, in a
    fixed order; a note instead when no seed recorded its settings.
  """
  config = default.get_config().to_dict()
  checks = _CLASSIFY_CHECKS if task == CLASSIFICATION else (
      _REGRESS_CHECKS + _DECODER_CHECKS.get(model_type, ()))
  found: dict[str, None] = {}  # ordered set
  recorded = False
  for results in seeds.values():
    for path, field in checks:
      got = _lookup(results, path)
      if got is None:
        continue
      recorded = True
      want = _lookup(config, field)
      if not _same(got, want):
        found[f"{field}={got} (protocol: {want})"] = None
    if task == CLASSIFICATION and "heads" in results.get("training", {}):
      if not _upstream_heads(results["training"]["heads"]):
        found["classify heads (lr, weight decay) differ from upstream's "
              "five"] = None
  if not recorded:
    return (f"{NOT_RECORDED} in the seeds' results.json",)
  return tuple(found)


def _upstream_heads(heads: Sequence[Sequence[float]]) -> bool:
  want = np.asarray(upstream_protocol.HEADS, np.float64)
  got = np.asarray(heads, np.float64)
  return got.shape == want.shape and np.allclose(got, want)


def read_published(csv_path: str) -> dict[PublishedKey, float]:
  """Published numbers from a CSV (columns: the module docstring).

  Args:
    csv_path: the CSV file.

  Returns:
    (task, dataset, model, decoder, split) -> value; decoder "" where the
    row names none.

  Raises:
    LaryError: a missing file or column, or a row with a bad task, metric,
      split or value, or a row given twice; the message names the line.
  """
  try:
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
      reader = csv.DictReader(f)
      header, rows = reader.fieldnames or [], list(reader)
  except OSError as e:
    raise LaryError(f"--published {csv_path}: cannot read it ({e})") from None
  missing = [c for c in ("task", "dataset", "model", "metric", "value")
             if c not in header]
  if missing:
    raise LaryError(f"{csv_path}: no column(s) {missing}; expected a header "
                    "row task,dataset,model,metric,value[,split][,decoder]")
  splits = {"validation": keys.VALIDATION, "val": keys.VALIDATION,
            "seen": keys.VALIDATION, "": keys.VALIDATION,
            "unseen": keys.UNSEEN}
  out: dict[PublishedKey, float] = {}
  lines: dict[PublishedKey, int] = {}
  for line, row in enumerate(rows, start=2):
    cell = {k: (v or "").strip() for k, v in row.items() if k}
    where = f"{csv_path} line {line}"
    task = cell["task"].lower()
    if task not in METRIC:
      raise LaryError(f"{where}: task {cell['task']!r}; expected "
                      "classification or regression")
    if cell["metric"].lower() != METRIC[task]:
      raise LaryError(f"{where}: metric {cell['metric']!r}; a {task} row "
                      f"takes {METRIC[task]}")
    split = splits.get(cell.get("split", "").lower())
    if split is None:
      raise LaryError(f"{where}: split {cell['split']!r}; expected "
                      "validation or unseen")
    try:
      value = float(cell["value"])
    except ValueError:
      raise LaryError(f"{where}: value {cell['value']!r} is not a "
                      "number") from None
    if task == CLASSIFICATION and not 0 <= value <= 100:
      raise LaryError(f"{where}: top1 {value} is outside 0..100; give it "
                      "in percent")
    key = (task, cell["dataset"], cell["model"],
           cell.get("decoder", "") if task == REGRESSION else "", split)
    if key in out:
      raise LaryError(f"{where}: the same number as line {lines[key]} "
                      f"({', '.join(filter(None, key))})")
    out[key], lines[key] = value, line
  return out
