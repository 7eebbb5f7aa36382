"""Probe metrics on hand-checked examples."""

import numpy as np
import pytest

from lary_jax import metrics


def test_topk_accuracy():
  topk = np.array([[2, 0, 1], [1, 2, 0], [0, 1, 2], [1, 0, 2]])
  labels = np.array([2, 2, 2, 2])
  assert metrics.topk_accuracy(topk, labels, 1) == 0.25
  assert metrics.topk_accuracy(topk, labels, 2) == 0.5
  assert metrics.topk_accuracy(topk, labels, 3) == 1.0


def test_confusion_rows_are_true_classes_and_scores():
  labels = np.array([0, 0, 0, 1, 1, 2])
  preds = np.array([0, 0, 1, 1, 0, 1])
  cm = metrics.confusion_matrix(labels, preds, 4)
  np.testing.assert_array_equal(cm, [[2, 1, 0, 0], [1, 1, 0, 0],
                                     [0, 1, 0, 0], [0, 0, 0, 0]])
  s = metrics.per_class_scores(cm)
  np.testing.assert_allclose(s["precision"], [2 / 3, 1 / 3, 0, 0])
  np.testing.assert_allclose(s["recall"], [2 / 3, 1 / 2, 0, 0])
  np.testing.assert_allclose(s["f1"], [2 / 3, 0.4, 0, 0])
  np.testing.assert_array_equal(s["support"], [3, 2, 1, 0])


def test_select_best_prefers_the_earliest_epoch_then_lowest_head():
  scores = np.array([[0.1, 0.5, 0.5], [0.5, 0.2, np.nan]])
  assert metrics.select_best(scores) == (0, 1)
  assert metrics.select_best(np.array([[np.nan, 0.0]])) == (0, 1)


def test_group_accuracy_and_mean_std():
  topk = np.array([[0], [1], [1], [0]])
  labels = np.array([0, 0, 1, 1])
  got = metrics.group_accuracy(topk, labels, ["a", "a", "b", "b"])
  assert got == {"a": {"top1": 0.5, "count": 2},
                 "b": {"top1": 0.5, "count": 2}}
  ms = metrics.mean_std([0.5, 0.7, 0.6])
  assert ms["mean"] == pytest.approx(0.6) and ms["std"] == pytest.approx(0.1)
  assert metrics.mean_std([0.3]) == {"mean": 0.3, "std": 0.0, "n": 1}


def test_stratified_holdout():
  labels = np.array([0] * 20 + [1] * 10 + [2] * 1 + [3] * 2)
  train, held = metrics.stratified_holdout(labels, 0.1, seed=0)
  assert len(np.intersect1d(train, held)) == 0
  assert len(train) + len(held) == len(labels)
  assert np.bincount(labels[held], minlength=4).tolist() == [2, 1, 0, 1]
  again = metrics.stratified_holdout(labels, 0.1, seed=0)
  np.testing.assert_array_equal(held, again[1])
  assert not np.array_equal(held, metrics.stratified_holdout(labels, 0.1,
                                                             seed=1)[1])
  train, held = metrics.stratified_holdout(labels, 0.0, seed=0)
  assert len(held) == 0 and len(train) == len(labels)


def test_stratified_holdout_keeps_source_videos_whole():
  # Class 0: two clips of video "a" (a clip and its reversal) and three
  # single-clip videos; class 1: four videos, "d" also holding a class-0 clip.
  labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
  groups = ["a", "a", "b", "c", "d", "d", "e", "f", "g"]
  for seed in range(20):
    train, held = metrics.stratified_holdout(labels, 0.25, seed, groups)
    assert len(train) + len(held) == len(labels)
    held_groups = {groups[i] for i in held}
    assert all(groups[i] not in held_groups for i in train)
    # round(0.25 * 5) = 1 of class 0 and round(0.25 * 4) = 1 of class 1 at
    # least; never a whole class.
    counts = np.bincount(labels[held], minlength=2)
    assert counts.min() >= 1 and counts[0] < 5 and counts[1] < 4
  # A class in one video only keeps it in train.
  train, held = metrics.stratified_holdout(np.array([0, 0, 1, 1]), 0.5, 0,
                                           ["x", "x", "y", "z"])
  assert labels_of(held, [0, 0, 1, 1]) == [1]


def labels_of(ids, labels):
  return [labels[i] for i in ids]


def test_bootstrap_interval_covers_examples_and_seeds():
  rng = np.random.default_rng(0)
  hits = (rng.random((3, 400)) < 0.6).astype(float)
  ci = metrics.bootstrap_interval(hits)
  assert ci["low"] < hits.mean() < ci["high"]
  # About 1.96 binomial standard errors of 1200 draws on each side.
  se = np.sqrt(0.6 * 0.4 / 400)
  assert 2.5 * se < ci["high"] - ci["low"] < 5 * se
  assert metrics.bootstrap_interval(hits) == ci  # fixed resampling seed
  # Seeds that disagree widen it.
  spread = hits.copy()
  spread[0] = 1.0
  wide = metrics.bootstrap_interval(spread)
  assert wide["high"] - wide["low"] > ci["high"] - ci["low"]
  with pytest.raises(ValueError, match=r"\[seeds, examples\]"):
    metrics.bootstrap_interval(np.zeros(4))


def test_chance_band_is_the_binomial_of_a_guess():
  band = metrics.chance_band(144, 12)
  assert band["chance"] == pytest.approx(1 / 12)
  assert band["se"] == pytest.approx(np.sqrt(1 / 12 * 11 / 12 / 144))
  # Binomial(144, 1/12): 95% of guessers score 6..19 clips right.
  assert (band["low"] * 144, band["high"] * 144) == (6, 19)
  rng = np.random.default_rng(1)
  guesses = rng.binomial(144, 1 / 12, 20000) / 144
  inside = ((guesses >= band["low"]) & (guesses <= band["high"])).mean()
  assert 0.95 <= inside <= 0.99


def test_group_holdout_keeps_groups_whole():
  groups = ["ep1"] * 5 + ["ep2"] * 3 + ["ep3"] * 4 + ["ep4"] * 2
  train, held = metrics.group_holdout(groups, 0.25, seed=0)
  assert len(np.intersect1d(train, held)) == 0
  assert len(train) + len(held) == len(groups)
  held_groups = {groups[i] for i in held}
  assert len(held_groups) == 1  # round(0.25 * 4) episodes
  assert all(groups[i] not in held_groups for i in train)
  assert metrics.group_holdout(["a"] * 4, 0.5, 0)[1].size == 0
  assert metrics.group_holdout(groups, 0.0, 0)[1].size == 0
