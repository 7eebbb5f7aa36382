"""Frozen visual encoders in Flax NNX, loaded by name.

  from lary_jax import encoders
  enc = encoders.load("dinov2", "/ckpt/dinov2-large")  # HF folder or orbax
  tokens = enc(images)  # [B, 224, 224, 3] uint8 or [0, 1] -> [B, N, D]

See `registry` for the names and `convert` for checkpoint conversion.
"""

from lary_jax.encoders.registry import Encoder
from lary_jax.encoders.registry import available
from lary_jax.encoders.registry import load
from lary_jax.encoders.registry import make_encoder
from lary_jax.encoders.registry import register
