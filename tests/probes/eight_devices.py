"""Runs a test worker module in its own process on 8 forced CPU devices."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_worker(module: str, out_dir: pathlib.Path, timeout: int) -> dict:
  """`python -m module out_dir` on 8 CPU devices; the info.json it wrote."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run([sys.executable, "-m", module, str(out_dir)],
                          env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads((out_dir / "info.json").read_text())
