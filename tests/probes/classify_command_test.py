"""`classify` through the command line: results files, seeds, resuming after
kill -9, device count, and the errors a user meets."""

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
from lary_jax.encoders import registry
from lary_jax.probes import run_state
from tests.builders import fake_data_dir
from tfds_builders import metadata
from tfds_builders import prepare

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning")

ROOT = pathlib.Path(__file__).resolve().parents[2]
SMALL = ["--config.classify.epochs=2", "--config.classify.global_batch=8",
         "--config.classify.eval_batch=8",
         "--config.classify.probe.model_dim=32",
         "--config.classify.probe.num_heads=2",
         "--config.classify.probe.depth=2",
         "--config.classify.probe.pool_grid=2",
         "--config.classify.holdout=0.25"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp("classify")
  data_dir, tfds_dir = str(root / "data"), str(root / "lary_workdir" / "tfds")
  fake_data_dir.make_classification(data_dir, "human_1st",
                                    clips_per_class=(4, 2))
  builder = prepare.prepare(metadata.DATASETS["human_1st"], data_dir,
                            tfds_dir, options=prepare.PrepareOptions(
                                num_workers=0))
  encoder = registry.load("pixels")
  for split in ("train", "validation"):
    extract.extract_split(
        encoder, builder.as_data_source()[split], mode="video",
        store_dir=str(root / "lary_workdir" / "features" / "human_1st" /
                      split / "pixels"),
        fields={"model": "pixels"},
        options=extract.Options(global_batch=4, micro_batch=2))
  return types.SimpleNamespace(root=root)


def _classify(root, *extra, devices=1, env=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             **(env or {}))
  return subprocess.run(
      [sys.executable, "-m", "lary_jax.main", "classify", "--model=pixels",
       "--dataset=human_1st", "--tfds_dir=lary_workdir/tfds",
       "--out=lary_workdir/features", *SMALL, *extra], cwd=root, env=env,
      capture_output=True, text=True, timeout=300)


def _history(out):
  return run_state.read_history(str(out), 2)


def test_results_over_seeds_and_resume_after_kill(workdir):
  root = workdir.root
  first = _classify(root, "--seeds=0,1", "--workdir=lary_workdir")
  assert first.returncode == 0, first.stderr[-3000:]
  out = root / "lary_workdir" / "classify" / "human_1st" / "pixels"
  assert "upstream-style (chosen on val)" in first.stdout
  # Each seed says how long its training will take (2 epochs of 2 steps:
  # 9 clips left after the holdout, batch 8), timed here on epochs of the
  # features held in memory.
  assert "classify seed_0: 4 training steps at " in first.stdout
  assert "honest (chosen on train holdout)" in first.stdout
  summary = json.loads((out / "results.json").read_text())
  assert summary["seeds"] == [0, 1]
  assert summary["upstream_style"]["validation"]["top1"]["n"] == 2
  for seed in (0, 1):
    seed_dir = out / f"seed_{seed}"
    results = json.loads((seed_dir / "results.json").read_text())
    assert results["examples"] == {"validation": 6, "train_holdout": 3}
    assert len(results["epochs"]) == 2
    assert len(results["epochs"][0]["validation"]["top1"]) == 5
    assert results["upstream_style"]["per_source_dataset"]["SSv2"][
        "count"] == 6
    for name in ("per_class_honest.csv", "confusion_upstream_style.png",
                 "confusion_honest.csv"):
      assert (seed_dir / name).exists(), name

  # kill -9 after the first epoch, then the same command finishes the run
  # with exactly the predictions of the uninterrupted one.
  killed = _classify(root, "--workdir=other", env={
      run_state.KILL_AFTER_EPOCHS_ENV: "1"})
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  resumed_dir = root / "other" / "classify" / "human_1st" / "pixels"
  assert not (resumed_dir / "seed_0" / "evals" / "epoch_001.npz").exists()
  resumed = _classify(root, "--workdir=other")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  got, want = _history(resumed_dir / "seed_0"), _history(out / "seed_0")
  for split in want:
    np.testing.assert_array_equal(got[split], want[split])
  # Eight devices split every batch eight ways: the same global batch, so
  # the same training up to the order in which a step sums its loss and
  # gradient over devices. Nothing promises that order (XLA's all-reduce
  # picks it), so float32 numbers may differ by a few ulps: 1 ulp (1.2e-7
  # relative) on 4 of the 10 losses on the machine that wrote this, which
  # the 4 AdamW steps did not grow. rtol 1e-5 (~80 ulps) leaves room for
  # other machines' kernels; a lost or changed clip, 1/8 of a batch's mean
  # loss, would move the losses by ~1e-2.
  eight = _classify(root, "--workdir=eight", devices=8)
  assert eight.returncode == 0, eight.stderr[-3000:]
  got = _history(root / "eight" / "classify" / "human_1st" / "pixels" /
                 "seed_0")
  assert sorted(got) == sorted(want)
  np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-5)
  # Predicted classes rank logits that differ by as little, so a near tie
  # may swap two of them: most top-1 classes agree, and the training hit
  # rate (2 steps x 8 clips an epoch) within one clip.
  for split in ("validation", "train_holdout"):
    assert (got[split][..., 0] == want[split][..., 0]).mean() > 0.9, split
  np.testing.assert_allclose(got["train_top1"], want["train_top1"],
                             atol=1 / 16 + 1e-6)


def test_errors_name_the_fix(workdir):
  wrong_dim = _classify(workdir.root, "--workdir=lary_workdir", "--dim=1024")
  assert wrong_dim.returncode == 1
  assert "error: --dim 1024, but" in wrong_dim.stderr
  assert "width 588" in wrong_dim.stderr
  classes = _classify(workdir.root, "--workdir=lary_workdir", "--classes=5")
  assert "error: --classes 5, but" in classes.stderr
  missing = _classify(workdir.root, "--workdir=lary_workdir",
                      "--model=random_vit")
  assert missing.returncode == 1
  assert "no random_vit features of human_1st train" in missing.stderr
  assert "extract --model random_vit --dataset human_1st" in missing.stderr
  other = _classify(workdir.root, "--workdir=lary_workdir",
                    "--config.classify.epochs=3")
  assert other.returncode == 1
  assert "holds a run with other settings (differing: ['options'])" in \
      other.stderr
  micro = _classify(workdir.root, "--workdir=lary_workdir",
                    "--config.classify.micro_batch=3")
  assert "error: classify.micro_batch=3 must divide the 8 examples of " \
      "classify.global_batch=8" in micro.stderr
  regression = _classify(workdir.root, "--workdir=lary_workdir",
                         "--dataset=calvin")
  assert "calvin is a regression dataset" in regression.stderr
