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
  # PNG's zlib level: 1 writes ~2.6x faster and ~20% more bytes than 6,
  # and decodes to the same pixels (`run` on LARY-Sim takes 1).
  config.prepare.png_level = 6
  config.prepare.num_workers = 0  # 0: one worker process per CPU core
  config.prepare.allow_absolute_paths = False  # CSV paths stay in DATA_DIR
  config.prepare.overwrite = False
  # Also store V-JEPA 2's own view of each full-resolution frame (short side
  # 256, centre crop 224): the squashed 224 frames cannot give it, and
  # without it V-JEPA 2 features differ from upstream's. ~2x the frame bytes.
  config.prepare.vjepa2_view = False

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
  # Which stored frames the encoder reads. "model": its own view where it has
  # one (V-JEPA 2: the crop stored by --config.prepare.vjepa2_view=True, as
  # upstream), else the 224 squashed frames; "squashed": those for any model.
  config.extract.frames = "model"
  # MiB of decoded frames kept for the whole process, so that each model
  # after the first reads them from memory (`run` on LARY-Sim: see
  # config.run.overrides); 0 keeps none, as for LARYBench's terabytes.
  config.extract.decode_cache_mb = 0.0

  config.classify = ml_collections.ConfigDict()
  config.classify.epochs = 20
  # 0: an epoch is one pass over train (upstream). n > 0: epochs grow so that
  # training makes at least n updates in all (a small dataset's probe could
  # not learn in 20 passes of a few steps; `run` on LARY-Sim).
  config.classify.min_updates = 0
  # Examples per step over all devices (upstream: 256), fixed so that the
  # numbers do not depend on the device count.
  config.classify.global_batch = 256
  config.classify.eval_batch = 256
  # "auto": bfloat16 on GPU/TPU (upstream trains in bf16), float32 on CPU,
  # where bf16 matmuls are slower (no AMX on common x86 CPUs).
  config.classify.compute_dtype = "auto"
  # Probes computed at once in a step: 1 keeps one probe's activations in
  # memory; 5 vmaps all five (faster on a big accelerator, 5x the memory).
  config.classify.head_batch = 1
  # Examples a device computes at once; the rest of its share of the global
  # batch follows in further micro-batches with their gradients summed (the
  # numbers of one big batch). 0: the largest that fits the device's free
  # memory (the protocol's probe on encoder tokens needs ~0.6 GB an example).
  config.classify.micro_batch = 0
  # Share of train held out (per class) to pick the honest head and epoch;
  # 0 trains on all of train, as upstream, and reports no honest number.
  config.classify.holdout = 0.1
  # The five probes' (learning rate, weight decay), upstream's.
  config.classify.heads = ((5e-3, 0.01), (3e-3, 0.1), (1e-3, 0.4),
                           (3e-4, 0.8), (1e-4, 0.01))
  config.classify.label_smoothing = 0.1
  config.classify.balanced = True  # class-balanced draws with replacement
  config.classify.read_threads = 4
  # Splits whose (pooled) features fit this many MiB are held on the devices
  # and trained without an input pipeline (lary_jax/probes/in_memory.py):
  # LARY-Sim's small probes; 0 always streams.
  config.classify.in_memory_mb = 1024.0
  config.classify.probe = ml_collections.ConfigDict()
  config.classify.probe.model_dim = 768
  config.classify.probe.num_heads = 16
  config.classify.probe.depth = 4  # 3 self-attention blocks + cross-attention
  # >0 averages each frame's token grid to pool_grid x pool_grid cells before
  # the probe: not the protocol, a laptop speed-up (configs/laptop.py).
  config.classify.probe.pool_grid = 0

  config.regress = ml_collections.ConfigDict()
  config.regress.epochs = 20
  config.regress.min_updates = 0  # as classify.min_updates
  config.regress.global_batch = 256  # fixed whatever the device count
  config.regress.eval_batch = 256
  config.regress.lr = 1e-4
  config.regress.weight_decay = 1e-4
  config.regress.warmup = 0.1  # linear warm-up share of all steps
  config.regress.compute_dtype = "float32"  # upstream trains in fp32
  config.regress.holdout = 0.1  # as classify.holdout
  # Parameters at least this big (MiB of float32) are sharded over the data
  # axis with their AdamW moments; upstream's MLP on DINOv2 pairs has a
  # 2.1 B-parameter first layer. Negative: never shard.
  config.regress.shard_min_mb = 256.0
  config.regress.read_threads = 4
  config.regress.in_memory_mb = 1024.0  # as classify.in_memory_mb
  # >0 averages each frame's tokens to pool_grid x pool_grid cells before
  # flattening: not the protocol, a laptop speed-up (configs/laptop.py).
  config.regress.pool_grid = 0
  config.regress.mlp_hidden = 4096
  config.regress.mlp_blocks = 2
  config.regress.dit_hidden = 512
  config.regress.dit_depth = 6
  config.regress.dit_heads = 8
  # Upstream's DDPM scheduler clips each predicted x_0 to [-1, 1] normalised
  # units, so DiT predictions cannot reach the ~1/3 of targets beyond that;
  # False lets them (not upstream's numbers).
  config.regress.dit_clip_sample = True

  # `run`: the whole benchmark in one command (lary_jax/benchmark_run.py).
  config.run = ml_collections.ConfigDict()
  # Registry names; "run_lam" is the LAM that `run` trains (lam_config).
  # sim_oracle (LARY-Sim's recorded states) and flow (optical flow) are
  # positive controls; pixels and random_vit are floors.
  config.run.models = "sim_oracle,flow,pixels,random_vit,run_lam"
  config.run.lam_config = "lam/lapa_sim"  # a --config name, or a .py file
  config.run.seeds = "0,1,2"
  # Probe stages run side by side: 0 = 2 on a one-process CPU run (a small
  # probe keeps one core busy), else 1; several processes always take 1.
  config.run.probe_threads = 0
  # Encoder options per model (config.extract.encoder_options for the others):
  # a ViT-Ti/32 keeps the random-ViT baseline inside the laptop budget; the
  # run's small LAM is read before its quantiser (configs/lam/lapa_sim.py).
  config.run.encoder_options = ml_collections.ConfigDict(dict(
      random_vit="variant=Ti/32", run_lam="latent=continuous"))
  # Regression decoders, TYPE:MODE (mlp|dit : absolute|relative).
  config.run.decoders = "mlp:absolute,mlp:relative"
  # Which probes `run` trains: "auto" the small ones below on LARY-Sim and
  # the protocol's on LARYBench data (--datasets/--data_dir); "small" or
  # "protocol" for every dataset.
  config.run.probes = "auto"
  # The small probes (not the protocol, and marked so in the report): sized
  # by updates, not epochs, so that LARY-Sim's few hundred examples are
  # learnt from (sim_oracle reaches its thresholds), in minutes on 2 CPU
  # cores; 5 evaluations (epochs) of the 1000 updates, each a candidate for
  # selection. Every model of a dataset gets the same settings.
  config.run.overrides = ml_collections.ConfigDict()
  # LARY-Sim's decoded frames (~0.9 GiB) fit in memory: decoded once for
  # every model (and the run's LAM, lam.decode_cache_mb) instead of by each.
  config.run.overrides.extract = ml_collections.ConfigDict(dict(
      decode_cache_mb=1024.0))
  config.run.overrides.prepare = ml_collections.ConfigDict(dict(png_level=1))
  config.run.overrides.classify = ml_collections.ConfigDict(dict(
      epochs=5, min_updates=1000, global_batch=16, eval_batch=64,
      heads=((1e-2, 0.01), (5e-3, 0.01), (3e-3, 0.1)), head_batch=3,
      probe=dict(model_dim=32, num_heads=2, depth=2, pool_grid=2)))
  config.run.overrides.regress = ml_collections.ConfigDict(dict(
      epochs=5, min_updates=1000, global_batch=32, eval_batch=64, lr=1e-3,
      pool_grid=2, mlp_hidden=512, dit_hidden=64, dit_depth=2, dit_heads=2))

  return config
