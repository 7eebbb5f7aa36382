"""The `report` command: every result in a workdir -> report.md and .html.

  <workdir>/classify/DATASET/MODEL/results.json            (+ seed_<s>/)
  <workdir>/regress/DATASET/MODEL/TYPE_MODE/results.json   (+ seed_<s>/)
  -> a `Leaderboard`: one `Run` per folder with its seeds' results and the
     settings in which it left the protocol (configs/default.py)
  -> report.md: tables that read in a terminal or on GitHub
  -> report.html: one file with the same tables, bar charts, confusion
     matrices, per-dimension MSE and trajectory plots (PNGs inlined)

Published numbers (`--published`) come from a CSV with a header row:

  task,dataset,model,metric,value[,split][,decoder]

  task     `classification` or `regression`
  dataset  our dataset name (human_1st, robot_1st, calvin, ...)
  model    our model name, as in the results folder
  metric   `top1` (classification; value in percent, as papers print it)
           or `mse` (regression; normalised actions)
  split    optional: `validation` (the seen validation set; the default)
           or `unseen`
  decoder  optional, regression: the run folder TYPE_MODE, such as
           `mlp_absolute`; left empty, the number stands beside every
           decoder of that dataset and model
"""

from __future__ import annotations

import base64
import collections
import csv
import dataclasses
import html
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from lary_jax import upstream_protocol
from lary_jax.configs import default
from lary_jax.errors import LaryError

CLASSIFICATION, REGRESSION = "classification", "regression"
VALIDATION, UNSEEN = "validation", "unseen"
# (key in results.json, label in the report)
SELECTIONS = (("upstream_style", "upstream-style"), ("honest", "honest"))
SPLIT_LABELS = {VALIDATION: "seen", UNSEEN: "unseen"}
METRIC = {CLASSIFICATION: "top1", REGRESSION: "mse"}
NOT_PROTOCOL = "laptop config, not the protocol"
CONTROL_BANNER = ("A positive control missed its threshold: the probes or "
                  "the data path failed, not (only) the models")
NOT_RECORDED = "config not recorded"

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

# Rows by role. Positive controls must reach their thresholds on LARY-Sim
# (when one misses, the probes failed, not the models); floors are what no
# representation should lose to.
CONTROLS = ("sim_oracle", "flow")
FLOORS = ("pixels", "random_vit")
# Models beat the best floor when the gap exceeds this many standard errors.
FLOOR_MARGIN_SE = 3.0
# (model, task, decoder ("" any), split, check, threshold): honest numbers,
# mean over seeds, on LARY-Sim's datasets. "top1": at least; "mse_ratio":
# MSE / predict-the-mean at most; "above_floors": more than `threshold`
# standard errors above the best floor (without floors: the 95% interval
# of top-1 above chance).
CONTROL_CHECKS = (
    ("sim_oracle", CLASSIFICATION, "", VALIDATION, "top1", 0.90),
    ("sim_oracle", CLASSIFICATION, "", UNSEEN, "top1", 0.80),
    ("sim_oracle", REGRESSION, "mlp_absolute", VALIDATION, "mse_ratio", 0.3),
    ("sim_oracle", REGRESSION, "mlp_relative", VALIDATION, "mse_ratio", 0.3),
    ("flow", CLASSIFICATION, "", VALIDATION, "above_floors", FLOOR_MARGIN_SE),
)

# (task, dataset, model, decoder, split); decoder "" matches any decoder.
PublishedKey = tuple[str, str, str, str, str]
Table = tuple[list[str], list[list[str]]]  # header, rows of cells


