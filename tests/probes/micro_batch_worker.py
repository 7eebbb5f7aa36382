"""Run under 8 forced CPU devices: the probe step on one whole batch and in
micro-batches (one row a device at a time); saves both trainings."""

import json
import sys

import jax
import numpy as np

from tests.probes import fitted_steps_test as t


def main(out: str) -> None:
  steps = {}
  for name, micro in (("whole", t.whole_batch()), ("micro", 1)):
    got = t.train(micro)
    steps[name] = got["micro_steps"]
    np.savez(f"{out}/{name}.npz", **got)
  with open(f"{out}/info.json", "w") as f:
    json.dump({"devices": jax.device_count(), "micro_steps": steps}, f)


if __name__ == "__main__":
  main(sys.argv[1])
