"""LIBERO end to end as a user runs it: prepare its labelled pairs, extract
pair features, classify them (pair classification); `--dataset sim` gives
classify and regress the LARY-Sim half that fits each."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lary_jax import commands
from lary_jax import feature_store as fs
from tfds_builders import metadata

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Upstream's direction labels (its libero_metadata_*.csv `action` column).
LABELS = ("Open", "Close", "Forward_Up")
SMALL = ["--config.classify.epochs=2", "--config.classify.global_batch=4",
         "--config.classify.eval_batch=4",
         "--config.classify.probe.model_dim=16",
         "--config.classify.probe.num_heads=2",
         "--config.classify.probe.depth=2",
         "--config.classify.probe.pool_grid=2",
         "--config.classify.holdout=0.25"]


def _make_libero(data_dir: pathlib.Path, rows_per_label: dict[str, int]):
  """Upstream's LIBERO layout: CSVs of src_img,tgt_img,action and PNGs."""
  rng = np.random.default_rng(0)
  spec = metadata.DATASETS["libero"]
  for split, n in rows_per_label.items():
    rows = []
    for label in LABELS:
      for i in range(n):
        demo = f"libero_goal_clean/task_demo/demo_{split}_{label}_{i}"
        pair = [f"{demo}/action_00/action_start.png",
                f"{demo}/action_00/action_end.png"]
        for rel in pair:
          path = data_dir.joinpath(*spec.root, rel)
          path.parent.mkdir(parents=True, exist_ok=True)
          Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(
              path)
        rows.append([*pair, label])
    csv_path = data_dir / "metadata" / spec.csv_name(split)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
      csv.writer(f).writerows([["src_img", "tgt_img", "action"], *rows])


def _lary(cwd, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  result = subprocess.run([sys.executable, "-m", "lary_jax", *args],
                          cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_libero_pairs_are_classified(tmp_path):
  _make_libero(tmp_path / "data", {"train": 4, "val": 2})
  common = [f"--workdir={tmp_path / 'wd'}", "--dataset=libero"]
  prepared = _lary(tmp_path, "prepare", *common,
                   f"--data_dir={tmp_path / 'data'}",
                   "--config.prepare.num_workers=1")
  assert "libero: {'train': 12, 'validation': 6}" in prepared.stdout
  _lary(tmp_path, "extract", *common, "--model=pixels",
        "--config.extract.global_batch=4", "--config.extract.micro_batch=2")
  result = _lary(tmp_path, "classify", *common, "--model=pixels",
                 "--classes=3", *SMALL)
  assert result.stdout.startswith("lary classify: 1 process")
  out = tmp_path / "wd" / "classify" / "libero" / "pixels"
  summary = json.loads((out / "results.json").read_text())
  assert summary["num_classes"] == 3 and summary["dataset"] == "libero"
  top1 = summary["upstream_style"]["validation"]["top1"]["mean"]
  assert 0.0 <= top1 <= 1.0
  # A pair's features: the two frames' tokens, which the probe reads as a
  # 2-frame clip.
  store = fs.FeatureSource(str(tmp_path / "wd" / "features" / "libero" /
                               "train" / "pixels"))
  assert len(store) == 12 and store.token_shape[0] == 2
  seed = json.loads((out / "seed_0" / "results.json").read_text())
  assert seed["probe"]["num_classes"] == 3
  assert seed["probe"]["dim"] == store.token_shape[-1]
  with open(out / "seed_0" / "per_class_upstream_style.csv") as f:
    assert sorted(r["class"] for r in csv.DictReader(f)) == sorted(LABELS)


@pytest.mark.parametrize("command, halves", [
    ("classify", ["sim_classification"]),
    ("regress", ["sim_regression"]),
])
def test_sim_gives_each_probe_the_half_that_fits(command, halves):
  assert [s.name for s in commands.probe_specs("sim", None, command)] == halves


def test_a_dataset_that_does_not_fit_is_refused():
  with pytest.raises(Exception, match="libero has no numeric action chunks; "
                     "regress takes calvin"):
    commands.probe_specs("libero", None, "regress")
  with pytest.raises(Exception, match="calvin is a regression dataset; "
                     "classify takes libero, human_1st"):
    commands.probe_specs("calvin", None, "classify")