@dataclasses.dataclass(frozen=True)
class Run:
  """One results folder: its summary over seeds and each seed's results."""

  task: str  # CLASSIFICATION or REGRESSION
  dataset: str
  model: str
  decoder: str  # regression: the folder's TYPE_MODE; classification: ""
  folder: str  # relative to the workdir
  summary: Mapping[str, Any]
  seeds: Mapping[int, Mapping[str, Any]]
  deviations: tuple[str, ...]  # "field=value (protocol: value)"

  @property
  def name(self) -> str:
    return " ".join(filter(None, (self.dataset, self.model, self.decoder)))

  @property
  def role(self) -> str:
    """"control", "floor" or "model"."""
    if self.model in CONTROLS:
      return "control"
    return "floor" if self.model in FLOORS else "model"

  def honest(self, split: str) -> Mapping[str, Any]:
    """The honest selection's numbers on `split` (upstream-style where the
    run held nothing out), {} where there are none."""
    for sel in ("honest", "upstream_style"):
      value = self.summary.get(sel, {}).get(split)
      if isinstance(value, dict):
        return value
    return {}

  def standard_error(self, split: str) -> float | None:
    """Of the honest mean over seeds: the examples' binomial (or MSE)
    variance and the seed spread together."""
    value = self.honest(split)
    metric = METRIC[self.task]
    if metric not in value:
      return None
    stat = value[metric]
    n_seeds = max(int(stat.get("n", 1)), 1)
    seed_var = stat["std"] ** 2 / n_seeds
    if self.task == CLASSIFICATION:
      examples = value.get("examples")
      p = stat["mean"]
      if not examples:
        return None
      return math.sqrt(p * (1 - p) / examples + seed_var)
    ci = value.get("mse_ci95")
    if not ci:
      return None
    # The interval's half width is ~1.96 standard errors.
    return (ci["high"] - ci["low"]) / (2 * 1.96)

  @property
  def splits(self) -> list[str]:
    """The reported splits, validation first."""
    found = {s for sel, _ in SELECTIONS
             for s, v in self.summary.get(sel, {}).items()
             if isinstance(v, dict) and METRIC[self.task] in v}
    return [s for s in (VALIDATION, UNSEEN) if s in found] + sorted(
        found - {VALIDATION, UNSEEN})

  def score(self, selection: str, split: str,
            metric: str) -> Mapping[str, float] | None:
    """{mean, std, n} over seeds, or None where the run has no such number."""
    value = self.summary.get(selection, {}).get(split, {})
    return value.get(metric) if isinstance(value, dict) else None


@dataclasses.dataclass(frozen=True)
class Leaderboard:
  """Every run of a workdir, and the published numbers to show beside."""

  workdir: str
  runs: tuple[Run, ...]
  unfinished: tuple[str, ...] = ()  # run folders with seeds but no summary
  published: Mapping[PublishedKey, float] = dataclasses.field(
      default_factory=dict)

  def of(self, task: str) -> list[Run]:
    return [r for r in self.runs if r.task == task]

  def published_value(self, run: Run, split: str) -> float | None:
    for decoder in (run.decoder, ""):
      key = (run.task, run.dataset, run.model, decoder, split)
      if key in self.published:
        return self.published[key]
    return None

  def unmatched_published(self) -> list[tuple[PublishedKey, float]]:
    """Published numbers that no run of ours stands beside."""
    ours = {(r.task, r.dataset, r.model, d, s) for r in self.runs
            for s in r.splits for d in (r.decoder, "")}
    return [(k, v) for k, v in self.published.items() if k not in ours]


# ---------------------------------------------------------------- reading


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
  for dataset in _subdirs(os.path.join(workdir, "classify")):
    for model in _subdirs(dataset):
      yield CLASSIFICATION, model
  for dataset in _subdirs(os.path.join(workdir, "regress")):
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
    if os.path.exists(os.path.join(folder, "results.json")):
      runs.append(_read_run(task, folder, rel))
    elif any(os.path.basename(d).startswith("seed_")
             for d in _subdirs(folder)):
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
  path = os.path.join(folder, "results.json")
  summary = _read_json(path)
  if not isinstance(summary.get("seeds"), list) or (
      SELECTIONS[0][0] not in summary):
    raise LaryError(f"{path}: expected the summary over seeds of a "
                    f"{task} run (keys `seeds`, `upstream_style`)")
  seeds = {}
  for seed in summary["seeds"]:
    seed_path = os.path.join(folder, f"seed_{seed}", "results.json")
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
  splits = {"validation": VALIDATION, "val": VALIDATION, "seen": VALIDATION,
            "": VALIDATION, "unseen": UNSEEN}
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


# ------------------------------------------------------------ the tables


def _mse(value: float) -> str:
  if value == 0 or abs(value) >= 1e-3:
    return f"{value:.4f}"
  return f"{value:.2e}"


def _percent(value: float) -> str:
  return f"{100 * value:.1f}"


def _spread(stat: Mapping[str, float] | None,
            fmt: Callable[[float], str]) -> str:
  """mean +- std (n seeds); no spread is claimed from one seed."""
  if not stat:
    return "-"
  n = int(stat["n"])
  if n > 1:
    return f"{fmt(stat['mean'])} ± {fmt(stat['std'])} ({n} seeds)"
  return f"{fmt(stat['mean'])} (1 seed)"


def _config_cell(run: Run, notes: Mapping[str, int]) -> str:
  if not run.deviations:
    return "protocol"
  what = (NOT_RECORDED if run.deviations[0].startswith(NOT_RECORDED)
          else NOT_PROTOCOL)
  return f"{what} [{notes[run.folder]}]"


