"""XLA compile options for an encoder's forward pass, per platform and model.

On CPU, XLA (jaxlib 0.10) hands convolutions, dots and reductions to
YNNPACK. For the convolutional encoders (the pixel tokenizers: FLUX.2,
MAGVIT2, Wan2.2) its own kernels do better on the 2-core x86 machine this
project is measured on: Eigen's convolutions run 1.3-1.9x faster, all but a
first layer on 3 channels (a 3x3 conv [9, 112, 112, 160] -> 160: 0.32 s vs
0.18 s), and Wan2.2's channel norms sum faster without YNNPACK's reductions
(4.6 vs 6.3 s a clip); see `benchmarks/pixel_tokenizers.py`. The
transformers keep XLA's defaults: a ViT-L/14 forward runs 6% slower without
YNNPACK's reductions.

Training steps keep XLA's defaults too: the LAQ step's convolution gradients
run slower on Eigen (350 vs 265 ms a `sim_small` step).
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
