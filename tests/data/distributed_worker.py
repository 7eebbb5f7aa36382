"""Subprocess entry point for the multi-device and multi-process tests.

  python tests/data/distributed_worker.py OUT.npz devices
  python tests/data/distributed_worker.py OUT.npz process PORT PROCESS_ID

`devices` runs one process over however many CPU devices XLA_FLAGS gives it;
`process` joins a 2-process run on 127.0.0.1:PORT. Either way the process
reads its share of a small split, builds global arrays from it and writes
them, gathered to the host, into OUT.npz. (Importing jax does not start its
backend; `initialize_distributed` still runs before anything that does.)
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from lary_jax import mesh as mesh_lib
from lary_jax.data import pipeline as pl
from tests.data import fake_records

SPLIT_SIZE = 23
GLOBAL_BATCH = 8
TRAIN_STEPS = 2
SEED = 7


def split():
  """The shared split: 23 clips, 4 classes."""
  return fake_records.classification_records(
      [i % 4 for i in range(SPLIT_SIZE)])


def datasets(source, process_index=None, process_count=None):
  """(name, dataset) pairs that every side of a comparison reads."""
  kw = dict(global_batch=GLOBAL_BATCH, process_index=process_index,
            process_count=process_count)
  transforms = (pl.DecodeFrames(image_size=8),)
  keys = ("frames", "label")
  return [
      ("train", pl.train_dataset(source, transforms, keys, seed=SEED,
                                 num_epochs=1, **kw)),
      ("eval", pl.eval_dataset(source, transforms, keys, **kw)),
  ]


def main(argv):
  out, mode = argv[1], argv[2]
  if mode == "process":
    mesh_lib.initialize_distributed(f"127.0.0.1:{argv[3]}", 2, int(argv[4]))
  else:
    mesh_lib.initialize_distributed()  # no cluster: must fall through
  mesh = mesh_lib.make_mesh()
  local = mesh_lib.local_batch_size(GLOBAL_BATCH)

  @jax.jit
  def row_sums(frames):  # [B, T, H, W, 3] uint8 -> [B]
    return pl.images_to_float(frames).sum(axis=(1, 2, 3, 4))

  result = {
      "process_count": jax.process_count(),
      "process_index": jax.process_index(),
      "device_count": jax.device_count(),
      "local_batch": local,
      "mesh_processes": np.array([d.process_index for d in mesh.devices]),
  }
  try:
    mesh_lib.local_batch_size(12)
    result["error_12"] = ""
  except Exception as e:
    result["error_12"] = str(e)

  source = fake_records.RecordingSource(split())
  for name, ds in datasets(source):
    source.reads.clear()
    steps = TRAIN_STEPS if name == "train" else len(ds)
    result[f"{name}_steps"] = len(ds)
    for step in range(steps):
      local_batch = ds[step]
      batch = pl.to_device(local_batch, mesh)
      assert batch["frames"].dtype == jnp.uint8
      result[f"{name}_{step}_local_index"] = local_batch["index"]
      result[f"{name}_{step}_row_sums"] = multihost_utils.process_allgather(
          row_sums(batch["frames"]), tiled=True)
      for key, value in batch.items():
        result[f"{name}_{step}_{key}"] = multihost_utils.process_allgather(
            value, tiled=True)
    result[f"{name}_reads"] = np.array(source.reads)
  np.savez(out, **result)
  multihost_utils.sync_global_devices("written")


if __name__ == "__main__":
  main(sys.argv)