def _config_notes(board: Leaderboard) -> dict[str, int]:
  """Run folder -> the note number of its non-protocol settings."""
  notes: dict[str, int] = {}
  for run in board.runs:
    if run.deviations:
      notes[run.folder] = len(notes) + 1
  return notes


def _interval(value: Mapping[str, Any], key: str,
              fmt: Callable[[float], str]) -> str:
  ci = value.get(key)
  return f"[{fmt(ci['low'])}, {fmt(ci['high'])}]" if ci else ""


def honest_cell(run: Run, split: str) -> str:
  """The honest number: mean ± std (seeds) [95% interval], and "≈ chance"
  (classification) or "≈ mean or worse" (regression) where it reaches it."""
  value = run.honest(split)
  if run.task == CLASSIFICATION:
    text = " ".join(filter(None, (
        _spread(run.score("honest", split, "top1"), _percent),
        _interval(value, "top1_ci95", _percent))))
    return text + (" ≈ chance" if value.get("at_chance") else "")
  text = " ".join(filter(None, (
      _spread(run.score("honest", split, "mse"), _mse),
      _interval(value, "mse_ci95", _mse))))
  return text + (" ≈ mean or worse" if value.get("at_floor") else "")


def floor_gap(board: Leaderboard, run: Run, split: str
              ) -> tuple[float, float, Run] | None:
  """(gap, gap in standard errors of the difference, best floor) of a run's
  honest number over the best floor's (positive: better); None for floors,
  or without a floor or an error to compare with."""
  if run.role == "floor":
    return None
  floors = [r for r in board.runs if r.role == "floor" and
            (r.task, r.dataset, r.decoder) == (run.task, run.dataset,
                                               run.decoder)]
  metric = METRIC[run.task]
  mine = run.honest(split).get(metric)
  se = run.standard_error(split)
  if not floors or not mine or se is None:
    return None
  sign = 1 if run.task == CLASSIFICATION else -1  # MSE: lower is better
  best = max(floors, key=lambda r: sign * r.honest(split).get(
      metric, {"mean": -sign * np.inf})["mean"])
  theirs = best.honest(split).get(metric)
  their_se = best.standard_error(split)
  if not theirs or their_se is None:
    return None
  gap = sign * (mine["mean"] - theirs["mean"])
  return gap, gap / max(math.hypot(se, their_se), 1e-12), best


def versus_floors(board: Leaderboard, run: Run, split: str) -> str:
  """`floor_gap` as a cell: "+12.3 (4.1 SE vs pixels) ✓" ("" for floors)."""
  found = floor_gap(board, run, split)
  if found is None:
    return ""
  gap, z, best = found
  shown = _percent(gap) if run.task == CLASSIFICATION else _mse(gap)
  mark = " ✓" if z > FLOOR_MARGIN_SE else ""
  return f"{'+' if gap >= 0 else ''}{shown} ({z:.1f} SE vs {best.model}){mark}"


def _classification_table(board: Leaderboard,
                          roles: Sequence[str] = ("model", "floor")) -> Table:
  """One row per (dataset, model, split) of `roles`: the honest top-1 % with
  its 95% interval, the upstream-style one, and where chance lands."""
  notes = _config_notes(board)
  header = ["dataset", "model", "role", "split",
            "top-1 honest (95% interval)", "top-1 upstream-style",
            "top-5 upstream-style / honest", "chance (95% band)",
            "vs best floor", "published top-1", "seeds", "config"]
  rows = []
  for run in board.of(CLASSIFICATION):
    if run.role not in roles:
      continue
    for split in run.splits:
      top5 = [_spread(run.score(sel, split, "top5"), _percent)
              for sel, _ in SELECTIONS]
      published = board.published_value(run, split)
      band = run.honest(split).get("chance")
      chance = (f"{_percent(band['chance'])} ({_percent(band['low'])}-"
                f"{_percent(band['high'])})" if band else "-")
      rows.append([
          run.dataset, run.model, run.role, SPLIT_LABELS.get(split, split),
          honest_cell(run, split),
          _spread(run.score("upstream_style", split, "top1"), _percent),
          " / ".join(top5), chance, versus_floors(board, run, split),
          "-" if published is None else f"{published:.1f}",
          str(len(run.summary["seeds"])), _config_cell(run, notes)])
  return header, rows


