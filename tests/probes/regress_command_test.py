"""`regress` through the command line: results files, upstream's CSV,
relative targets, resuming after kill -9, per-robot targets."""

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import types

import numpy as np
import pytest

from lary_jax import extract
from lary_jax import feature_store as fs
from lary_jax.data import normalize
from lary_jax.encoders import registry
from lary_jax.probes import regress
from lary_jax.probes import run_state
from tests.builders import fake_data_dir
from tfds_builders import metadata
from tfds_builders import prepare

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning")

ROOT = pathlib.Path(__file__).resolve().parents[2]
SMALL = ["--config.regress.epochs=2", "--config.regress.global_batch=8",
         "--config.regress.eval_batch=8", "--config.regress.pool_grid=2",
         "--config.regress.mlp_hidden=32", "--config.regress.holdout=0.2"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp("regress")
  data_dir, tfds_dir = str(root / "data"), str(root / "lary_workdir" / "tfds")
  encoder = registry.load("pixels")
  builders = {}
  for name in ("calvin", "robocoin"):
    fake_data_dir.make_regression(data_dir, name)
    builders[name] = prepare.prepare(
        metadata.DATASETS[name], data_dir, tfds_dir,
        options=prepare.PrepareOptions(num_workers=0))
    for split in builders[name].info.splits:
      extract.extract_split(
          encoder, builders[name].as_data_source()[split], mode="image",
          store_dir=str(root / "lary_workdir" / "features" / name / split /
                        "pixels"),
          fields={"model": "pixels"},
          options=extract.Options(global_batch=8, micro_batch=4))
  return types.SimpleNamespace(root=root, builders=builders)


def _regress(root, *extra, env=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             **(env or {}))
  return subprocess.run(
      [sys.executable, "-m", "lary_jax.main", "regress", "--model=pixels",
       "--dataset=calvin", "--tfds_dir=lary_workdir/tfds",
       "--out=lary_workdir/features", *SMALL, *extra], cwd=root, env=env,
      capture_output=True, text=True, timeout=300)


def test_results_seeds_relative_and_resume(workdir):
  root = workdir.root
  first = _regress(root, "--seeds=0,1", "--workdir=lary_workdir")
  assert first.returncode == 0, first.stderr[-3000:]
  out = root / "lary_workdir" / "regress" / "calvin" / "pixels" / \
      "mlp_absolute"
  assert "predict-the-mean" in first.stdout
  summary = json.loads((out / "results.json").read_text())
  assert summary["seeds"] == [0, 1]
  assert summary["upstream_style"]["validation"]["mse"]["n"] == 2
  assert set(summary["floor"]) == {"validation"}
  seed_dir = out / "seed_0"
  results = json.loads((seed_dir / "results.json").read_text())
  # round(0.2 x 4 episodes) = 1 whole episode held out (seed 0: 4 pairs).
  assert results["examples"] == {"validation": 30, "train_holdout": 4}
  assert results["steps"] == 5 and results["action_dim"] == 7
  assert results["groups"] == {"position": [0, 1, 2],
                               "orientation": [3, 4, 5], "gripper": [6]}
  best = results["upstream_style"]
  with open(seed_dir / "best_result.csv") as f:
    header, row = list(csv.reader(f))
  assert header[:4] == ["best_epoch", "train_loss", "val_seen_loss",
                        "val_seen_mse"]
  assert "val_seen_mse_gripper" in header and "val_seen_mse_yaw" in header
  assert int(row[0]) == best["epoch"]  # 1-based, as upstream counts epochs
  assert float(row[3]) == pytest.approx(best["validation"]["mse"], rel=1e-6)
  assert (seed_dir / "trajectories_validation.png").read_bytes()[:4] == \
      b"\x89PNG"

  relative = _regress(root, "--workdir=lary_workdir", "--action-mode=relative")
  assert relative.returncode == 0, relative.stderr[-3000:]
  history = run_state.read_history(
      str(out.parent / "mlp_relative" / "seed_42"), 2)
  assert history["validation"].shape == (2, 30, 7)  # one step: last - first

  killed = _regress(root, "--workdir=other", env={
      run_state.KILL_AFTER_EPOCHS_ENV: "1"})
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  resumed = _regress(root, "--workdir=other")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  got = run_state.read_history(str(root / "other" / "regress" / "calvin" /
                                   "pixels" / "mlp_absolute" / "seed_42"), 2)
  want = _regress(root, "--workdir=third")
  assert want.returncode == 0, want.stderr[-3000:]
  want = run_state.read_history(str(root / "third" / "regress" / "calvin" /
                                    "pixels" / "mlp_absolute" / "seed_42"), 2)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key])


def test_targets_use_each_robots_statistics(workdir):
  builder = workdir.builders["robocoin"]
  spec = metadata.DATASETS["robocoin"]
  stats = normalize.ActionStats.from_metadata(
      builder.info.metadata["action_stats"], "absolute")
  store = fs.FeatureSource(str(workdir.root / "lary_workdir" / "features" /
                               "robocoin" / "unseen" / "pixels"))
  targets = regress.read_targets(builder, "unseen", stats, False,
                                 store.identities)
  records = builder.as_data_source()["unseen"]
  robots = [r["robot_type"].decode() for r in records]
  assert "" in robots and len(set(robots)) > 1  # empty robot_type rows too
  for i, robot in enumerate(robots):
    mean, std = stats.lookup(robot)
    np.testing.assert_allclose(targets.mean[i], mean)
    raw = np.asarray(records[i]["action"])
    np.testing.assert_allclose(targets.normalised[i] * std + mean, raw,
                               atol=1e-5)
  assert targets.normalised.shape == (len(robots), spec.stride, 12)


def test_errors_name_the_fix(workdir):
  wrong = _regress(workdir.root, "--workdir=lary_workdir",
                   "--dataset=human_1st")
  assert wrong.returncode == 1
  assert "human_1st has no numeric action chunks" in wrong.stderr
  missing = _regress(workdir.root, "--workdir=lary_workdir",
                     "--model=random_vit")
  assert "no random_vit features of calvin train" in missing.stderr


def test_dit_end_to_end_and_upstreams_clipping(workdir):
  tiny = ["--model-type=dit", "--config.regress.dit_hidden=32",
          "--config.regress.dit_depth=1", "--config.regress.dit_heads=2"]
  clipped = _regress(workdir.root, "--workdir=dit", *tiny)
  assert clipped.returncode == 0, clipped.stderr[-3000:]
  out = workdir.root / "dit" / "regress" / "calvin" / "pixels"
  history = run_state.read_history(str(out / "dit_absolute" / "seed_42"), 2)
  assert history["validation"].shape == (2, 30, 35)
  # Upstream's scheduler clips every x_0 estimate: samples stay in [-1, 1].
  assert np.abs(history["validation"]).max() <= 1.0
  free = _regress(workdir.root, "--workdir=dit_free", *tiny,
                  "--config.regress.dit_clip_sample=False")
  assert free.returncode == 0, free.stderr[-3000:]
  history = run_state.read_history(str(
      workdir.root / "dit_free" / "regress" / "calvin" / "pixels" /
      "dit_absolute" / "seed_42"), 2)
  assert np.abs(history["validation"]).max() > 1.0
