"""A real 2-process run: two local processes joined by jax.distributed.

Each process has 2 CPU devices (4 global). Each must read only its rows of
every global batch, and the global arrays the two build together must equal
what one process reading everything builds.
"""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

from tests.data import distributed_worker as worker

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "data" / "distributed_worker.py"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two_processes(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  port = _free_port()
  procs = [
      subprocess.Popen(
          [sys.executable, str(WORKER), str(tmp_path / f"p{i}.npz"),
           "process", str(port), str(i)],
          env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
          text=True) for i in range(2)
  ]
  for proc in procs:
    try:
      log, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise
    assert proc.returncode == 0, log[-3000:]
  return [dict(np.load(tmp_path / f"p{i}.npz")) for i in range(2)]


def test_two_processes_read_disjoint_shards_and_build_the_same_arrays(
    tmp_path):
  results = _run_two_processes(tmp_path)
  for i, r in enumerate(results):
    assert r["process_index"] == i and r["process_count"] == 2
    assert r["device_count"] == 4 and r["local_batch"] == 4
    np.testing.assert_array_equal(r["mesh_processes"], [0, 0, 1, 1])

  expected = dict(worker.datasets(worker.split(), 0, 1))
  for name, ds in expected.items():
    steps = worker.TRAIN_STEPS if name == "train" else len(ds)
    assert all(r[f"{name}_steps"] == len(ds) for r in results)
    for step in range(steps):
      want = ds[step]
      for r in results:  # both processes hold the same global arrays
        for key in ("frames", "label", "index", "_mask"):
          np.testing.assert_array_equal(r[f"{name}_{step}_{key}"], want[key],
                                        err_msg=f"{name} {step} {key}")
        sums = want["frames"].astype(np.float32).sum(axis=(1, 2, 3, 4)) / 255
        np.testing.assert_allclose(r[f"{name}_{step}_row_sums"], sums,
                                   rtol=1e-5)
      # Process p holds rows [4p, 4p + 4) of the global batch.
      for p, r in enumerate(results):
        np.testing.assert_array_equal(r[f"{name}_{step}_local_index"],
                                      want["index"][4 * p:4 * p + 4])

  # Reads: disjoint between processes, together exactly what the steps need.
  train = [set(r["train_reads"].tolist()) for r in results]
  assert not train[0] & train[1]
  needed = np.concatenate([expected["train"][s]["index"]
                           for s in range(worker.TRAIN_STEPS)])
  assert train[0] | train[1] == set(needed.tolist())

  evals = [r["eval_reads"] for r in results]
  everything = np.sort(np.concatenate(evals))
  # 23 records over 3 steps of 8: one pad row, a copy of record 0, which
  # process 1 reads in the last step.
  np.testing.assert_array_equal(everything, np.r_[0, np.arange(23)])
  shared = set(evals[0].tolist()) & set(evals[1].tolist())
  assert shared == {0} and 0 in results[1]["eval_2_local_index"]
  mask = np.concatenate([results[0][f"eval_{s}__mask"] for s in range(3)])
  index = np.concatenate([results[0][f"eval_{s}_index"] for s in range(3)])
  np.testing.assert_array_equal(np.sort(index[mask]), np.arange(23))