def _regression_table(board: Leaderboard,
                      roles: Sequence[str] = ("model", "floor")) -> Table:
  """One row per (dataset, model, decoder, split) of `roles`: the honest MSE
  with its 95% interval beside the predict-the-train-mean floor."""
  notes = _config_notes(board)
  header = ["dataset", "model", "role", "decoder", "split",
            "MSE honest (95% interval)", "MSE upstream-style",
            "predict-the-mean MSE", "vs best floor",
            "robot-units MSE upstream-style / honest", "published MSE",
            "seeds", "config"]
  rows = []
  for run in board.of(REGRESSION):
    if run.role not in roles:
      continue
    floor = run.summary.get("floor") or {}
    for split in run.splits:
      units = [_spread(run.score(sel, split, "mse_units"), _mse)
               for sel, _ in SELECTIONS]
      published = board.published_value(run, split)
      rows.append([
          run.dataset, run.model, run.role, run.decoder,
          SPLIT_LABELS.get(split, split), honest_cell(run, split),
          _spread(run.score("upstream_style", split, "mse"), _mse),
          _mse(floor[split]) if split in floor else "-",
          versus_floors(board, run, split), " / ".join(units),
          "-" if published is None else _mse(published),
          str(len(run.summary["seeds"])), _config_cell(run, notes)])
  return header, rows


def control_failures(board: Leaderboard) -> list[str]:
  """One line per positive control that misses its threshold on LARY-Sim
  (or has no result where one is due)."""
  out = []
  for model, task, decoder, split, check, threshold in CONTROL_CHECKS:
    runs = [r for r in board.of(task) if r.model == model and
            r.dataset.startswith("sim_") and decoder in ("", r.decoder)]
    for run in runs:
      value = run.honest(split)
      where = f"{run.name} ({SPLIT_LABELS.get(split, split)})"
      if check == "top1":
        got = value.get("top1", {}).get("mean")
        if got is None or got < threshold:
          out.append(f"{where}: honest top-1 {_fmt_or_dash(got, _percent)}%"
                     f", needs >= {_percent(threshold)}%")
      elif check == "mse_ratio":
        got = value.get("mse", {}).get("mean")
        floor = (run.summary.get("floor") or {}).get(split)
        ratio = got / floor if got is not None and floor else None
        if ratio is None or ratio > threshold:
          out.append(f"{where}: honest MSE {_fmt_or_dash(ratio, _ratio)} of"
                     f" predict-the-mean, needs <= {threshold:g}x")
      elif check == "above_floors" and (
          gap := floor_gap(board, run, split)) is not None:
        if gap[1] <= threshold:
          out.append(f"{where}: honest top-1 {gap[1]:.1f} standard errors "
                     f"above {gap[2].model}, needs > {threshold:g}")
      elif value.get("at_chance", True):
        out.append(f"{where}: honest top-1 not above chance (its 95% "
                   "interval reaches chance)")
  return out


def _fmt_or_dash(value: float | None, fmt: Callable[[float], str]) -> str:
  return "-" if value is None else fmt(value)


def _ratio(value: float) -> str:
  return f"{value:.2f}x"


def probe_settings(board: Leaderboard) -> Table | None:
  """The probe and its training budget, per task and dataset, as recorded
  (every row of a dataset must share them). Training examples vary with the
  seed's held-out slice: their range."""
  header = ["task", "dataset", "probe", "updates", "training examples",
            "runs"]
  found: dict[tuple[str, str, str, str], tuple[set[int], list[str]]] = {}
  for run in board.runs:
    for results in run.seeds.values():
      sched = results.get("schedule")
      if not sched:
        continue
      if run.task == CLASSIFICATION:
        probe = results.get("probe", {})
        what = (f"attentive, width {probe.get('model_dim')}, depth "
                f"{probe.get('depth')}, pool {probe.get('pool_grid')}, "
                f"{len(results.get('training', {}).get('heads', []))} heads")
      else:
        shape = results.get("decoder_shape", {})
        what = f"{run.decoder}, " + ", ".join(
            f"{k} {v}" for k, v in shape.items())
      updates = (f"{sched['updates']} ({sched['epochs']} epochs x "
                 f"{sched['steps_per_epoch']} steps of "
                 f"{sched['global_batch']})")
      examples, models = found.setdefault(
          (run.task, run.dataset, what, updates), (set(), []))
      examples.add(int(sched["train_examples"]))
      if run.model not in models:
        models.append(run.model)
  if not found:
    return None
  rows = []
  for key, (examples, models) in found.items():
    low, high = min(examples), max(examples)
    rows.append([*key, str(low) if low == high else f"{low}-{high}",
                 ", ".join(models)])
  return header, rows


