"""Metrics of the probes: top-k, per-class scores, confusion, selection.

Pure numpy on host arrays; nothing here knows about models or devices.
"""

from __future__ import annotations

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


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Splits record ids into (train, held-out), class by class.

  Each class with at least two records gives round(fraction * count)
  records (at least one) to the held-out slice; a singleton class stays
  in train. Both id arrays are sorted.
  """
  labels = np.asarray(labels)
  if fraction <= 0:
    return np.arange(len(labels)), np.zeros(0, np.int64)
  if fraction >= 1:
    raise ValueError(f"holdout fraction {fraction} must be < 1")
  rng = np.random.default_rng(seed)
  held = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    if len(members) < 2:
      continue
    take = min(len(members) - 1, max(1, round(fraction * len(members))))
    held.append(rng.choice(members, take, replace=False))
  held = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
  train = np.setdiff1d(np.arange(len(labels)), held)
  return train, held


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
