"""Metrics of the probes: top-k, per-class scores, confusion, selection.

Pure numpy on host arrays; nothing here knows about models or devices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def topk_accuracy(topk: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Fraction of rows whose label is among the first k predictions.

  Args:
    topk: [N, >=k] predicted class ids, best first.
    labels: [N] true class ids.
    k: how many predictions count.
  """
  if len(labels) == 0:
    return float("nan")
  return float((topk[:, :k] == labels[:, None]).any(axis=1).mean())


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """[K, K] counts; row = true class, column = predicted class."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, predictions), 1)
  return cm


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
  """Precision, recall, F1 and support per class from a confusion matrix.

  A class never predicted has precision 0 (and one with no examples recall
  0), as scikit-learn's `zero_division=0`.
  """
  tp = np.diag(cm).astype(np.float64)
  predicted = cm.sum(axis=0)
  support = cm.sum(axis=1)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp),
                        where=predicted > 0)
  recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
  denominator = precision + recall
  f1 = np.divide(2 * precision * recall, denominator,
                 out=np.zeros_like(tp), where=denominator > 0)
  return {"precision": precision, "recall": recall, "f1": f1,
          "support": support}


def select_best(scores: np.ndarray) -> tuple[int, int]:
  """(epoch, head) of the highest score in [E, H]; ties go to the earliest
  epoch, then the lowest head."""
  scores = np.where(np.isnan(scores), -np.inf, scores)
  epoch, head = np.unravel_index(np.argmax(scores), scores.shape)
  return int(epoch), int(head)


def group_accuracy(topk: np.ndarray, labels: np.ndarray,
                   groups: Sequence[str]) -> dict[str, dict[str, float]]:
  """Top-1 accuracy and count per group (e.g. per source dataset)."""
  groups = np.asarray(groups)
  return {str(g): {"top1": topk_accuracy(topk[groups == g],
                                         labels[groups == g], 1),
                   "count": int((groups == g).sum())}
          for g in sorted(set(groups.tolist()))}


def mean_std(values: Sequence[float]) -> dict[str, float]:
  """Mean and sample standard deviation (ddof 1; 0 for one value)."""
  values = np.asarray(values, np.float64)
  std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
  return {"mean": float(values.mean()), "std": std, "n": len(values)}


def seed_spread(runs: Sequence[Mapping[str, Any]], splits: Sequence[str],
                keys: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
  """Mean/std over seeds of each selected run's numbers.

  Args:
    runs: one selection per seed, e.g. {"validation": {"top1": ...}, ...}.
    splits: the splits to summarise (those the first run lacks are left out).
    keys: the numbers to summarise in each split.

  Returns:
    split -> key -> `mean_std` of that number over the runs.
  """
  return {split: {k: mean_std([r[split][k] for r in runs]) for k in keys}
          for split in splits if split in runs[0]}


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int,
                       groups: Sequence[Any] | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Splits record ids into (train, held-out), class by class.

  Each class held in at least two groups gives whole groups to the held-out
  slice until it holds round(fraction * count) of the class's records (at
  least one; never every record of the class); other classes keep theirs in
  train. A group (e.g. the clips cut from one source video) goes to one
  side whole, so the held-out slice is no near copy of training records.
  Without `groups` every record is its own group. Both id arrays are
  sorted.
  """
  labels = np.asarray(labels)
  if fraction <= 0:
    return np.arange(len(labels)), np.zeros(0, np.int64)
  if fraction >= 1:
    raise ValueError(f"holdout fraction {fraction} must be < 1")
  if groups is None:
    group_of = np.arange(len(labels))
  else:
    if len(groups) != len(labels):
      raise ValueError(f"{len(groups)} groups for {len(labels)} labels")
    group_of = np.unique(np.asarray(groups), return_inverse=True)[1]
  rng = np.random.default_rng(seed)
  held = np.zeros(group_of.max() + 1 if len(labels) else 0, bool)
  for c in np.unique(labels):
    members = group_of[labels == c]  # the group of each record of class c
    candidates = np.unique(members)
    if len(candidates) < 2:
      continue
    take = min(len(members) - 1, max(1, round(fraction * len(members))))
    for g in rng.permutation(candidates):
      if held[members].sum() >= take:
        break
      if not (held[members] | (members == g)).all():
        held[g] = True
  held_ids = np.flatnonzero(held[group_of])
  return np.setdiff1d(np.arange(len(labels)), held_ids), held_ids