def _per_seed_table(run: Run) -> Table:
  """What each seed chose: epoch (and head), and its validation number."""
  metric = "top-1 %" if run.task == CLASSIFICATION else "MSE"
  header = ["seed"]
  for _, label in SELECTIONS:
    header += [f"{label}: chosen", f"{label}: seen {metric}"]
  rows = []
  for seed in run.summary["seeds"]:
    row = [str(seed)]
    for sel, _ in SELECTIONS:
      chosen = run.summary.get(sel, {}).get("per_seed", {}).get(str(seed))
      if not chosen:
        row += ["-", "-"]
        continue
      what = f"epoch {chosen['epoch']}"
      if "head" in chosen:
        # A seed's selection carries its head's hyper-parameters.
        head = run.seeds.get(seed, {}).get(sel, {})
        lr = f" (lr {head['lr']:g}, wd {head['weight_decay']:g})" if (
            "lr" in head) else ""
        what += f", head {chosen['head']}{lr}"
      value = (_percent(chosen["validation_top1"])
               if run.task == CLASSIFICATION
               else _mse(chosen["validation_mse"]))
      row += [what, value]
    rows.append(row)
  return header, rows


def _per_source_table(run: Run) -> Table | None:
  """Seen top-1 % per source dataset, mean over seeds (classification)."""
  sums: dict[str, dict[str, list[float]]] = collections.defaultdict(
      lambda: collections.defaultdict(list))
  counts: dict[str, int] = {}
  for results in run.seeds.values():
    for sel, _ in SELECTIONS:
      for source, v in results.get(sel, {}).get(
          "per_source_dataset", {}).items():
        sums[source][sel].append(v["top1"])
        counts[source] = v["count"]
  if not sums:
    return None
  header = ["source dataset", "clips"] + [f"top-1 {label}"
                                          for _, label in SELECTIONS]
  rows = []
  for source in sorted(sums):
    rows.append([source, str(counts[source])] + [
        _percent(float(np.mean(sums[source][sel])))
        if sums[source][sel] else "-" for sel, _ in SELECTIONS])
  return header, rows


def _per_dim_table(run: Run) -> Table | None:
  """MSE per action dimension and group at each selection's epoch, mean
  over seeds (regression)."""
  first = next(iter(run.seeds.values()), None)
  if not first or "dim_labels" not in first:
    return None
  dims = list(first["dim_labels"])
  groups = list(first.get("groups", {}))
  header = ["selection", "split", *dims, *groups]
  rows = []
  for sel, label in SELECTIONS:
    for split in run.splits:
      per_seed = [r[sel][split] for r in run.seeds.values()
                  if isinstance(r.get(sel, {}).get(split), dict)]
      if not per_seed:
        continue
      cells = [_mse(float(np.mean([m["mse_per_dim"][d] for m in per_seed])))
               for d in dims]
      cells += [_mse(float(np.mean([m["mse_groups"][g] for m in per_seed])))
                for g in groups]
      rows.append([label, SPLIT_LABELS.get(split, split), *cells])
  return header, rows


def _images(run: Run) -> list[tuple[str, str]]:
  """(caption, path relative to the workdir) of the first seed's plots."""
  if not run.seeds:
    return []
  seed = min(run.seeds)
  folder = os.path.join(run.folder, f"seed_{seed}")
  if run.task == CLASSIFICATION:
    names = [(f"confusion matrix, {label} selection, seed {seed}",
              f"confusion_{sel}.png") for sel, label in SELECTIONS]
  else:
    names = [(f"trajectories, {SPLIT_LABELS[s]} split, seed {seed}",
              f"trajectories_{s}.png") for s in (VALIDATION, UNSEEN)]
  return [(caption, os.path.join(folder, name)) for caption, name in names]


def _run_facts(run: Run) -> list[str]:
  first = run.seeds.get(min(run.seeds)) if run.seeds else {}
  facts = [f"folder `{run.folder}`",
           f"seeds {', '.join(map(str, run.summary['seeds']))}"]
  examples = (first or {}).get("examples")
  if examples:
    facts.append("examples " + ", ".join(f"{k} {v}"
                                         for k, v in examples.items()))
  holdout = run.summary.get("holdout_fraction")
  if holdout is not None:
    facts.append(f"held-out slice {100 * holdout:g}% of train")
  return facts


