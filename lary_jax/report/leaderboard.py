"""What a report is about: the runs of a workdir, their roles and checks.

  a results folder -> `Run` (its summary over seeds, each seed's results,
  where its settings left the protocol) -> a `Leaderboard` of every run,
  with the published numbers to show beside them

The names of tasks, the report's labels of selections and splits (their
keys in results.json are in `result_keys`) and the positive controls'
thresholds are here once for the readers, tables and writers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from lary_jax import result_keys as keys

CLASSIFICATION, REGRESSION = "classification", "regression"
# (key in results.json, label in the report)
SELECTIONS = ((keys.UPSTREAM_STYLE, "upstream-style"),
              (keys.HONEST, "honest"))
SPLIT_LABELS = {keys.VALIDATION: "seen", keys.UNSEEN: "unseen"}
METRIC = {CLASSIFICATION: keys.TOP1, REGRESSION: keys.MSE}
NOT_PROTOCOL = "laptop config, not the protocol"
CONTROL_BANNER = ("A positive control missed its threshold: the probes or "
                  "the data path failed, not (only) the models")
NOT_RECORDED = "config not recorded"

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
    ("sim_oracle", CLASSIFICATION, "", keys.VALIDATION, "top1", 0.90),
    ("sim_oracle", CLASSIFICATION, "", keys.UNSEEN, "top1", 0.80),
    ("sim_oracle", REGRESSION, "mlp_absolute", keys.VALIDATION, "mse_ratio",
     0.3),
    ("sim_oracle", REGRESSION, "mlp_relative", keys.VALIDATION, "mse_ratio",
     0.3),
    ("flow", CLASSIFICATION, "", keys.VALIDATION, "above_floors",
     FLOOR_MARGIN_SE),
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
    for sel in (keys.HONEST, keys.UPSTREAM_STYLE):
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
    ci = value.get(keys.MSE_CI95)
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
    shown = (keys.VALIDATION, keys.UNSEEN)
    return [s for s in shown if s in found] + sorted(found - set(shown))

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
