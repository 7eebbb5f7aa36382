"""The probes learn: `run`'s probe settings on a small LARY-Sim take the
sim_oracle control far above chance.

This is the test that fails when a probe, its training schedule or the data
path (render -> prepare -> extract -> probe -> report) breaks, which the
plumbing tests cannot see: everything there runs, but nothing is learnt.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from lary_jax.sim import layout
from lary_jax.sim import render

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Six classes a motion apart, 8 training clips each; chance is 1/6 and a
# guess lands in 4-33% on 24 clips (95%).
SIZES = layout.Sizes(
    classes=("reach_left", "reach_right", "lift_up", "put_down",
             "rotate_wrist", "open_gripper"),
    clips_per_class=(8, 4, 4), episodes=(6, 2, 2))
TOP1 = 0.6
MSE_RATIO = 0.5  # of predict-the-mean, absolute actions


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  root = tmp_path_factory.mktemp("learn")
  data_dir, workdir = root / "sim", root / "wd"
  render._simulate(str(data_dir), SIZES, tiny=False, seed=0, num_workers=2,  # pylint: disable=protected-access
                   progress=False)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  done = subprocess.run(
      [sys.executable, "-m", "lary_jax.main", "run", f"--workdir={workdir}",
       f"--data_dir={data_dir}", "--config.run.models=sim_oracle",
       "--config.run.seeds=0", "--config.run.decoders=mlp:absolute"],
      env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


def test_the_oracle_is_classified_far_above_chance(results):
  summary = json.loads((results / "classify" / "sim_classification" /
                        "sim_oracle" / "results.json").read_text())
  honest = summary["honest"]["validation"]
  assert honest["chance"]["chance"] == pytest.approx(1 / 6)
  assert honest["top1"]["mean"] >= TOP1, honest
  assert honest["top1_ci95"]["low"] > honest["chance"]["high"]
  assert not honest["at_chance"]
  seed = json.loads((results / "classify" / "sim_classification" /
                     "sim_oracle" / "seed_0" / "results.json").read_text())
  # run's small probes, sized by updates.
  assert seed["schedule"]["updates"] == 1000


def test_the_oracle_regresses_actions_below_the_mean(results):
  summary = json.loads((results / "regress" / "sim_regression" / "sim_oracle"
                        / "mlp_absolute" / "results.json").read_text())
  mse = summary["honest"]["validation"]["mse"]["mean"]
  assert mse <= MSE_RATIO * summary["floor"]["validation"], summary
  report = (results / "report.md").read_text()
  assert "Positive controls" in report
