"""LARY on a laptop CPU: the default config with a smaller, faster probe.

    python -m lary_jax.main classify --model pixels --dataset sim \
        --config=configs/laptop.py

Not the protocol: the classification probe is 192 wide (4 attention heads
of 48, as upstream's 768 / 16), each frame's tokens are averaged to a 4 x 4
grid before both probes, batches hold 32 examples so that LARY-Sim's few
hundred examples still give ~140 updates, and the DiT is 128 wide. Results
carry these settings (`probe`, `training`, `decoder_shape`); use the default
config for numbers comparable with upstream.
"""

import ml_collections

from lary_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
  """The default config with the laptop probe."""
  config = default.get_config()
  config.classify.global_batch = 32
  config.classify.eval_batch = 64
  config.classify.probe.model_dim = 192
  config.classify.probe.num_heads = 4
  config.classify.probe.pool_grid = 4
  config.regress.global_batch = 32
  config.regress.eval_batch = 32
  config.regress.pool_grid = 4
  config.regress.dit_hidden = 128
  config.regress.dit_heads = 4
  return config
