"""LAPA's pixel LAQ with upstream's training hyper-parameters.

    python -m lary_jax.main train_lam --config configs/lam/lapa.py \
        --dataset human_1st --workdir W
    python -m lary_jax.main extract --model lapa \
        --checkpoint W/lam/lapa/model --dataset human_1st

The model is upstream's `lapa` (dim 1024, quant_dim 32, 8 codes, patch 32,
depth 8/8, 16 heads of 64, code_seq_len 4) at LARY's 224 x 224; training as
LAPA's `laq/train_sthv2.py` and `LAQTrainer`: batch 64, Adam (weight decay
0) at a constant 1e-4 with betas (0.9, 0.99), gradients clipped to global
norm 0.5, 100,005 steps, dead codes re-seeded on LAPA's schedule. Upstream
trains in float32; `compute_dtype` "auto" uses bfloat16 on GPU/TPU.
"""

import ml_collections

from lary_jax.configs import default
from lary_jax.configs import lam


def get_config() -> ml_collections.ConfigDict:
  """The default config with upstream LAPA's `lam` section."""
  config = default.get_config()
  config.lam = lam.lam_defaults()
  t = config.lam
  t.name = "lapa"
  t.preset = "lapa"
  t.steps = 100_005
  t.global_batch = 64
  t.lr = 1e-4
  t.schedule = "constant"
  t.ckpt_every = 5000  # upstream saves every 5000 steps
  t.log_every = 50
  return config
