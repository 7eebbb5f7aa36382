"""Training the five probes: learning, selection and the results files."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from lary_jax import result_keys
from lary_jax.probes import attentive_probe
from lary_jax.probes import classification_report as report
from lary_jax.probes import multi_head as mh
from lary_jax.probes import train_classifier as tc

CLASSES, T, N, D = 4, 2, 4, 16
PROBE = attentive_probe.Config(dim=D, num_classes=CLASSES, model_dim=32,
                               num_heads=2, depth=2)


def _split(n: int, seed: int) -> tc.Split:
  rng = np.random.default_rng(seed)
  centres = np.random.default_rng(99).standard_normal((CLASSES, 1, 1, D))
  labels = np.arange(n) % CLASSES
  feats = centres[labels] + 0.5 * rng.standard_normal((n, T, N, D))
  rows = [{"features": f.astype(np.float16), "label": np.int32(y)}
          for f, y in zip(feats, labels)]
  return tc.Split(rows, labels)


def test_lr_scale_is_upstreams_cosine():
  scale = np.asarray(mh.lr_scale(jnp.arange(4), 4))
  np.testing.assert_allclose(scale, [0.5 * (1 + np.cos(np.pi * k / 4))
                                     for k in (1, 2, 3, 4)], atol=1e-7)
  assert scale[-1] == pytest.approx(0.0, abs=1e-7)


def test_probes_learn_separable_classes_and_results_are_written(tmp_path):
  options = tc.Options(epochs=4, global_batch=32, eval_batch=16,
                       compute_dtype="float32")
  evals = {"validation": _split(40, 1), result_keys.HOLDOUT: _split(12, 2)}
  history = tc.train(PROBE, _split(96, 0), evals, str(tmp_path), seed=0,
                     options=options, progress=False)
  assert history["validation"].shape == (4, 5, 40, 4)
  val = report._scores(history["validation"], evals["validation"].labels, 1)  # pylint: disable=protected-access
  # The largest learning rates separate the classes; the smallest (1e-4,
  # 12 steps) barely move, so the heads really differ.
  assert val[-1].max() >= 0.95
  assert val[-1].min() < val[-1].max()
  labels = {k: v.labels for k, v in evals.items()}
  results = report.write_seed(
      str(tmp_path), history, labels, mh.head_table(mh.StepOptions()),
      [f"c{i}" for i in range(CLASSES)], {"model": "m", "dataset": "d"},
      sources=["a"] * 20 + ["b"] * 20)
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk == json.loads(json.dumps(results))
  up = results["upstream_style"]
  assert up["validation"]["top1"] == val.max()
  assert set(up["per_source_dataset"]) == {"a", "b"}
  lines = (tmp_path / "per_class_honest.csv").read_text().splitlines()
  assert lines[0] == "class_id,class,support,precision,recall,f1"
  assert len(lines) == CLASSES + 1
  cm = np.loadtxt(tmp_path / "confusion_upstream_style.csv", delimiter=",",
                  skiprows=1, usecols=range(1, CLASSES + 1))
  assert cm.sum() == 40 and (cm.sum(1) == 10).all()  # rows: true classes
  assert (tmp_path / "confusion_honest.png").read_bytes()[:4] == b"\x89PNG"


def test_honest_selection_differs_from_validation_selection():
  labels = {"validation": np.array([0, 1, 0, 1]),
            result_keys.HOLDOUT: np.array([0, 1])}
  val = np.zeros((2, 5, 4, 1), np.int32)
  val[1, 3] = [[0], [1], [0], [1]]  # epoch 2, head 3 is perfect on val
  val[0, 0] = [[0], [1], [1], [1]]  # epoch 1, head 0: 3 of 4
  held = np.zeros((2, 5, 2, 1), np.int32)
  held[0, 0] = [[0], [1]]  # ... and the only perfect one on the holdout
  out = report.summarise({"validation": val, result_keys.HOLDOUT: held},
                         labels, mh.head_table(mh.StepOptions()))
  up, honest = out["upstream_style"], out["honest"]
  assert (up["epoch"], up["head"], up["validation"]["top1"]) == (2, 3, 1.0)
  assert (honest["epoch"], honest["head"]) == (1, 0)
  assert honest["validation"]["top1"] == 0.75
  assert honest["lr"] == 5e-3 and up["lr"] == 3e-4
  assert result_keys.HOLDOUT not in up


def test_summary_over_seeds(tmp_path):
  def seed_result(correct):
    sel = {"epoch": 1, "head": 0, "validation": {
        "top1": np.mean(correct), "top5": 1.0, "correct": correct}}
    return {"upstream_style": sel, "honest": sel}
  out = report.write_summary(str(tmp_path), {
      0: seed_result([1, 0, 1, 0]), 1: seed_result([1, 1, 1, 0])},
                             {"num_classes": 4})
  honest = out["honest"]["validation"]
  assert out["upstream_style"]["validation"]["top1"]["mean"] == \
      pytest.approx(0.625)
  assert honest["top1"]["std"] == pytest.approx(np.std([0.5, 0.75], ddof=1))
  assert out["seeds"] == [0, 1]
  # The interval over examples and seeds, and where a guess lands.
  assert honest["examples"] == 4
  assert 0 <= honest["top1_ci95"]["low"] < 0.625 < honest["top1_ci95"][
      "high"] <= 1
  assert honest["chance"]["chance"] == 0.25
  assert honest["at_chance"] == (honest["top1_ci95"]["low"] <= 0.25)


def test_a_class_missing_from_train_is_named():
  from lary_jax.errors import LaryError  # pylint: disable=g-import-not-at-top
  from lary_jax.probes import classify  # pylint: disable=g-import-not-at-top
  names = ["open", "close", "push"]
  labels = {"train": np.array([0, 0, 1]), "validation": np.array([0, 2])}
  with pytest.raises(LaryError, match=r"validation has classes the training "
                     r"split never shows: \['push'\]"):
    classify._check_classes(labels, names)  # pylint: disable=protected-access
  classify._check_classes({"train": np.array([0, 1, 2]),  # pylint: disable=protected-access
                           "validation": np.array([2])}, names)
