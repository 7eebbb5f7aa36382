"""The persistent compilation cache: a second `run` loads what the first
compiled, and computes bitwise the same features and probe results."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lary_jax import compilation
from tests.builders import fake_data_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A whole `run` at its smallest: prepare, extract `pixels`, the attentive
# probe for two epochs, the report.
RUN_FLAGS = ("run", "--dataset=human_1st", "--config.run.models=pixels",
             "--config.run.probes=small",
             "--config.run.overrides.classify.epochs=2",
             "--config.run.overrides.classify.global_batch=8",
             "--config.run.overrides.classify.eval_batch=8",
             "--config.classify.holdout=0.25")


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compilation.default_cache_dir() == str(
      tmp_path / "lary_jax" / "jax_cache")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert compilation.default_cache_dir() == str(
      tmp_path / "home" / ".cache" / "lary_jax" / "jax_cache")


def test_stats_count_this_process_compilations():
  compilation.track()
  before = compilation.stats()
  # A function no other test compiles, at a shape of its own.
  jax.jit(lambda x: jnp.sin(x) * 3.25 + 0.5)(jnp.ones((3, 7, 11)))
  delta = compilation.stats() - before
  assert delta.compilations >= 1
  assert delta.compile_s > 0
  assert delta.trace_s > 0 and delta.lower_s > 0
  assert delta.as_dict()["compilations"] == delta.compilations


def _run(workdir, data_dir, cache_dir, *extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  result = subprocess.run(
      [sys.executable, "-m", "lary_jax.main", *RUN_FLAGS,
       f"--workdir={workdir}", f"--data_dir={data_dir}",
       f"--metadata_dir={data_dir}/metadata",
       f"--compilation_cache_dir={cache_dir}", *extra],
      env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads((workdir / "run_timings.json").read_text())[-1]


def _features(workdir: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(workdir)): p.read_bytes()
          for p in sorted((workdir / "features").rglob("shard-*.npy"))}


def _results(workdir: pathlib.Path) -> dict[str, object]:
  out = {}
  for path in sorted((workdir / "classify").rglob("*.json")):
    data = json.loads(path.read_text())
    for key in ("seconds", "out_dir", "workdir", "created"):
      data.pop(key, None)
    out[str(path.relative_to(workdir))] = data
  return out


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("cache")
  data_dir = root / "data"
  fake_data_dir.make_classification(str(data_dir), "human_1st",
                                    clips_per_class=(4, 2))
  cache = root / "jax_cache"
  first = _run(root / "first", data_dir, cache)
  entries = sorted(os.listdir(cache))
  second = _run(root / "second", data_dir, cache)
  return root, first, second, entries


def test_second_run_loads_every_executable_from_the_cache(two_runs):
  root, first, second, entries = two_runs
  compiling = [s for s in first["compile"]
               if first["compile"][s]["compilations"]]
  assert compiling == ["extract_pixels", "classify_human_1st_pixels"]
  for stage in compiling:
    was, now = first["compile"][stage], second["compile"][stage]
    # The first run fills the cache (a program it compiles again, as each
    # seed's probe step, is already a hit there); the second loads every
    # executable, the probes' steps included.
    assert was["cache_misses"] > 0, stage
    assert was["cache_hits"] + was["cache_misses"] == was["compilations"]
    assert now["compilations"] == was["compilations"], stage
    assert now["cache_hits"] == now["compilations"], stage
    assert now["cache_misses"] == 0, stage
    assert now["compile_s"] < was["compile_s"], stage
  written = sum(first["compile"][s]["cache_misses"] for s in compiling)
  assert len([e for e in entries if e.endswith("-cache")]) == written
  assert sorted(os.listdir(root / "jax_cache")) == entries


def test_cached_executables_compute_bitwise_the_same(two_runs):
  root = two_runs[0]
  first, second = _features(root / "first"), _features(root / "second")
  assert first and first == second
  first, second = _results(root / "first"), _results(root / "second")
  assert "classify/human_1st/pixels/results.json" in first
  assert first == second
  got = [np.load(root / run / "classify/human_1st/pixels/seed_0/evals"
                 / "epoch_001.npz") for run in ("first", "second")]
  assert got[0].files
  for key in got[0].files:
    np.testing.assert_array_equal(got[0][key], got[1][key])


def test_nocompilation_cache_writes_nothing(two_runs, tmp_path):
  root = two_runs[0]
  cache = tmp_path / "unused"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  result = subprocess.run(
      [sys.executable, "-m", "lary_jax.main", "extract", "--model=pixels",
       "--dataset=human_1st", "--split=validation",
       f"--tfds_dir={root / 'first' / 'tfds'}", f"--out={tmp_path / 'f'}",
       f"--compilation_cache_dir={cache}", "--nocompilation_cache"],
      env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / "f" / "human_1st" / "validation" / "pixels" /
          "manifest.json").exists()
  assert not cache.exists()