def group_holdout(groups: Sequence[str], fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Splits record ids into (train, held-out) by whole groups.

  Rows of one group (e.g. the pairs of one episode, which overlap in time)
  all go to the same side, so the held-out slice is not a near copy of
  training rows. round(fraction * groups) groups (at least one, never all)
  are held out. Both id arrays are sorted.
  """
  groups = np.asarray(groups)
  names, group_of = np.unique(groups, return_inverse=True)
  if fraction <= 0 or len(names) < 2:
    return np.arange(len(groups)), np.zeros(0, np.int64)
  if fraction >= 1:
    raise ValueError(f"holdout fraction {fraction} must be < 1")
  take = min(len(names) - 1, max(1, round(fraction * len(names))))
  chosen = np.random.default_rng(seed).choice(len(names), take, replace=False)
  held = np.flatnonzero(np.isin(group_of, chosen))
  return np.setdiff1d(np.arange(len(groups)), held), held


def bootstrap_interval(values: np.ndarray, *, level: float = 0.95,
                       draws: int = 2000, seed: int = 0) -> dict[str, float]:
  """A percentile bootstrap interval of the mean over seeds and examples.

  Each draw resamples the examples (the same rows for every seed: the seeds
  saw the same examples) and the seeds, both with replacement, and takes
  the mean; the interval holds `level` of the draws. It covers both the
  finite evaluation set and the seed-to-seed spread.

  Args:
    values: [seeds, examples] per-example scores (1 = correct, or an
      example's squared error).
    level: the interval's coverage.
    draws: bootstrap draws.
    seed: the resampling seed (fixed: the same results, the same interval).

  Returns:
    {"low", "high", "mean", "level"}.
  """
  values = np.asarray(values, np.float64)
  if values.ndim != 2 or not values.size:
    raise ValueError(f"values must be [seeds, examples], got {values.shape}")
  s, n = values.shape
  rng = np.random.default_rng(seed)
  means = np.empty(draws)
  for i in range(draws):  # a loop keeps memory at one [s, n] draw
    rows = rng.integers(0, s, s)
    cols = rng.integers(0, n, n)
    means[i] = values[rows][:, cols].mean()
  tail = 100 * (1 - level) / 2
  low, high = np.percentile(means, [tail, 100 - tail])
  return {"low": float(low), "high": float(high),
          "mean": float(values.mean()), "level": level}


def chance_band(num_examples: int, num_classes: int,
                level: float = 0.95) -> dict[str, float]:
  """Where a guesser's top-1 lands on `num_examples` examples.

  A uniform guess among `num_classes` is right with probability 1 / K, so
  its accuracy is Binomial(N, 1/K) / N; the band is that distribution's
  central `level` interval (exact, from the binomial pmf).

  Returns:
    {"chance", "low", "high", "level", "se"}: the rate, the band and the
    standard error sqrt(p (1 - p) / N).
  """
  if num_examples <= 0 or num_classes <= 0:
    raise ValueError(f"need examples and classes, got {num_examples}, "
                     f"{num_classes}")
  p = 1.0 / num_classes
  k = np.arange(num_examples + 1)
  log_pmf = (np.array([math.lgamma(num_examples + 1) - math.lgamma(i + 1)
                       - math.lgamma(num_examples - i + 1) for i in k])
             + k * math.log(p) + (num_examples - k) * math.log1p(-p)
             if p < 1 else np.where(k == num_examples, 0.0, -np.inf))
  cdf = np.cumsum(np.exp(log_pmf))
  tail = (1 - level) / 2
  low = int(np.searchsorted(cdf, tail))
  high = int(np.searchsorted(cdf, 1 - tail))
  return {"chance": p, "low": low / num_examples,
          "high": min(high, num_examples) / num_examples, "level": level,
          "se": math.sqrt(p * (1 - p) / num_examples)}
