"""The paper's effective batch sizes: upstream's runs on 8 GPUs.

    python -m lary_jax.main classify --model dinov2 --dataset robot_1st \
        --config=configs/paper.py

Upstream's `classify` starts one process per GPU (`--gpus`, default
0,...,7) with a batch of 256 on each, and `regress` launches 8 accelerate
processes (CUDA_VISIBLE_DEVICES, default 0,...,7) of 256 each: the published
numbers were trained with global batches of 8 x 256 = 2048, learning rates
unchanged. lary-jax fixes the global batch whatever the device count, so this
file, not the number of devices, reproduces them. `configs/default.py`
keeps 256, upstream's single-GPU setting.
"""

import ml_collections

from lary_jax.configs import default

UPSTREAM_PROCESSES = 8
PER_PROCESS_BATCH = 256


def get_config() -> ml_collections.ConfigDict:
  """The default config with upstream's 8-process global batches."""
  config = default.get_config()
  batch = UPSTREAM_PROCESSES * PER_PROCESS_BATCH
  config.classify.global_batch = batch
  config.regress.global_batch = batch
  return config
