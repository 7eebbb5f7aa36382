"""Parity of lary_jax.encoders.magvit2 with upstream's Open-MAGVIT2 encoder.

The fixture holds numbers made by running upstream's module (see
tests/fixtures/make_magvit2_fixtures.py): weights, inputs, outputs.
"""

import json
import os

import numpy as np
import pytest
import torch
from flax import nnx

from lary_jax import encoders
from lary_jax.encoders import convert
from lary_jax.encoders import magvit2
from lary_jax.encoders import registry
from lary_jax.errors import LaryError

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning")

_FIXTURE = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures",
                        "pixtok", "magvit2_tiny.npz")


@pytest.fixture(scope="module")
def fixture():
  with np.load(_FIXTURE, allow_pickle=False) as f:
    data = dict(f)
  weights = {k[2:]: v for k, v in data.items() if k.startswith("w/")}
  return data, weights, json.loads(data["config"].tobytes())


def _save_ckpt(path, state):
  """A Lightning-style checkpoint: {"state_dict": ..., other entries}."""
  torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in
                             state.items()}, "epoch": 1}, path)


def test_ckpt_converts_and_matches_upstream(fixture, tmp_path):
  data, weights, dd = fixture
  # Decoder, quantiser and EMA entries ride along in real checkpoints.
  state = dict(weights, **{"decoder.conv_in.weight": np.zeros((4, 18, 3, 3),
                                                              np.float32),
                           "model_ema.decay": np.ones((), np.float32)})
  ckpt = str(tmp_path / "tok.ckpt")
  _save_ckpt(ckpt, state)
  out = registry.convert("magvit2_encoder", ckpt, str(tmp_path / "o"))
  cfg = magvit2.config_from_hf(dd)
  assert magvit2.Config.from_dict(
      json.load(open(os.path.join(out, "config.json")))["config"]) == cfg
  # Upstream's range ([0, 1]) and Open-MAGVIT2's own ([-1, 1]).
  enc = encoders.load("magvit2_encoder", out, upstream_range=1)
  got = np.asarray(enc(data["images"]))
  assert got.shape == data["tokens_unit"].shape == (2, 64, 18)
  assert np.abs(got - data["tokens_unit"]).max() < 1e-4
  enc = encoders.load("magvit2_encoder", out)
  got = np.asarray(enc(data["images"]))
  assert np.abs(got - data["tokens_signed"]).max() < 1e-4
  assert (enc.mode, enc.dim, enc.num_tokens) == ("image", 18, 56 * 56)


def test_laq_checkpoint_prefix_and_errors(fixture, tmp_path):
  data, weights, dd = fixture
  # LARY's LAQ checkpoint keeps the tokenizer under magvit2_tokenizer.
  state = {"magvit2_tokenizer." + k: v for k, v in weights.items()}
  state["vq.codebooks"] = np.zeros((8, 32), np.float32)
  cfg = magvit2.config_from_pt(state)
  assert cfg == magvit2.config_from_hf(dd)
  model = convert.build(magvit2.Model, magvit2.load_options(
      cfg, upstream_range="true"), magvit2.params_from_pt(state, cfg))
  tokens, out = nnx.jit(lambda m, x: m(magvit2.preprocess(x)))(
      model, data["images"])
  assert np.abs(np.asarray(tokens) - data["tokens_unit"]).max() < 1e-4
  assert out["grid"].shape == (2, 8, 8, 18)

  broken = dict(weights)
  del broken["encoder.down.1.downsample.weight"]
  with pytest.raises(LaryError, match="encoder.down.1.downsample.weight"):
    magvit2.params_from_pt(broken, cfg)
  with pytest.raises(LaryError, match="Open-MAGVIT2"):
    magvit2.params_from_pt({"x": np.zeros(1)}, cfg)
  with pytest.raises(LaryError, match="not a multiple of 4"):
    model(np.zeros((1, 30, 30, 3), np.float32))
  with pytest.raises(LaryError, match="upstream_range"):
    magvit2.load_options(cfg, upstream_range="maybe")
