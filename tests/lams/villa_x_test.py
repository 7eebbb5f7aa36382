"""Parity of lary_jax.lams.villa_x with upstream's `IgorModel.idm` (fixtures).

The fixtures come from `tests/fixtures/make_univla_villa_fixtures.py`: a
small IgorModel (42 px, patch 14, d_t 4, width 32, 2 blocks, 4 tokens of 8,
8 codes), random weights, saved with upstream's `save_pretrained` and run
through `idm(clips, return_dict=True)["vq_tokens"]` on a pair and on a
6-frame clip (longer than d_t: sliding windows).
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from lary_jax.encoders import convert
from lary_jax.errors import LaryError
from lary_jax.lams import villa_x

# Jitted: one compilation per input shape instead of op-by-op dispatch.
_forward = nnx.jit(lambda model, frames: model(villa_x.preprocess(frames)))

FIXTURES = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures",
                        "lams")


@functools.cache
def _fixture():
  weights = dict(np.load(os.path.join(FIXTURES, "villa_x_weights.npz"),
                         allow_pickle=False))
  io = dict(np.load(os.path.join(FIXTURES, "villa_x_io.npz"),
                    allow_pickle=False))
  return weights, io


def _folder(path, *, config=None):
  """What `IgorModel.save_pretrained` writes, rebuilt from the fixture."""
  weights, io = _fixture()
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "model_config.json"), "w") as f:
    f.write(config or str(io["model_config"]))
  save_file(weights, os.path.join(path, "model.safetensors"))
  return str(path)


@functools.cache
def _model():
  weights, io = _fixture()
  cfg = villa_x.config_from_json(json.loads(str(io["model_config"])))
  return convert.build(villa_x.Model, cfg,
                       villa_x.params_from_torch(weights, cfg))


@pytest.mark.parametrize("name,shape", [("pair", (2, 4, 8)),
                                        ("clip", (2, 5, 4, 8))])
def test_latent_matches_upstream(name, shape):
  _, io = _fixture()
  tokens, out = _forward(_model(), jnp.asarray(io[f"frames_{name}"]))
  latent = villa_x.select_tokens(tokens, out)
  assert latent.shape == io[f"tokens_{name}"].shape == shape
  np.testing.assert_array_equal(
      np.asarray(out["indices"]).reshape(shape[:-1]), io[f"indices_{name}"])
  pre = np.asarray(out["pre_quant"]).reshape(shape)
  assert np.abs(pre - io[f"pre_quant_{name}"]).max() < 1e-4
  assert np.abs(np.asarray(latent) - io[f"tokens_{name}"]).max() < 1e-4


def test_windows_see_earlier_frames():
  # Upstream's clip latents are not those of isolated pairs: causal temporal
  # attention lets a pair's latent read the frames before it in its window.
  _, io = _fixture()
  frames = jnp.asarray(io["frames_clip"])
  _, clip = _forward(_model(), frames)
  _, pair = _forward(_model(), frames[:, 2:4])
  diff = np.abs(np.asarray(clip["pre_quant"][:, 2])
                - np.asarray(pair["pre_quant"][:, 0])).max()
  assert diff > 1e-3


def test_loads_from_pretrained_folder(tmp_path):
  _, io = _fixture()
  cfg, params = villa_x.load_checkpoint(_folder(tmp_path / "lam"))
  assert (cfg.resolution, cfg.d_t, cfg.encoder_depth, cfg.action_latent_dim,
          cfg.num_learned_tokens, cfg.n_codes) == (42, 4, 2, 8, 4, 8)
  model = convert.build(villa_x.Model, cfg, params)
  tokens, _ = _forward(model, jnp.asarray(io["frames_pair"]))
  assert np.abs(np.asarray(tokens[:, 0]) - io["tokens_pair"]).max() < 1e-4


def test_bad_folders_are_named(tmp_path):
  with pytest.raises(LaryError, match="model_config.json"):
    villa_x.load_checkpoint(str(tmp_path))
  text = json.loads(str(_fixture()[1]["model_config"]))
  text["architecture"] = "IgorDecoder"
  path = _folder(tmp_path / "other", config=json.dumps(text))
  with pytest.raises(LaryError, match="IgorDecoder"):
    villa_x.load_checkpoint(path)
  weights, _ = _fixture()
  cfg = villa_x.config_from_json(json.loads(str(_fixture()[1]["model_config"])))
  missing = {k: v for k, v in weights.items() if k != "encoder.norm.g"}
  with pytest.raises(LaryError, match="encoder.norm.g"):
    villa_x.params_from_torch(missing, cfg)


def test_needs_two_frames():
  with pytest.raises(LaryError, match="T >= 2"):
    _model()(jnp.zeros((1, 1, 42, 42, 3)))


def test_registry_loads_pretrained_folder(tmp_path):
  # Registered as a clip ("video") encoder: a pair gives [B, n, d] as LARY's
  # image mode stores it, a clip the windowed [B, T - 1, n, d].
  from lary_jax import encoders  # pylint: disable=g-import-not-at-top
  from lary_jax import extract  # pylint: disable=g-import-not-at-top
  _, io = _fixture()
  enc = encoders.load("villa_x", _folder(tmp_path / "lam"))
  assert (enc.mode, enc.dim, enc.num_tokens) == ("video", 8, 4)
  encode = jax.jit(lambda p, x: extract.encode_rows(enc, p, x))
  for name in ("pair", "clip"):
    got = np.asarray(encode(enc.params, jnp.asarray(io[f"frames_{name}"])))
    assert np.abs(got - io[f"tokens_{name}"]).max() < 1e-4, name


@pytest.mark.slow  # traces the full-size model
def test_full_size_shapes():
  # LARY's villa-X dims: 4 latent tokens of 32; 9-frame clips give 8 pairs.
  cfg = villa_x.Config(action_latent_dim=32)
  model = nnx.eval_shape(lambda: villa_x.Model(cfg, rngs=nnx.Rngs(0)))
  for t, shape in ((2, (2, 4, 32)), (9, (2, 8, 4, 32))):
    latent = nnx.eval_shape(
        lambda m, x: villa_x.select_tokens(*m(x)), model,
        jax.ShapeDtypeStruct((2, t, 224, 224, 3), jnp.float32))
    assert latent.shape == shape
