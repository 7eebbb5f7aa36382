"""Tests for lary_jax.mesh, including 8 forced CPU devices in a subprocess."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from lary_jax import mesh as mesh_lib
from lary_jax.data import pipeline as pl
from lary_jax.errors import LaryError
from tests.data import distributed_worker as worker

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "data" / "distributed_worker.py"


def test_mesh_spans_every_device():
  mesh = mesh_lib.make_mesh("batch")
  assert mesh.axis_names == ("batch",)
  assert mesh.devices.size == jax.device_count()


def test_local_batch_size_checks_divisibility():
  assert mesh_lib.local_batch_size(6) == 6 // jax.process_count()
  with pytest.raises(LaryError, match="global batch 0 is not a positive"):
    mesh_lib.local_batch_size(0)


def test_initialize_distributed_needs_all_three_arguments():
  with pytest.raises(LaryError, match="together"):
    mesh_lib.initialize_distributed("127.0.0.1:1234", 2)


def test_initialize_distributed_after_jax_started_stays_single_process():
  jax.devices()  # the backend is up
  mesh_lib.initialize_distributed()
  assert jax.process_count() == 1


def test_eight_devices_build_the_same_global_arrays(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  out = tmp_path / "devices.npz"
  run = subprocess.run(
      [sys.executable, str(WORKER), str(out), "devices"], env=env, cwd=ROOT,
      capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  r = dict(np.load(out))
  assert r["device_count"] == 8 and r["process_count"] == 1
  assert r["local_batch"] == 8
  assert "not a multiple of its 8 devices" in str(r["error_12"])

  # The same steps on this process's single device.
  mesh = mesh_lib.make_mesh()
  for name, ds in worker.datasets(worker.split(), 0, 1):
    steps = worker.TRAIN_STEPS if name == "train" else len(ds)
    for step in range(steps):
      batch = pl.to_device(ds[step], mesh)
      sums = np.asarray(pl.images_to_float(batch["frames"]).sum(
          axis=(1, 2, 3, 4)))
      np.testing.assert_allclose(r[f"{name}_{step}_row_sums"], sums,
                                 rtol=1e-6)
      for key, value in batch.items():
        got = r[f"{name}_{step}_{key}"]
        assert got.dtype == value.dtype
        np.testing.assert_array_equal(got, np.asarray(value),
                                      err_msg=f"{name} {step} {key}")
