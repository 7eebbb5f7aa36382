"""A small pixel LAQ trained on LARY-Sim, for a laptop CPU and `run`.

    python -m lary_jax.main train_lam --config configs/lam/lapa_sim.py \
        --workdir W [--dataset sim]
    python -m lary_jax.main extract --model lapa \
        --checkpoint W/lam/lapa_sim/model --dataset sim --workdir W

`lapa.Config.sim_small()`: frames resized to 56 x 56, patch 8 (the 7 x 7
grid of upstream's 224 / 32), dim 128, depth 2/2, 4 heads of 32, 8 codes,
code_seq_len 4. It trains on LARY-Sim's training clips and regression
pairs, batch 16, 600 steps, AdamW at 1e-3 with a short warm-up and cosine
decay (LAPA's constant 1e-4 learns too little in a few hundred steps);
dead codes are re-seeded on LAPA's schedule.

Three changes from upstream's LAQ, each because LARY-Sim's arm moves about
one pixel between consecutive 56-pixel frames, so that upstream's recipe
reconstructs the next frame from the first alone and its codebook
collapses (perplexity ~1, probes at chance):
- clip_gaps (1, 2, 3, 4): a clip also gives the pairs (t, t + 2..4), so
  that the latent must carry larger motions;
- residual: the decoder predicts the change from the first frame, not the
  frame (copying the first frame is no longer free);
- motion_weight 10: pixels that change weigh 11x in the reconstruction loss.
`run` reads this model's continuous latent (before NSVQ), see
`config.run.encoder_options.run_lam`: its NSVQ latent, and the same model
trained for 400 or 800 steps or on gaps up to 8, probed lower on LARY-Sim
2.0 in our trials. Not upstream's model: `configs/lam/lapa.py` has
upstream's hyper-parameters.
"""

import ml_collections

from lary_jax.configs import default
from lary_jax.configs import lam


def get_config() -> ml_collections.ConfigDict:
  """The default config with a small LAPA `lam` section for LARY-Sim."""
  config = default.get_config()
  config.lam = lam.lam_defaults()
  t = config.lam
  t.name = "lapa_sim"
  t.preset = "sim_small"
  t.dataset = "sim"
  t.steps = 600
  t.clip_gaps = (1, 2, 3, 4)
  t.model_overrides = ml_collections.ConfigDict(
      dict(residual=True, motion_weight=10.0))
  t.global_batch = 16
  t.lr = 1e-3
  t.schedule = "cosine"
  t.warmup_steps = 20
  t.end_lr_factor = 0.1
  # Re-seeded codes that differ from their source, so that a codebook that
  # collapsed early (LARY-Sim's small frame changes) can split again.
  t.reseed_noise = 1e-2
  t.log_every = 10
  t.ckpt_every = 50
  return config
