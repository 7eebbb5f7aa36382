"""The command line as a new user meets it: `run --tiny`, then again."""

import os
import subprocess
import sys

from tfds_builders import prepare
from tfds_builders import metadata


def _main(*args, cwd):
  return subprocess.run([sys.executable, "-m", "lary_jax.main", *args],
                        capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_lists_every_command(tmp_path):
  result = _main("--help", cwd=tmp_path)
  for command in ("simulate", "check", "prepare", "run"):
    assert f"\n  {command} " in result.stdout


def test_run_tiny_renders_prepares_and_resumes(tmp_path):
  result = _main("run", "--tiny", cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "sim_classification: {'train': 24, 'validation': 12, 'unseen': 12}" \
      in result.stdout
  assert "sim_regression: {'train': 21, 'validation': 14, 'unseen': 17}" \
      in result.stdout
  workdir = tmp_path / "lary_workdir"
  data_dir = workdir / "lary_sim_tiny"
  stamps = {p: os.stat(p).st_mtime_ns for p in workdir.rglob("*")}
  b = prepare.builder(metadata.DATASETS["sim_regression"],
                      str(workdir / "tfds_tiny"))
  stats = b.info.metadata["action_stats"]
  assert stats["source"] == {"absolute": "train", "relative": "train"}
  assert len(stats["absolute"]["*"]["mean"]) == 7
  # A rerun finds everything finished and rewrites nothing.
  again = _main("run", "--tiny", cwd=tmp_path)
  assert again.returncode == 0, again.stderr[-2000:]
  assert {p: os.stat(p).st_mtime_ns for p in workdir.rglob("*")} == stamps
  # check agrees that every rendered row is good.
  result = _main("check", "--dataset=sim", f"--data_dir={data_dir}",
                 cwd=tmp_path)
  assert result.returncode == 0, result.stdout + result.stderr[-2000:]
  assert "sim_classification: all 48 rows are good" in result.stdout
  assert "sim_regression: all 52 rows are good" in result.stdout