_HOW_TO_READ = (
    "honest: the head and epoch chosen on a held-out slice of train (never "
    "trained on), then reported on validation (and unseen); its 95% "
    "interval is a bootstrap over the evaluated examples and the seeds.",
    "upstream-style: the head and epoch with the best validation number, "
    "chosen on the validation set itself, as upstream reports (optimistic: "
    "the best of many candidates on the test set). Both are trained on "
    "train minus the held-out slice; upstream trains on all of train.",
    "Spread: mean ± sample std over seeds (n seeds); one seed shows no "
    "spread.",
    "seen = the validation split; unseen = held-out robots or tasks "
    "(regression datasets that have them).",
    "Classification: top-1 in percent. chance = 100 / classes, and the band "
    "is where 95% of uniform guesses land on that many examples; "
    "`≈ chance` marks an honest number whose interval reaches chance.",
    "Regression: MSE of normalised actions over the whole chunk; "
    "predict-the-mean = always predicting the training targets' mean (a "
    "decoder should beat it; `≈ mean or worse` marks one whose interval "
    "does not); robot-units MSE is in the robot's own units.",
    f"Roles: positive controls ({', '.join(CONTROLS)}) have their own "
    "section and are not ranked: `sim_oracle` reads LARY-Sim's recorded "
    "robot states, `flow` is classical optical flow; if one misses its "
    "threshold, the probes failed, not the models. Floors "
    f"({', '.join(FLOORS)}) are what any representation should beat; `vs "
    "best floor` is the gap to the best floor in standard errors of the "
    f"difference (✓ above {FLOOR_MARGIN_SE:g}).",
    f"config: `protocol` where every recorded setting is upstream's; "
    f"`{NOT_PROTOCOL}` where one differs (the note lists which): such "
    f"numbers do not compare with published ones; `{NOT_RECORDED}` where "
    "the run's files do not say.")

_TABLES = (
    (CLASSIFICATION, "Classification: top-1 accuracy (%)",
     _classification_table),
    (REGRESSION, "Regression: MSE (normalised actions)", _regression_table))


def _sections(board: Leaderboard) -> list[tuple[str, str, Table]]:
  """(task, title, table): the controls' tables first, then the ranked."""
  out = []
  for roles, prefix in ((("control",), "Positive controls: "),
                        (("model", "floor"), "")):
    for task, title, table in _TABLES:
      header, rows = table(board, roles)
      if rows:
        out.append((task, prefix + title, (header, rows)))
  return out


# -------------------------------------------------------------- markdown


