"""Reference encoders that need no checkpoint: `pixels` and `random_vit`.

`pixels` returns the image itself cut into patches ([0, 1] values, one token
per patch, D = patch * patch * 3 in (row, column, channel) order).
`random_vit` is a ViT with seeded random weights (drawn with numpy; DINOv2's
architecture: CLS, learned positions, pre-norm blocks, final LayerNorm; patch
tokens out), a floor for what an untrained network of the same shape gives.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lary_jax.encoders import contract
from lary_jax.encoders import convert
from lary_jax.encoders import dinov2
from lary_jax.errors import LaryError
from lary_jax.nn import vit_layers

# big_vision's widths, depths and heads per size letter.
_SIZES = {
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
}


def decode_variant(variant: str, image_size: int = 224) -> dinov2.Config:
  """"S/16" -> the ViT-S/16 Config (DINOv2 layout, positions for 224)."""
  m = re.fullmatch(r"(Ti|S|B|L)/(\d+)", variant)
  if not m:
    raise LaryError(f"random_vit variant {variant!r}: expected SIZE/PATCH "
                    f"with SIZE in {list(_SIZES)}, e.g. 'S/16'")
  width, depth, heads = _SIZES[m[1]]
  patch = int(m[2])
  return dinov2.Config(hidden_size=width, num_hidden_layers=depth,
                       num_attention_heads=heads, patch_size=patch,
                       image_size=image_size // patch * patch)


class Pixels(nnx.Module):
  """Patchified pixels: [B, H, W, C] -> [B, N, patch * patch * C]."""

  def __init__(self, patch: int):
    self.patch = patch

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    patches = vit_layers.patchify(x, (self.patch, self.patch))
    tokens = patches.reshape(x.shape[0], -1, patches.shape[-1])
    return tokens, {"patch_tokens": tokens}


def random_params(shapes: dict[str, tuple[int, ...]], seed: int
                  ) -> dict[str, np.ndarray]:
  """ViT init drawn with numpy (fast, and the same on every backend).

  LayerNorm scales and LayerScale are ones, biases zeros, everything else
  truncated normal (std 0.02, cut at 2 std), parameters in sorted order.

  Args:
    shapes: dotted parameter path -> shape (`convert.param_shapes`).
    seed: numpy seed.

  Returns:
    Dotted path -> float32 array.
  """
  rng = np.random.default_rng(seed)
  out = {}
  for path in sorted(shapes):
    leaf, shape = path.rsplit(".", 1)[-1], shapes[path]
    if leaf in ("scale", "lambda1"):
      out[path] = np.ones(shape, np.float32)
    elif leaf == "bias":
      out[path] = np.zeros(shape, np.float32)
    else:
      x = rng.standard_normal(shape)
      bad = np.abs(x) > 2
      while bad.any():  # redraw the tails: a truncated normal
        x[bad] = rng.standard_normal(bad.sum())
        bad = np.abs(x) > 2
      out[path] = (x * vit_layers.INIT_STD).astype(np.float32)
  return out


def _no_path(name: str, path: str | None) -> None:
  if path is not None:
    raise LaryError(f"encoder {name!r} takes no checkpoint (got {path!r})")


def pixels_encoder(path: str | None = None, *, dtype: Any = jnp.float32,
                   patch: int = 14):
  """The `pixels` baseline: [0, 1] values, patches of `patch` pixels."""
  _no_path("pixels", path)
  if patch not in (14, 16):
    raise LaryError(f"pixels: patch={patch}, expected 14 or 16")
  del dtype  # pixels are returned as float32 whatever the compute dtype
  return contract.make_encoder("pixels", Pixels(patch))


def random_vit_encoder(path: str | None = None, *,
                       dtype: Any = jnp.float32, variant: str = "S/16",
                       seed: int = 0):
  """The `random_vit` baseline: a ViT of `variant` initialised from `seed`."""
  _no_path("random_vit", path)
  cfg = decode_variant(variant)
  params = random_params(convert.param_shapes(dinov2.Model, cfg), seed)
  model = convert.build(dinov2.Model, cfg, params, dtype=dtype)
  return contract.make_encoder("random_vit", model,
                               preprocess=dinov2.preprocess,
                               select_tokens=dinov2.select_tokens)
