"""Configs of `python -m lary_jax.main train_lam`: one LAM experiment a file.

Each file is the default config plus a `lam` section built from
`lam_defaults()`, so the same `--config` also drives `extract`, the
probes and `run`. Installed as the package `lary_jax.configs.lam`.
"""

import ml_collections


def lam_defaults() -> ml_collections.ConfigDict:
  """The `lam` section every LAM config starts from.

  Model: `model` is the registry name the trained LAM is saved as (what
  `extract --model` takes), `preset` a `lapa.Config` classmethod and
  `model_overrides` fields replaced in it. Data: the frame pairs of
  `dataset`'s `split` (clips give their 8 consecutive-frame pairs,
  regression rows their (src, tgt) pair). The rest is
  `lary_jax.lams.train_lam.Options`.
  """
  c = ml_collections.ConfigDict()
  c.name = "lapa"  # output folder <workdir>/lam/<name>
  c.model = "lapa"
  c.preset = "lapa"
  c.model_overrides = ml_collections.ConfigDict()
  c.dataset = "sim"  # --dataset overrides it
  c.split = "train"  # --split overrides it
  # A clip's training pairs: frames (t, t + g) for each gap g (upstream:
  # consecutive frames, (1,)); extraction always reads consecutive pairs.
  c.clip_gaps = (1,)
  c.steps = 1000
  # Examples per step over all devices and processes, fixed so that the
  # numbers do not depend on the device count.
  c.global_batch = 64
  c.lr = 1e-4
  c.schedule = "constant"  # or "cosine" (after `warmup_steps`)
  c.warmup_steps = 0
  c.end_lr_factor = 0.0
  c.weight_decay = 0.0  # upstream LAQ: 0, i.e. Adam
  c.b1 = 0.9
  c.b2 = 0.99
  c.eps = 1e-8
  c.clip_norm = 0.5  # upstream's max_grad_norm
  # "auto": bfloat16 on GPU/TPU, float32 on CPU (bf16 is slower there);
  # parameters and optimizer state stay float32.
  c.compute_dtype = "auto"
  c.seed = 0
  # Dead codes re-seeded at steps that are multiples of `every` below
  # `before`, for each (every, before): LAPA's schedule.
  c.replace_schedule = ((10, 100), (100, 1000), (500, 5000))
  # Std of the noise on re-seeded codes. Upstream's 1e-12 vanishes in
  # float32: every copy of a live code ties with it and dies again.
  c.reseed_noise = 1e-12
  c.log_every = 10
  c.ckpt_every = 500
  c.read_threads = 4
  c.prefetch = 4
  c.worker_count = 0
  # Decoded frames kept in memory, up to this many MB: LARY-Sim's training
  # frames fit, and are then decoded once, not at every step.
  c.decode_cache_mb = 1024.0
  return c
