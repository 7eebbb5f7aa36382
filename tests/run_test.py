"""`run` as one process and as two processes joined on 127.0.0.1.

Both read the same prepared tiny LARY-Sim (the first run renders it), each
process with 2 CPU devices, and must write the same report numbers: the
global batches, and so every probe step, do not depend on how the devices
are spread over processes.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import ml_collections
import pytest

from lary_jax import benchmark_run
from lary_jax.errors import LaryError
from tfds_builders import metadata
from tfds_builders import prepare

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The run's cheapest complete form: one weight-free model, both probes.
RUN_FLAGS = ("run", "--tiny", "--config.run.models=pixels",
             "--config.run.seeds=0", "--config.run.decoders=mlp:absolute",
             "--config.run.overrides.classify.epochs=2",
             "--config.run.overrides.classify.min_updates=0",
             "--config.run.overrides.regress.epochs=2",
             "--config.run.overrides.regress.min_updates=0")


def _env(devices: int) -> dict[str, str]:
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _numbers(workdir: pathlib.Path) -> dict[str, object]:
  """Every results.json under workdir, minus timings and paths."""
  out = {}
  for path in sorted(workdir.rglob("results.json")):
    data = json.loads(path.read_text())
    for key in ("seconds", "out_dir", "workdir", "created"):
      data.pop(key, None)
    out[str(path.relative_to(workdir))] = data
  return out


def _main(*args: str, devices: int = 4) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "lary_jax.main", *args],
                        env=_env(devices), cwd=ROOT, capture_output=True,
                        text=True, timeout=900)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one") / "wd"
  result = _main(*RUN_FLAGS, f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result.stdout


@pytest.fixture(scope="module")
def one_process(first_run):
  return first_run[0]


def test_run_renders_and_prepares_tiny_lary_sim(first_run):
  workdir, stdout = first_run
  assert "sim_classification: {'train': 24, 'validation': 12, 'unseen': 12}" \
      in stdout
  assert "sim_regression: {'train': 21, 'validation': 14, 'unseen': 17}" \
      in stdout
  b = prepare.builder(metadata.DATASETS["sim_regression"],
                      str(workdir / "tfds_tiny"))
  stats = b.info.metadata["action_stats"]
  assert stats["source"] == {"absolute": "train", "relative": "train"}
  assert len(stats["absolute"]["*"]["mean"]) == 7
  # check agrees that every rendered row is good.
  result = _main("check", "--dataset=sim",
                 f"--data_dir={workdir / 'lary_sim_tiny'}")
  assert result.returncode == 0, result.stdout + result.stderr[-2000:]
  assert "sim_classification: all 48 rows are good" in result.stdout
  assert "sim_regression: all 52 rows are good" in result.stdout


def test_one_process_writes_every_stage_and_a_rerun_skips_them(one_process):
  workdir = one_process
  assert (workdir / "report.html").exists()
  assert (workdir / "classify/sim_classification/pixels/results.json").exists()
  assert (workdir /
          "regress/sim_regression/pixels/mlp_absolute/results.json").exists()
  markers = sorted(p.name for p in (workdir / "run").iterdir())
  assert markers == ["classify_sim_classification_pixels.json", "data.json",
                     "extract_pixels.json",
                     "regress_sim_regression_pixels_mlp_absolute.json",
                     "report.json"]
  timings = json.loads((workdir / "run_timings.json").read_text())
  assert [sorted(t["stages_s"]) for t in timings] == [
      sorted(m[:-len(".json")] for m in markers)]
  stamps = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
  again = _main(*RUN_FLAGS, f"--workdir={workdir}")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "0 stage(s) run, 5 already done" in again.stdout
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == stamps


def test_two_processes_give_the_numbers_of_one(one_process, tmp_path):
  workdir = tmp_path / "wd"
  # Reuse the rendered and prepared data: only the later stages differ.
  shared = (f"--data_dir={one_process / 'lary_sim_tiny'}",
            f"--tfds_dir={one_process / 'tfds_tiny'}")
  port = _free_port()
  procs = [
      subprocess.Popen(
          [sys.executable, "-m", "lary_jax.main", *RUN_FLAGS, *shared,
           f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
           "--num_processes=2", f"--process_id={i}"],
          env=_env(2), cwd=ROOT, stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = []
  for proc in procs:
    try:
      logs.append(proc.communicate(timeout=900)[0])
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise
  for proc in procs:
    assert proc.returncode == 0, "\n".join(
        f"--- process {j}:\n{log[-3000:]}" for j, log in enumerate(logs))
  got, want = _numbers(workdir), _numbers(one_process)
  assert sorted(got) == sorted(want)
  for name in want:
    _close(got[name], want[name], name)


def test_probe_stages_side_by_side_give_the_numbers_of_one_at_a_time(
    one_process, tmp_path):
  # The first run trained its two probe stages in two threads (automatic
  # on a one-process CPU run); one thread must give the same bits.
  workdir = tmp_path / "wd"
  result = _main(*RUN_FLAGS, f"--workdir={workdir}",
                 f"--data_dir={one_process / 'lary_sim_tiny'}",
                 f"--tfds_dir={one_process / 'tfds_tiny'}",
                 "--config.run.probe_threads=1")
  assert result.returncode == 0, result.stderr[-3000:]
  timings = json.loads((workdir / "run_timings.json").read_text())[-1]
  first = json.loads((one_process / "run_timings.json").read_text())[0]
  assert (timings["probe_threads"], first["probe_threads"]) == (1, 2)
  assert _numbers(workdir) == _numbers(one_process)


def test_probe_threads_are_one_where_stages_must_not_overlap():
  cfg = ml_collections.ConfigDict({"run": {"probe_threads": 0}})
  assert benchmark_run.probe_threads(cfg, 1, "cpu") == 2
  assert benchmark_run.probe_threads(cfg, 1, "gpu") == 1
  assert benchmark_run.probe_threads(cfg, 2, "cpu") == 1
  cfg.run.probe_threads = 3
  assert benchmark_run.probe_threads(cfg, 1, "tpu") == 3
  assert benchmark_run.probe_threads(cfg, 4, "tpu") == 1
  cfg.run.probe_threads = -1
  with pytest.raises(LaryError, match="probe_threads=-1: expected 0"):
    benchmark_run.probe_threads(cfg, 1, "cpu")


def _close(got, want, path="") -> bool:
  """Nested equality, floats within 1e-5 relative.

  Two processes all-reduce a step's gradient in another order than one
  process's devices do, so float32 results agree to a few ulps, not to the
  bit (nothing promises that order); 1e-5 is ~80 ulps. Counts and choices
  (epochs, heads) must be equal.
  """
  if isinstance(want, dict):
    assert sorted(got) == sorted(want), path
    return all(_close(got[k], want[k], f"{path}.{k}") for k in want)
  if isinstance(want, list):
    assert len(got) == len(want), path
    return all(_close(g, w, f"{path}[{i}]")
               for i, (g, w) in enumerate(zip(got, want)))
  if isinstance(want, float):
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6), path
    return True
  assert got == want, path
  return True
