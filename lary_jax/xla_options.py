"""XLA compile options, per platform: an encoder's forward pass (by model)
and a training step.

On CPU, XLA (jaxlib 0.10) hands convolutions, dots and reductions to
YNNPACK. For the convolutional encoders (the pixel tokenizers: FLUX.2,
MAGVIT2, Wan2.2) its own kernels do better on the 2-core x86 machine this
project is measured on: Eigen's convolutions run 1.3-1.9x faster, all but a
first layer on 3 channels (a 3x3 conv [9, 112, 112, 160] -> 160: 0.32 s vs
0.18 s), and Wan2.2's channel norms sum faster without YNNPACK's reductions
(4.6 vs 6.3 s a clip); see `benchmarks/pixel_tokenizers.py`. The
transformers keep XLA's defaults: a ViT-L/14 forward runs 6% slower without
YNNPACK's reductions.

Training steps keep YNNPACK too: the LAQ step's convolution gradients run
slower on Eigen (350 vs 265 ms a `sim_small` step). They take the options of
`training_step`.
"""

from __future__ import annotations

from typing import Any

# Profiles a model module names in its XLA_PROFILE: "" keeps XLA's defaults.
DEFAULT = ""
CONVOLUTIONAL = "convolutional"
PROFILES = (DEFAULT, CONVOLUTIONAL)

# YNNPACK for dots alone (XLA's default list adds convolutions and
# reductions).
_CPU = {CONVOLUTIONAL: {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}}


def encoder_forward(platform: str, profile: str) -> dict[str, Any] | None:
  """`jax.jit(..., compiler_options=...)` for the forward of an encoder of
  `profile` on `platform` ("cpu", "gpu", "tpu"); None: XLA's defaults."""
  if profile not in PROFILES:
    raise ValueError(f"XLA profile {profile!r}, expected one of {PROFILES}")
  options = _CPU.get(profile) if platform == "cpu" else None
  return dict(options) if options else None


def training_step(platform: str) -> dict[str, Any] | None:
  """`jax.jit(..., compiler_options=...)` for a training step (forward,
  backward and optimizer update, parameters donated) on `platform`.

  On CPU (measured on the 2-core x86 machine; the compiled steps give
  bitwise the same numbers with and without these options):
  - XLA's default copy insertion copies every donated parameter that the
    backward pass reads as well as updates (0.6 GiB a step for upstream's
    MLP regressor, its 512 MiB first kernel included); region analysis sees
    that the reads come first and drops the copies: ~3% of that step's CPU
    time.
  - XLA's memory-optimized scheduler orders the LAQ step's ~370 small
    kernels so that the 2 cores wait less on one another: 6% less time a
    `sim_small` step (250 vs 267 ms; benchmarks/lam_training.py). The
    regressor's step, a few large GEMMs, runs as fast with either order;
    so does the classification probe's, which keeps XLA's defaults.
  """
  if platform == "cpu":
    return {"xla_cpu_copy_insertion_use_region_analysis": True,
            "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
  return None
