"""The probe's self-attention on every backend, never holding all logits.

At the protocol's size (2304 tokens of encoder features, global batch 256)
the [B, H, N, N] logits of one layer are ~87 GB, so no backend may
materialise them, in the forward or in the gradient:

- GPU, bf16/fp16 compute: cuDNN's fused flash attention
  (`jax.nn.dot_product_attention(implementation="cudnn")`).
- everywhere else (CPU, TPU, fp32 on GPU): `vit_layers.blocked_attention`,
  query rows in blocks with flash attention's backward (it keeps the output
  and one log-sum-exp per row, and recomputes a block's probabilities).
  On CPU the blocks stay in cache; on TPU it is plain XLA, slower than a
  Pallas kernel but exact and bounded in memory.

`jax.nn.dot_product_attention`'s default on GPU/TPU is XLA's, which holds
the whole [B, H, N, N] softmax: that is what this module avoids.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lary_jax.nn import vit_layers

# cuDNN's fused attention takes 16-bit inputs and head dims that are a
# multiple of 8, up to 128.
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_CUDNN_MAX_HEAD_DIM = 128


def implementation(platform: str, dtype, head_dim: int) -> str:
  """"cudnn" or "blocked": what `attention` runs for these inputs."""
  if (platform == "gpu" and jnp.dtype(dtype) in map(jnp.dtype, _CUDNN_DTYPES)
      and head_dim % 8 == 0 and head_dim <= _CUDNN_MAX_HEAD_DIM):
    return "cudnn"
  return "blocked"


def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Softmax attention, [B, N, H, Dh] each -> [B, N, H, Dh] in v's dtype.

  The softmax runs in float32 whatever the inputs' dtype.
  """
  kind = implementation(jax.default_backend(), q.dtype, q.shape[-1])
  if kind == "cudnn":
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
  return vit_layers.blocked_attention(q, k, v)
