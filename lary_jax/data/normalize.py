"""Action statistics and the per-dimension normalisation they drive.

The statistics are the per-mode part of `builder.info.metadata["action_stats"]`
(see the data contract): `{group: {"mean": [D], "std": [D], "count": n}}`,
where a group is a robot_type string, "" for rows without one, or "*" when the
dataset has a single global group.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from lary_jax.errors import LaryError

MODES = ("absolute", "relative")
GLOBAL_GROUP = "*"
MIN_STD = 1e-6

# Upstream's fixed absolute statistics (xyz, rpy, gripper).
CALVIN_MEAN = (0.03993005, -0.1113833, 0.50033228, 1.04580053, -0.08165425,
               1.58390577, -0.08441296)
CALVIN_STD = (0.14403107, 0.09919957, 0.05518382, 2.89455128, 0.13053949,
              0.57474015, 0.99643086)
VLABENCH_MEAN = (0.02959172, 0.39965126, 0.25788001, 1.0136418, -0.38189239,
                 -0.13961033, 0.54842541)
VLABENCH_STD = (0.15966601, 0.13813421, 0.1362726, 2.70449661, 0.63210694,
                1.72885403, 0.49764945)
UPSTREAM_FIXED_ABSOLUTE = {
    "calvin": (CALVIN_MEAN, CALVIN_STD),
    "vlabench": (VLABENCH_MEAN, VLABENCH_STD),
    "vlabench_15": (VLABENCH_MEAN, VLABENCH_STD),
    "vlabench_30": (VLABENCH_MEAN, VLABENCH_STD),
}

# Rows are merged into the running moments in blocks of at least this many
# steps: one vectorised update per block instead of one per row.
_FLUSH_STEPS = 8192

_log = logging.getLogger(__name__)


def _check_mode(mode: str) -> None:
  if mode not in MODES:
    raise LaryError(f"action mode {mode!r}: expected one of {MODES}")


def _group_name(group: str | bytes | None) -> str:
  if group is None:
    return ""
  if isinstance(group, bytes):
    return group.decode("utf-8")
  return str(group)


def relative_target(action: np.ndarray) -> np.ndarray:
  """Returns the relative target of an action chunk.

  Args:
    action: [T, D] action chunk.

  Returns:
    [1, D] array, last step minus first step, in the input's dtype.
  """
  action = np.asarray(action)
  if action.ndim != 2 or action.shape[0] < 1:
    raise LaryError(
        f"action chunk of shape {action.shape}: expected [steps, dim]")
  return action[-1:] - action[:1]


class _Moments:
  """Running count, mean and sum of squared deviations, in float64."""

  def __init__(self, dim: int):
    self.count = 0
    self.mean = np.zeros(dim, np.float64)
    self.m2 = np.zeros(dim, np.float64)
    self._pending: list[np.ndarray] = []
    self._pending_steps = 0

  def add(self, steps: np.ndarray) -> None:  # [n, D]
    self._pending.append(steps)
    self._pending_steps += len(steps)
    if self._pending_steps >= _FLUSH_STEPS:
      self.flush()

  def flush(self) -> None:
    if not self._pending:
      return
    block = np.concatenate(self._pending).astype(np.float64)
    self._pending, self._pending_steps = [], 0
    n = len(block)
    block_mean = block.mean(axis=0)
    block_m2 = np.square(block - block_mean).sum(axis=0)
    # Chan et al.'s pairwise merge keeps the variance exact to rounding even
    # when the mean is large against the spread (e.g. CALVIN's yaw ~ 1.6).
    total = self.count + n
    delta = block_mean - self.mean
    self.mean = self.mean + delta * (n / total)
    self.m2 = self.m2 + block_m2 + np.square(delta) * (self.count * n / total)
    self.count = total

  def to_json(self) -> dict[str, Any]:
    self.flush()
    std = np.sqrt(np.maximum(self.m2 / self.count, 0.0))
    std = np.where(std < MIN_STD, 1.0, std)
    return {"mean": self.mean.tolist(), "std": std.tolist(),
            "count": int(self.count)}


def compute_action_stats(
    actions: Iterable[np.ndarray],
    groups: Iterable[str | bytes] | None = None,
    mode: str = "absolute",
) -> dict[str, dict[str, Any]]:
  """Streams action chunks into per-group mean/std (float64, ddof 0).

  Args:
    actions: [T, D] action chunks of the training split, one per row.
    groups: the group of each row (robot_type; bytes are decoded, "" is its
      own group), or None for one global group "*".
    mode: "absolute" (every step counts) or "relative" (each row counts once,
      as its last step minus its first).

  Returns:
    `{group: {"mean": [D], "std": [D], "count": n}}`, std < 1e-6 set to 1.
  """
  _check_mode(mode)
  if groups is None:
    pairs = ((a, GLOBAL_GROUP) for a in actions)
  else:
    pairs = zip(actions, groups, strict=True)
  moments: dict[str, _Moments] = {}
  dim = None
  for row, (action, group) in enumerate(pairs):
    action = np.asarray(action)
    if action.ndim != 2 or action.shape[0] < 1:
      raise LaryError(
          f"action of row {row} has shape {action.shape}: expected [steps, "
          "dim]")
    if dim is None:
      dim = action.shape[1]
    elif action.shape[1] != dim:
      raise LaryError(
          f"action of row {row} has {action.shape[1]} dims: expected {dim} "
          "like the rows before it")
    if mode == "relative":
      action = relative_target(action)
    name = GLOBAL_GROUP if groups is None else _group_name(group)
    moments.setdefault(name, _Moments(dim)).add(action)
  if not moments:
    raise LaryError("no action rows to compute statistics from")
  return {name: moments[name].to_json() for name in sorted(moments)}


def upstream_fixed_stats(dataset: str) -> dict[str, dict[str, Any]]:
  """Returns upstream's fixed absolute stats as a per-mode stats table.

  Args:
    dataset: calvin, vlabench, vlabench_15 or vlabench_30.

  Returns:
    `{"*": {"mean", "std", "count": None}}` (upstream gives no count).
  """
  if dataset not in UPSTREAM_FIXED_ABSOLUTE:
    raise LaryError(
        f"no fixed upstream statistics for dataset {dataset!r}: expected one "
        f"of {sorted(UPSTREAM_FIXED_ABSOLUTE)}")
  mean, std = UPSTREAM_FIXED_ABSOLUTE[dataset]
  return {GLOBAL_GROUP: {"mean": list(mean), "std": list(std), "count": None}}


def read_upstream_stats(path: str | os.PathLike[str]) -> dict[str, dict]:
  """Reads one of upstream's stats JSON files as a per-mode stats table.

  Per-robot files hold `{"robot_stats": {robot: {"mean", "std", "count"}}}`;
  upstream wrote pandas' missing robot_type as the group "nan", which is our
  empty-robot_type group "". Global files (CALVIN/VLABench relative stats)
  hold `{"mean", "std", "count"}` at the top level and become group "*".

  Args:
    path: the JSON file.

  Returns:
    `{group: {"mean": [D], "std": [D], "count": n or None}}`, std < 1e-6 set
    to 1 as upstream does when it loads them.
  """
  try:
    with open(path) as f:
      raw = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise LaryError(f"{path}: cannot read action stats JSON ({e})") from e
  if not isinstance(raw, dict):
    raise LaryError(f"{path}: expected a JSON object")
  if "robot_stats" in raw:
    entries = {("" if name == "nan" else name): stats
               for name, stats in raw["robot_stats"].items()}
  elif "mean" in raw and "std" in raw:
    entries = {GLOBAL_GROUP: raw}
  else:
    raise LaryError(
        f"{path}: expected a 'robot_stats' object or top-level 'mean'/'std'")
  table = {}
  for name, stats in sorted(entries.items()):
    if not isinstance(stats, dict) or "mean" not in stats or "std" not in stats:
      raise LaryError(f"{path}: group {name!r} has no 'mean'/'std'")
    mean = np.asarray(stats["mean"], np.float64)
    std = np.asarray(stats["std"], np.float64)
    if mean.ndim != 1 or mean.shape != std.shape:
      raise LaryError(
          f"{path}: group {name!r} has mean {mean.shape} and std {std.shape}: "
          "expected two vectors of one length")
    std = np.where(std < MIN_STD, 1.0, std)
    count = stats.get("count")
    table[name] = {"mean": mean.tolist(), "std": std.tolist(),
                   "count": None if count is None else int(count)}
  return table


@dataclasses.dataclass(frozen=True)
class ActionStats:
  """Per-group mean/std of one action mode, looked up by a row's group.

  Attributes:
    mode: "absolute" or "relative".
    group_by: "robot_type", or None when every row shares group "*".
    table: group -> (mean [D], std [D]), float64.
  """

  mode: str
  group_by: str | None
  table: Mapping[str, tuple[np.ndarray, np.ndarray]]
  _warned: set[str] = dataclasses.field(
      default_factory=set, init=False, compare=False, repr=False)

  @classmethod
  def from_metadata(cls, action_stats: Mapping[str, Any] | str,
                    mode: str) -> ActionStats:
    """Builds the stats of `mode` from `metadata["action_stats"]`.

    Args:
      action_stats: the stored object, or its JSON text.
      mode: "absolute" or "relative".

    Returns:
      The stats for that mode.
    """
    _check_mode(mode)
    if isinstance(action_stats, str):
      action_stats = json.loads(action_stats)
    if mode not in action_stats:
      raise LaryError(
          f"action_stats has no {mode!r} entry (keys: {sorted(action_stats)})")
    group_by = action_stats.get("group_by")
    table = {}
    for group, stats in action_stats[mode].items():
      mean = np.asarray(stats["mean"], np.float64)
      std = np.asarray(stats["std"], np.float64)
      if mean.ndim != 1 or mean.shape != std.shape:
        raise LaryError(
            f"action_stats[{mode!r}][{group!r}]: mean {mean.shape} and std "
            f"{std.shape} must be vectors of one length")
      table[group] = (mean, np.where(std < MIN_STD, 1.0, std))
    if not table:
      raise LaryError(f"action_stats[{mode!r}] has no groups")
    if len({m.shape for m, _ in table.values()}) != 1:
      raise LaryError(f"action_stats[{mode!r}]: groups differ in dimension")
    return cls(mode=mode, group_by=group_by, table=table)

  @property
  def dim(self) -> int:
    return next(iter(self.table.values()))[0].shape[0]

  def lookup(self, group: str | bytes | None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (mean [D], std [D]) for a row's group.

    Without grouping every row gets group "*". A group absent from the table
    gets mean 0 / std 1 (upstream's fallback), with one warning per group.
    """
    name = GLOBAL_GROUP if self.group_by is None else _group_name(group)
    if name in self.table:
      return self.table[name]
    if name not in self._warned:
      self._warned.add(name)
      _log.warning(
          "robot_type %r has no %s action stats (known: %s); using mean 0, "
          "std 1", name, self.mode, sorted(self.table))
    return np.zeros(self.dim), np.ones(self.dim)


def normalize(action: np.ndarray, mean: np.ndarray,
              std: np.ndarray) -> np.ndarray:
  """Returns `(action - mean) / std`, per dimension, in action's dtype.

  Args:
    action: [..., D] actions.
    mean: [D].
    std: [D], nonzero.
  """
  action = np.asarray(action)
  out = (action.astype(np.float64) - mean) / std
  return out.astype(action.dtype if action.dtype.kind == "f" else np.float32)


def denormalize(action: np.ndarray, mean: np.ndarray,
                std: np.ndarray) -> np.ndarray:
  """Inverts `normalize`: returns `action * std + mean` in action's dtype.

  Args:
    action: [..., D] normalised actions.
    mean: [D].
    std: [D].
  """
  action = np.asarray(action)
  out = action.astype(np.float64) * std + mean
  return out.astype(action.dtype if action.dtype.kind == "f" else np.float32)
