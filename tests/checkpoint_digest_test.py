"""A feature store's `checkpoint_digest`: the digest of the weights, the
same for the same weights in other files; stores begun with the older digest
of the files still resume."""

import json
import os

import jax.numpy as jnp
import numpy as np

from lary_jax import commands
from lary_jax import extract
from lary_jax import feature_store
from lary_jax.encoders import baselines
from lary_jax.encoders import convert
from lary_jax.encoders import dinov2
from lary_jax.encoders import registry


def _checkpoint(path, seed=0):
  """A tiny ViT, converted (orbax) into `path`."""
  cfg = baselines.decode_variant("Ti/16", image_size=32)
  params = baselines.random_params(convert.param_shapes(dinov2.Model, cfg),
                                   seed)
  convert.save(str(path), "dinov2", cfg, params)
  return str(path)


def test_the_same_weights_saved_twice_have_one_digest(tmp_path):
  a, b = _checkpoint(tmp_path / "a"), _checkpoint(tmp_path / "b")
  other = _checkpoint(tmp_path / "c", seed=1)
  digest = lambda p: extract.weights_digest(
      registry.load("dinov2", p, dtype=jnp.float32).params)
  assert digest(a) == digest(b) != digest(other)
  # Orbax's files differ between two saves of the same arrays.
  assert extract.files_digest(a) != extract.files_digest(b)


def test_a_value_a_dtype_or_a_name_changes_the_digest():
  params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
            "b": np.zeros(3, np.float32)}
  base = extract.weights_digest(params)
  assert extract.weights_digest(dict(params)) == base
  changed = dict(params, b=np.array([0, 0, 1e-7], np.float32))
  assert extract.weights_digest(changed) != base
  assert extract.weights_digest(
      dict(params, b=params["b"].astype(np.float16))) != base
  assert extract.weights_digest({"w": params["w"], "c": params["b"]}) != base


def test_a_store_begun_with_the_files_digest_keeps_it(tmp_path):
  path = _checkpoint(tmp_path / "ckpt")
  weights = extract.weights_digest(
      registry.load("dinov2", path, dtype=jnp.float32).params)
  store = tmp_path / "store"
  os.makedirs(store)
  files = lambda: extract.files_digest(path)
  assert commands._store_digest(str(store), weights, files) == weights
  run = store / feature_store.RUN
  run.write_text(json.dumps({"checkpoint_digest": extract.files_digest(path)}))
  assert commands._store_digest(str(store), weights, files) == (
      extract.files_digest(path))
  # Another checkpoint's files: the weights' digest, which the store refuses.
  run.write_text(json.dumps({"checkpoint_digest": "0" * 64}))
  assert commands._store_digest(str(store), weights, files) == weights
