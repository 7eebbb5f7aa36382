"""The report's tables: a `Leaderboard` -> (header, rows) of text cells.

Ranked tables per task (controls first, in their own section), the probe
settings, each run's per-seed, per-source and per-dimension tables, and the
positive controls' misses. The writers (writers.py) only lay them out.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lary_jax import result_keys as keys
from lary_jax import workdir_layout as layout
from lary_jax.report.leaderboard import CLASSIFICATION
from lary_jax.report.leaderboard import CONTROL_CHECKS
from lary_jax.report.leaderboard import CONTROLS
from lary_jax.report.leaderboard import FLOOR_MARGIN_SE
from lary_jax.report.leaderboard import FLOORS
from lary_jax.report.leaderboard import Leaderboard
from lary_jax.report.leaderboard import METRIC
from lary_jax.report.leaderboard import NOT_PROTOCOL
from lary_jax.report.leaderboard import NOT_RECORDED
from lary_jax.report.leaderboard import PublishedKey
from lary_jax.report.leaderboard import REGRESSION
from lary_jax.report.leaderboard import Run
from lary_jax.report.leaderboard import SELECTIONS
from lary_jax.report.leaderboard import SPLIT_LABELS
from lary_jax.report.leaderboard import Table


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


def config_notes(board: Leaderboard) -> dict[str, int]:
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
        _spread(run.score(keys.HONEST, split, keys.TOP1), _percent),
        _interval(value, keys.TOP1_CI95, _percent))))
    return text + (" ≈ chance" if value.get(keys.AT_CHANCE) else "")
  text = " ".join(filter(None, (
      _spread(run.score(keys.HONEST, split, keys.MSE), _mse),
      _interval(value, keys.MSE_CI95, _mse))))
  return text + (" ≈ mean or worse" if value.get(keys.AT_FLOOR) else "")


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
  notes = config_notes(board)
  header = ["dataset", "model", "role", "split",
            "top-1 honest (95% interval)", "top-1 upstream-style",
            "top-5 upstream-style / honest", "chance (95% band)",
            "vs best floor", "published top-1", "seeds", "config"]
  rows = []
  for run in board.of(CLASSIFICATION):
    if run.role not in roles:
      continue
    for split in run.splits:
      top5 = [_spread(run.score(sel, split, keys.TOP5), _percent)
              for sel, _ in SELECTIONS]
      published = board.published_value(run, split)
      band = run.honest(split).get(keys.CHANCE)
      chance = (f"{_percent(band['chance'])} ({_percent(band['low'])}-"
                f"{_percent(band['high'])})" if band else "-")
      rows.append([
          run.dataset, run.model, run.role, SPLIT_LABELS.get(split, split),
          honest_cell(run, split),
          _spread(run.score(keys.UPSTREAM_STYLE, split, keys.TOP1),
                  _percent),
          " / ".join(top5), chance, versus_floors(board, run, split),
          "-" if published is None else f"{published:.1f}",
          str(len(run.summary[keys.SEEDS])), _config_cell(run, notes)])
  return header, rows


def _regression_table(board: Leaderboard,
                      roles: Sequence[str] = ("model", "floor")) -> Table:
  """One row per (dataset, model, decoder, split) of `roles`: the honest MSE
  with its 95% interval beside the predict-the-train-mean floor."""
  notes = config_notes(board)
  header = ["dataset", "model", "role", "decoder", "split",
            "MSE honest (95% interval)", "MSE upstream-style",
            "predict-the-mean MSE", "vs best floor",
            "robot-units MSE upstream-style / honest", "published MSE",
            "seeds", "config"]
  rows = []
  for run in board.of(REGRESSION):
    if run.role not in roles:
      continue
    floor = run.summary.get(keys.FLOOR) or {}
    for split in run.splits:
      units = [_spread(run.score(sel, split, keys.MSE_UNITS), _mse)
               for sel, _ in SELECTIONS]
      published = board.published_value(run, split)
      rows.append([
          run.dataset, run.model, run.role, run.decoder,
          SPLIT_LABELS.get(split, split), honest_cell(run, split),
          _spread(run.score(keys.UPSTREAM_STYLE, split, keys.MSE), _mse),
          _mse(floor[split]) if split in floor else "-",
          versus_floors(board, run, split), " / ".join(units),
          "-" if published is None else _mse(published),
          str(len(run.summary[keys.SEEDS])), _config_cell(run, notes)])
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
        got = value.get(keys.TOP1, {}).get("mean")
        if got is None or got < threshold:
          out.append(f"{where}: honest top-1 {_fmt_or_dash(got, _percent)}%"
                     f", needs >= {_percent(threshold)}%")
      elif check == "mse_ratio":
        got = value.get(keys.MSE, {}).get("mean")
        floor = (run.summary.get(keys.FLOOR) or {}).get(split)
        ratio = got / floor if got is not None and floor else None
        if ratio is None or ratio > threshold:
          out.append(f"{where}: honest MSE {_fmt_or_dash(ratio, _ratio)} of"
                     f" predict-the-mean, needs <= {threshold:g}x")
      elif check == "above_floors" and (
          gap := floor_gap(board, run, split)) is not None:
        if gap[1] <= threshold:
          out.append(f"{where}: honest top-1 {gap[1]:.1f} standard errors "
                     f"above {gap[2].model}, needs > {threshold:g}")
      elif value.get(keys.AT_CHANCE, True):
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


def per_seed_table(run: Run) -> Table:
  """What each seed chose: epoch (and head), and its validation number."""
  metric = "top-1 %" if run.task == CLASSIFICATION else "MSE"
  header = ["seed"]
  for _, label in SELECTIONS:
    header += [f"{label}: chosen", f"{label}: seen {metric}"]
  rows = []
  for seed in run.summary[keys.SEEDS]:
    row = [str(seed)]
    for sel, _ in SELECTIONS:
      chosen = run.summary.get(sel, {}).get(keys.PER_SEED,
                                            {}).get(str(seed))
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


def per_source_table(run: Run) -> Table | None:
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


def per_dim_table(run: Run) -> Table | None:
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


def run_images(run: Run) -> list[tuple[str, str]]:
  """(caption, path relative to the workdir) of the first seed's plots."""
  if not run.seeds:
    return []
  seed = min(run.seeds)
  folder = layout.seed_dir(run.folder, seed)
  if run.task == CLASSIFICATION:
    return [(f"confusion matrix, {label} selection, seed {seed}",
             layout.confusion_stem(folder, sel) + ".png")
            for sel, label in SELECTIONS]
  return [(f"trajectories, {SPLIT_LABELS[s]} split, seed {seed}",
           layout.trajectories_plot(folder, s))
          for s in (keys.VALIDATION, keys.UNSEEN)]


