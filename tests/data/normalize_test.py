"""Tests for lary_jax.data.normalize."""

import json
import logging

import numpy as np
import pytest

from lary_jax.data import normalize
from lary_jax.errors import LaryError


def _chunks(rng, n, steps, dim, offset=0.0):
  return [(rng.normal(size=(steps, dim)) * rng.uniform(0.1, 3, dim)
           + offset).astype(np.float32) for _ in range(n)]


def test_relative_target_is_last_minus_first():
  a = np.arange(12, dtype=np.float32).reshape(4, 3)
  np.testing.assert_array_equal(normalize.relative_target(a), [[9, 9, 9]])
  with pytest.raises(LaryError, match="expected \\[steps, dim\\]"):
    normalize.relative_target(np.zeros(3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize_denormalize_round_trip(dtype):
  rng = np.random.default_rng(0)
  mean, std = rng.normal(size=7), rng.uniform(1e-3, 5, size=7)
  a = (rng.normal(size=(256, 5, 7)) * 3).astype(dtype)
  z = normalize.normalize(a, mean, std)
  assert z.dtype == dtype
  np.testing.assert_allclose(z, (a.astype(np.float64) - mean) / std,
                             rtol=1e-6 if dtype == np.float32 else 1e-14)
  back = normalize.denormalize(z, mean, std)
  assert back.dtype == dtype
  tol = 2e-6 if dtype == np.float32 else 1e-13
  np.testing.assert_allclose(back, a, rtol=tol, atol=tol)


def test_absolute_stats_match_numpy_per_group():
  rng = np.random.default_rng(1)
  chunks = _chunks(rng, 300, steps=5, dim=4, offset=1000.0)
  groups = [[b"arm", "", "hand"][i % 3] for i in range(300)]
  # A dimension that never moves within "hand": std 0 -> 1.
  for i in range(2, 300, 3):
    chunks[i][:, 2] = 0.25
  stats = normalize.compute_action_stats(chunks, groups, "absolute")
  assert list(stats) == ["", "arm", "hand"]
  for name, start in (("arm", 0), ("", 1), ("hand", 2)):
    steps = np.concatenate(chunks[start::3]).astype(np.float64)
    want_std = steps.std(axis=0)
    want_std = np.where(want_std < 1e-6, 1.0, want_std)
    assert stats[name]["count"] == 100 * 5
    np.testing.assert_allclose(stats[name]["mean"], steps.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats[name]["std"], want_std, rtol=1e-9)
  assert stats["hand"]["std"][2] == 1.0
  assert stats["hand"]["mean"][2] == 0.25
  json.dumps(stats)  # plain JSON types


def test_relative_stats_and_global_group():
  rng = np.random.default_rng(2)
  chunks = _chunks(rng, 10_000, steps=3, dim=2)  # several merge blocks
  stats = normalize.compute_action_stats(iter(chunks), None, "relative")
  rel = np.stack([c[-1] - c[0] for c in chunks]).astype(np.float64)
  assert list(stats) == ["*"]
  assert stats["*"]["count"] == 10_000
  np.testing.assert_allclose(stats["*"]["mean"], rel.mean(0), rtol=1e-9)
  np.testing.assert_allclose(stats["*"]["std"], rel.std(0), rtol=1e-9)


def test_stats_reject_bad_input():
  with pytest.raises(LaryError, match="no action rows"):
    normalize.compute_action_stats([], None)
  with pytest.raises(LaryError, match="row 1 has 3 dims: expected 2"):
    normalize.compute_action_stats([np.zeros((2, 2)), np.zeros((2, 3))], None)
  with pytest.raises(LaryError, match="action mode 'delta'"):
    normalize.compute_action_stats([np.zeros((2, 2))], None, "delta")


def _metadata():
  return {
      "group_by": "robot_type",
      "absolute": {
          "ur5": {"mean": [1.0, 2.0], "std": [0.5, 1e-9], "count": 10},
          "": {"mean": [0.0, -1.0], "std": [2.0, 4.0], "count": 4},
      },
      "relative": {"ur5": {"mean": [0.1, 0.2], "std": [1.0, 1.0],
                           "count": 2}},
      "source": {"absolute": "train", "relative": "train"},
  }


def test_action_stats_lookup_and_unknown_group(caplog):
  stats = normalize.ActionStats.from_metadata(json.dumps(_metadata()),
                                              "absolute")
  mean, std = stats.lookup(b"ur5")
  np.testing.assert_array_equal(mean, [1.0, 2.0])
  np.testing.assert_array_equal(std, [0.5, 1.0])  # tiny std -> 1
  np.testing.assert_array_equal(stats.lookup("")[1], [2.0, 4.0])
  with caplog.at_level(logging.WARNING):
    for _ in range(3):
      mean, std = stats.lookup("franka")
    stats.lookup("aloha")
  np.testing.assert_array_equal(mean, [0.0, 0.0])
  np.testing.assert_array_equal(std, [1.0, 1.0])
  messages = [r.getMessage() for r in caplog.records]
  assert len(messages) == 2
  assert "'franka'" in messages[0] and "'aloha'" in messages[1]

  relative = normalize.ActionStats.from_metadata(_metadata(), "relative")
  np.testing.assert_array_equal(relative.lookup("ur5")[0], [0.1, 0.2])


def test_ungrouped_stats_ignore_the_row_group():
  stats = normalize.ActionStats.from_metadata(
      {"group_by": None,
       "absolute": normalize.upstream_fixed_stats("calvin")}, "absolute")
  mean, std = stats.lookup(b"anything")
  np.testing.assert_array_equal(mean, normalize.CALVIN_MEAN)
  np.testing.assert_array_equal(std, normalize.CALVIN_STD)
  assert normalize.upstream_fixed_stats("vlabench_30")["*"]["mean"][1] == (
      0.39965126)
  with pytest.raises(LaryError, match="no 'relative' entry"):
    normalize.ActionStats.from_metadata(
        {"group_by": None, "absolute": {}}, "relative")
  with pytest.raises(LaryError, match="no fixed upstream statistics"):
    normalize.upstream_fixed_stats("robocoin")


def test_read_upstream_robot_stats(tmp_path):
  path = tmp_path / "robocoin_stats.json"
  path.write_text(json.dumps({
      "dataset": "robocoin",
      "global": {"mean": [9.0], "std": [9.0], "count": 9},
      "robot_stats": {
          "nan": {"mean": [1.0, 2.0], "std": [3.0, 0.0], "count": 5},
          "galaxea": {"mean": [0.5, 0.5], "std": [0.1, 0.2], "count": 7},
      },
  }))
  table = normalize.read_upstream_stats(path)
  assert sorted(table) == ["", "galaxea"]
  assert table[""] == {"mean": [1.0, 2.0], "std": [3.0, 1.0], "count": 5}
  assert table["galaxea"]["count"] == 7
  stats = normalize.ActionStats.from_metadata(
      {"group_by": "robot_type", "absolute": table}, "absolute")
  np.testing.assert_array_equal(stats.lookup(b"")[0], [1.0, 2.0])


def test_read_upstream_global_relative_stats(tmp_path):
  path = tmp_path / "relative_action_stats_calvin.json"
  path.write_text(json.dumps({
      "action_mode": "relative", "dataset": "calvin",
      "mean": [0.1, -0.2], "std": [1e-8, 2.0], "count": 11}))
  table = normalize.read_upstream_stats(path)
  assert table == {"*": {"mean": [0.1, -0.2], "std": [1.0, 2.0],
                         "count": 11}}
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"robot_stats": {"x": {"mean": [1.0]}}}))
  with pytest.raises(LaryError, match="group 'x' has no 'mean'/'std'"):
    normalize.read_upstream_stats(bad)
  with pytest.raises(LaryError, match="cannot read"):
    normalize.read_upstream_stats(tmp_path / "missing.json")
