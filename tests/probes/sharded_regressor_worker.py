"""Run under 8 forced CPU devices: trains the same decoder with its big
parameters sharded over `data` and fully replicated, saves predictions."""

import json
import sys

import jax
import numpy as np
from flax import nnx

from lary_jax.probes import regress
from lary_jax.probes import train_regressor as tr
from tests.probes import train_regressor_test as t


def main(out: str) -> None:
  train_rows, _ = t.synthetic(64, 0)
  val_rows, _ = t.synthetic(16, 1)
  decoder = regress.mlp(hidden=32)(t.STEPS, t.DIM)
  for name, min_mb in (("sharded", 0.0), ("replicated", -1.0)):
    options = tr.Options(epochs=2, global_batch=16, eval_batch=16, lr=3e-3,
                         shard_min_mb=min_mb)
    history = tr.train(decoder, t.TOKENS, tr.Split(train_rows),
                       {"validation": tr.Split(val_rows)}, f"{out}/{name}",
                       seed=0, options=options, progress=False)
    np.save(f"{out}/{name}.npy", history["validation"])
  model = decoder.make(64, 0, np.float32)
  params = nnx.state(model)
  from lary_jax import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  shardings = tr.param_shardings(params, mesh_lib.make_mesh(), 0.0)
  sharding = shardings["fc1"]["kernel"].value
  placed = jax.device_put(params["fc1"]["kernel"][...], sharding)
  with open(f"{out}/info.json", "w") as f:
    json.dump({"devices": jax.device_count(),
               "fc1_spec": list(sharding.spec),
               "fc1_shard_rows": placed.addressable_shards[0].data.shape[0]},
              f)


if __name__ == "__main__":
  main(sys.argv[1])
