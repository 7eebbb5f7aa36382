"""The default config of every `python -m lary_jax.main` command.

    python -m lary_jax.main prepare --dataset calvin --data_dir $DATA_DIR \
        --config=configs/default.py --config.prepare.frame_format=jpeg

Override any field with `--config.SECTION.FIELD=VALUE`. What a command is run
on (`--dataset`, `--data_dir`, `--tiny`, `--seed`, ...) are flags, not config.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the default config."""
  config = ml_collections.ConfigDict()

  config.prepare = ml_collections.ConfigDict()
  config.prepare.frame_format = "png"  # lossless; "jpeg": BENCHMARKS.md
  config.prepare.jpeg_quality = 95
  config.prepare.num_workers = 0  # 0: one worker process per CPU core
  config.prepare.allow_absolute_paths = False  # CSV paths stay in DATA_DIR
  config.prepare.overwrite = False

  config.sim = ml_collections.ConfigDict()
  config.sim.num_workers = 0  # 0: one worker process per CPU core

  config.convert = ml_collections.ConfigDict()
  config.convert.variant = ""  # size preset for .pt files that carry no config

  config.check = ml_collections.ConfigDict()
  config.check.num_workers = 0

  config.extract = ml_collections.ConfigDict()
  # Examples per step over all devices and processes. Fixed, so that what a
  # row's features are does not depend on how many devices computed them.
  config.extract.global_batch = 128
  # Examples per encoder call on each device; the global batch must split
  # into whole micro batches on every device. 0 encodes a device's whole
  # share at once: sometimes faster, but then the last bits of the features
  # depend on the device count.
  config.extract.micro_batch = 8
  config.extract.dtype = "float16"  # storage; "float32" doubles the bytes
  config.extract.compute_dtype = "float32"  # encoder compute; or "bfloat16"
  config.extract.shard_mb = 256.0  # about how many MiB one shard holds
  config.extract.worker_count = 0  # grain decode processes; 0: threads only
  config.extract.read_threads = 4
  config.extract.prefetch = 4  # batches read ahead
  config.extract.encoder_options = ""  # e.g. "variant=S/16,seed=0"
  config.extract.export_dtype = "float32"  # `tokens` in --export_npz files

  return config
