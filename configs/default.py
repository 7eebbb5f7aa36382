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

  return config