def run_facts(run: Run) -> list[str]:
  first = run.seeds.get(min(run.seeds)) if run.seeds else {}
  facts = [f"folder `{run.folder}`",
           f"seeds {', '.join(map(str, run.summary[keys.SEEDS]))}"]
  examples = (first or {}).get("examples")
  if examples:
    facts.append("examples " + ", ".join(f"{k} {v}"
                                         for k, v in examples.items()))
  holdout = run.summary.get("holdout_fraction")
  if holdout is not None:
    facts.append(f"held-out slice {100 * holdout:g}% of train")
  return facts


HOW_TO_READ = (
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


def sections(board: Leaderboard) -> list[tuple[str, str, Table]]:
  """(task, title, table): the controls' tables first, then the ranked."""
  out = []
  for roles, prefix in ((("control",), "Positive controls: "),
                        (("model", "floor"), "")):
    for task, title, table in _TABLES:
      header, rows = table(board, roles)
      if rows:
        out.append((task, prefix + title, (header, rows)))
  return out


def unmatched_table(unmatched: Sequence[tuple[PublishedKey, float]]
                     ) -> Table:
  header = ["task", "dataset", "model", "decoder", "split", "metric",
            "value"]
  rows = [[task, dataset, model, decoder or "any", SPLIT_LABELS[split],
           METRIC[task], f"{value:g}"]
          for (task, dataset, model, decoder, split), value in unmatched]
  return header, rows