def _md_cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def md_table(table: Table) -> list[str]:
  header, rows = table
  lines = ["| " + " | ".join(map(_md_cell, header)) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
  return lines


def _md_lines(board: Leaderboard, md_dir: str) -> list[str]:
  lines = ["# LARY results", ""]
  failures = control_failures(board)
  if failures:
    lines += [f"> **{CONTROL_BANNER}**", ">"]
    lines += [f"> - {f}" for f in failures]
    lines.append("")
  lines += [f"Workdir `{board.workdir}`; written by `python -m lary_jax.main "
            "report`.", "", "How to read:", ""]
  lines += [f"- {t}" for t in _HOW_TO_READ]
  for _, title, table in _sections(board):
    lines += ["", f"## {title}", "", *md_table(table)]
  settings = probe_settings(board)
  if settings:
    lines += ["", "## Probe settings", "", *md_table(settings)]
  notes = _config_notes(board)
  if notes:
    lines += ["", "## Config notes", ""]
    by_folder = {r.folder: r for r in board.runs}
    for folder, number in notes.items():
      run = by_folder[folder]
      lines.append(f"{number}. {run.task} {run.name}: "
                   + "; ".join(run.deviations))
  unmatched = board.unmatched_published()
  if unmatched:
    lines += ["", "## Published numbers with no run here", "",
              *md_table(_unmatched_table(unmatched))]
  if board.unfinished:
    lines += ["", "## Unfinished runs (seeds but no results.json)", ""]
    lines += [f"- `{f}`" for f in board.unfinished]
  lines += ["", "## Runs"]
  for run in board.runs:
    lines += ["", f"### {run.task}: {run.name}", "",
              "; ".join(_run_facts(run)) + ".", "",
              *md_table(_per_seed_table(run))]
    for table in (_per_source_table(run), _per_dim_table(run)):
      if table:
        lines += ["", *md_table(table)]
    for caption, rel in _images(run):
      if os.path.exists(os.path.join(board.workdir, rel)):
        target = os.path.relpath(os.path.join(board.workdir, rel), md_dir)
        lines += ["", f"![{caption}]({target.replace(os.sep, '/')})"]
  return lines + [""]


def _unmatched_table(unmatched: Sequence[tuple[PublishedKey, float]]
                     ) -> Table:
  header = ["task", "dataset", "model", "decoder", "split", "metric",
            "value"]
  rows = [[task, dataset, model, decoder or "any", SPLIT_LABELS[split],
           METRIC[task], f"{value:g}"]
          for (task, dataset, model, decoder, split), value in unmatched]
  return header, rows


def _write_text(path: str, text: str) -> None:
  # Whole file or nothing: a reader never sees half a report.
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def write_markdown(board: Leaderboard, path: str) -> None:
  """Writes the leaderboard as Markdown (GitHub tables, image links).

  Args:
    board: what `collect` read (with `published` filled in, if any).
    path: the .md file; image links are relative to its folder.
  """
  md_dir = os.path.dirname(os.path.abspath(path))
  _write_text(path, "\n".join(_md_lines(board, md_dir)))


# ------------------------------------------------------------------ html


def _png_uri(png: bytes) -> str:
  return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def bar_chart(title: str, ylabel: str, labels: Sequence[str],
              series: Mapping[str, Sequence[Mapping[str, float] | None]],
              published: Sequence[float | None] = (),
              reference: Sequence[float | None] = (),
              reference_label: str = "") -> bytes:
  """A grouped bar chart as PNG bytes.

  Args:
    title: the chart's title.
    ylabel: the y axis label.
    labels: one group of bars per label.
    series: bar name -> per label {mean, std, n} (std drawn as an error
      bar) or None (no bar).
    published: per label a published value (drawn as a black x) or None.
    reference: per label a reference value (a dashed line over the group,
      e.g. chance or the predict-the-mean MSE) or None.
    reference_label: the reference's legend entry.

  Returns:
    The PNG file's bytes.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  n, k = len(labels), len(series)
  width = 0.8 / max(k, 1)
  x = np.arange(n)
  fig, ax = plt.subplots(figsize=(max(5.5, 1.1 * n + 3), 3.4))
  for i, (name, stats) in enumerate(series.items()):
    mean = np.array([s["mean"] if s else np.nan for s in stats])
    # One seed has no spread: no error bar rather than a zero-width one.
    std = np.array([s["std"] if s and s["n"] > 1 else np.nan
                    for s in stats])
    ax.bar(x - 0.4 + width * (i + 0.5), mean, width, yerr=std, capsize=3,
           label=name, color=f"C{i}")
  legend = reference_label
  for i, value in enumerate(reference):
    if value is not None:
      ax.hlines(value, i - 0.45, i + 0.45, colors="grey", linestyles="--",
                label=legend or None)
      legend = ""  # one legend entry for all the groups' lines
  marks = [(i, v) for i, v in enumerate(published) if v is not None]
  if marks:
    ax.plot([i for i, _ in marks], [v for _, v in marks], "kx",
            markersize=9, mew=2, label="published")
  ax.set_xticks(x, labels, rotation=20 if n > 3 else 0, ha="right" if n > 3
                else "center", fontsize=8)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  plt.close(fig)
  return buf.getvalue()


def _charts(board: Leaderboard) -> list[tuple[str, str, bytes]]:
  """(task, caption, PNG) per task, dataset and split."""
  out = []
  for task in (CLASSIFICATION, REGRESSION):
    runs = board.of(task)
    for dataset in sorted({r.dataset for r in runs}):
      of_dataset = [r for r in runs if r.dataset == dataset]
      for split in (VALIDATION, UNSEEN):
        here = [r for r in of_dataset if split in r.splits]
        if not here:
          continue
        labels = [" ".join(filter(None, (r.model, r.decoder)))
                  + ("\n(laptop config)" if r.deviations else "")
                  for r in here]
        published = [board.published_value(r, split) for r in here]
        if task == CLASSIFICATION:
          series = {label: [_scaled(r.score(sel, split, "top1"), 100)
                            for r in here] for sel, label in SELECTIONS}
          reference = [100 / r.summary["num_classes"]
                       if r.summary.get("num_classes") else None
                       for r in here]
          ylabel, ref_label = "top-1 (%)", "chance"
        else:
          series = {label: [r.score(sel, split, "mse") for r in here]
                    for sel, label in SELECTIONS}
          reference = [(r.summary.get("floor") or {}).get(split)
                       for r in here]
          ylabel, ref_label = "MSE (normalised)", "predict-the-mean"
        caption = f"{dataset}, {SPLIT_LABELS[split]} split: {ylabel}"
        out.append((task, caption, bar_chart(
            caption + " (mean ± std over seeds)", ylabel, labels, series,
            published, reference, ref_label)))
  return out


def _scaled(stat: Mapping[str, float] | None,
            factor: float) -> dict[str, float] | None:
  if not stat:
    return None
  return {**stat, "mean": stat["mean"] * factor, "std": stat["std"] * factor}


_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: left; }
th { background: #f2f2f2; } tr:nth-child(even) td { background: #fafafa; }
td.warn { color: #a40000; } code { background: #f2f2f2; padding: 0 .2em; }
figure { display: inline-block; margin: .5em 1em .5em 0; }
figcaption { font-size: 12px; color: #555; } img { max-width: 100%; }
.wide { overflow-x: auto; }
.banner { background: #b00020; color: #fff; padding: .6em 1em;
          border-radius: 4px; margin: .5em 0 1em; }
"""


def _inline(text: str) -> str:
  """Escaped text with Markdown `code` spans as <code> (the .md's markup)."""
  return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _html_table(table: Table) -> str:
  header, rows = table
  head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
  body = []
  for row in rows:
    cells = "".join(
        f'<td class="warn">{_inline(c)}</td>' if c.startswith(
            (NOT_PROTOCOL, NOT_RECORDED)) else f"<td>{_inline(c)}</td>"
        for c in row)
    body.append(f"<tr>{cells}</tr>")
  return (f'<div class="wide"><table><thead><tr>{head}</tr></thead>'
          f"<tbody>{''.join(body)}</tbody></table></div>")


def _figure(caption: str, png: bytes) -> str:
  return (f'<figure><img alt="{html.escape(caption)}" '
          f'src="{_png_uri(png)}"><figcaption>{html.escape(caption)}'
          "</figcaption></figure>")


def _html_body(board: Leaderboard) -> list[str]:
  parts = ["<h1>LARY results</h1>"]
  failures = control_failures(board)
  if failures:
    parts.append(f'<div class="banner"><strong>{html.escape(CONTROL_BANNER)}'
                 "</strong><ul>" + "".join(
                     f"<li>{html.escape(f)}</li>" for f in failures)
                 + "</ul></div>")
  parts += [f"<p>Workdir <code>{html.escape(board.workdir)}</code>; written "
            "by <code>python -m lary_jax.main report</code>.</p>",
            "<h2>How to read</h2><ul>"
            + "".join(f"<li>{_inline(t)}</li>" for t in _HOW_TO_READ)
            + "</ul>"]
  charts = _charts(board)
  sections = _sections(board)
  for task, title, table in sections:
    parts += [f"<h2>{html.escape(title)}</h2>", _html_table(table)]
    if title == [t for k, t, _ in sections if k == task][-1]:
      parts += [_figure(c, png) for t, c, png in charts if t == task]
  settings = probe_settings(board)
  if settings:
    parts += ["<h2>Probe settings</h2>", _html_table(settings)]
  notes = _config_notes(board)
  if notes:
    by_folder = {r.folder: r for r in board.runs}
    items = "".join(
        f"<li value=\"{n}\">{html.escape(by_folder[f].task)} "
        f"{html.escape(by_folder[f].name)}: "
        f"{html.escape('; '.join(by_folder[f].deviations))}</li>"
        for f, n in notes.items())
    parts.append(f"<h2>Config notes</h2><ol>{items}</ol>")
  unmatched = board.unmatched_published()
  if unmatched:
    parts += ["<h2>Published numbers with no run here</h2>",
              _html_table(_unmatched_table(unmatched))]
  if board.unfinished:
    parts.append("<h2>Unfinished runs (seeds but no results.json)</h2><ul>"
                 + "".join(f"<li><code>{html.escape(f)}</code></li>"
                           for f in board.unfinished) + "</ul>")
  parts.append("<h2>Runs</h2>")
  for run in board.runs:
    parts += [f"<h3>{html.escape(run.task)}: {html.escape(run.name)}</h3>",
              f"<p>{_inline('; '.join(_run_facts(run)))}.</p>",
              _html_table(_per_seed_table(run))]
    for table in (_per_source_table(run), _per_dim_table(run)):
      if table:
        parts.append(_html_table(table))
    for caption, rel in _images(run):
      path = os.path.join(board.workdir, rel)
      if os.path.exists(path):
        with open(path, "rb") as f:
          parts.append(f"<details><summary>{html.escape(caption)}</summary>"
                       f"{_figure(caption, f.read())}</details>")
  return parts


def write_html(board: Leaderboard, path: str) -> None:
  """Writes the leaderboard as one self-contained HTML file.

  Inline CSS; the bar charts (drawn here) and the runs' confusion-matrix
  and trajectory PNGs are embedded as base64 data URIs, so the file can be
  mailed or opened offline.

  Args:
    board: what `collect` read (with `published` filled in, if any).
    path: the .html file.
  """
  page = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
          "<title>LARY results</title>", f"<style>{_CSS}</style>",
          "</head><body>", *_html_body(board), "</body></html>", ""]
  _write_text(path, "\n".join(page))


def write(workdir: str, published: str | None = None) -> tuple[str, str]:
  """Collects every result in `workdir`, writes report.md and report.html.

  Args:
    workdir: the folder that `classify` and `regress` wrote into.
    published: optional CSV of published numbers (module docstring).

  Returns:
    The paths of report.md and report.html (in `workdir`).
  """
  board = collect(workdir)
  if published:
    board = dataclasses.replace(board, published=read_published(published))
  md_path = os.path.join(workdir, "report.md")
  html_path = os.path.join(workdir, "report.html")
  write_markdown(board, md_path)
  write_html(board, html_path)
  return md_path, html_path
