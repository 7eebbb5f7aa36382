"""Tests for lary_jax.encoders.baselines (pixels, random_vit)."""

import jax
import numpy as np
import pytest

from lary_jax import encoders
from lary_jax.encoders import baselines
from lary_jax.errors import LaryError


@pytest.mark.parametrize("patch", [14, 16])
def test_pixels_are_the_image_cut_into_patches(patch):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
  enc = encoders.load("pixels", patch=patch)
  tokens = np.asarray(enc(images))
  g = 224 // patch
  assert tokens.shape == (2, g * g, patch * patch * 3)
  assert (enc.dim, enc.num_tokens) == (patch * patch * 3, g * g)
  # Token (row 2, column 5) is that patch, scaled to [0, 1], (y, x, c) order.
  want = images[1, 2 * patch:3 * patch, 5 * patch:6 * patch] / 255.0
  np.testing.assert_allclose(tokens[1, 2 * g + 5], want.reshape(-1),
                             atol=1e-7)
  # [0, 1] float input is used as is.
  np.testing.assert_allclose(enc(images / 255.0), tokens, atol=1e-7)


def test_random_vit_is_seeded_and_works_without_files():
  images = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3),
                                             dtype=np.uint8)
  enc = encoders.load("random_vit", None)  # ViT-S/16, seed 0
  assert (enc.dim, enc.num_tokens, enc.mode) == (384, 196, "image")
  a = np.asarray(enc(images))
  again = encoders.load("random_vit", None, variant="S/16", seed=0)
  for x, y in zip(jax.tree.leaves(enc.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(x, y)
  other = encoders.load("random_vit", None, seed=1)
  for x, y in zip(jax.tree.leaves(enc.params), jax.tree.leaves(other.params)):
    random = np.ptp(x) > 0  # not a ones/zeros init (LayerNorm, bias)
    assert random == (np.abs(np.asarray(x) - np.asarray(y)).max() > 0)
  # Tokens come after a fresh LayerNorm: zero mean, unit variance per token.
  np.testing.assert_allclose(a.mean(-1), 0, atol=1e-4)
  np.testing.assert_allclose(a.std(-1), 1, atol=1e-3)
  # Neighbouring images give different tokens (the weights are not zero).
  assert np.abs(a[0] - a[1]).mean() > 0.1


def test_random_vit_variants():
  cfg = baselines.decode_variant("B/14")
  assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
          cfg.patch_size, cfg.grid) == (768, 12, 12, 14, 16)
  enc = encoders.load("random_vit", variant="Ti/32")
  assert (enc.dim, enc.num_tokens) == (192, 49)
  with pytest.raises(LaryError, match="'H/16'"):
    baselines.decode_variant("H/16")


def test_baselines_take_no_checkpoint():
  with pytest.raises(LaryError, match="takes no checkpoint"):
    encoders.load("random_vit", "/some/dir")
  with pytest.raises(LaryError, match="patch=8"):
    encoders.load("pixels", patch=8)
