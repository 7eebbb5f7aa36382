"""sim_oracle: the token of a known state, the LayerNorm-proof layout, and
extraction from a prepared dataset's recorded states."""

import numpy as np
import pytest

from lary_jax import extract
from lary_jax import feature_store as fs
from lary_jax.encoders import registry
from lary_jax.encoders import sim_oracle
from lary_jax.errors import LaryError
from tests.builders import fake_data_dir
from tfds_builders import metadata
from tfds_builders import prepare


def _state(xyz, rpy, width, grip):
  out = np.zeros(sim_oracle.STATE_DIM, np.float32)
  out[:3], out[3:6], out[6], out[14] = xyz, rpy, width, grip
  out[7:14] = np.arange(7)  # joints: ignored
  return out


def test_token_of_a_known_state():
  enc = registry.load("sim_oracle")
  assert (enc.mode, enc.inputs, enc.dim, enc.num_tokens) == ("image",
                                                             "states", 13, 1)
  state = _state((0.485 + 0.185, 0.0 - 0.36, 0.235), (0.0, 0.0, np.pi / 2),
                 0.04, -1.0)
  token = np.asarray(enc(state[None]))[0, 0]
  np.testing.assert_allclose(token, [
      1, -1, 0,  # position: the workspace's +x and -y edges, mid height
      0, 0, 1,  # sin of roll, pitch, yaw
      1, 1, 0,  # cos
      0, -1,  # width half open, gripper closed
      1, -1], atol=1e-6)  # the constants
  # Clips fold their frames: [B, T, 15] -> [B, T, 1, 13].
  clip = np.stack([state] * 9)[None]
  assert enc(clip).shape == (1, 9, 1, 13)


def test_token_survives_a_layer_norm():
  """The two constants make the token recoverable after normalisation over
  its features (the regression MLP's first op)."""
  rng = np.random.default_rng(0)
  enc = registry.load("sim_oracle")
  states = np.stack([_state(rng.uniform(0.3, 0.6, 3), rng.uniform(-1, 1, 3),
                            rng.uniform(0, 0.08), rng.choice([-1, 1]))
                     for _ in range(4)])
  tokens = np.asarray(enc(states))[:, 0].astype(np.float64)
  normed = (tokens - tokens.mean(1, keepdims=True)) / tokens.std(
      1, keepdims=True)
  # Undo with the constants alone: (t - c-) / (c+ - c-) * 2 - 1.
  plus, minus = normed[:, -2:-1], normed[:, -1:]
  np.testing.assert_allclose((normed - minus) / (plus - minus) * 2 - 1,
                             tokens, atol=1e-9)


def test_no_checkpoint_and_wrong_width_are_refused():
  with pytest.raises(LaryError, match="takes no checkpoint"):
    registry.load("sim_oracle", "some/path")
  enc = registry.load("sim_oracle")
  with pytest.raises(LaryError, match="15-d LARY-Sim robot states"):
    enc(np.zeros((2, 7), np.float32))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("oracle")
  data_dir, tfds_dir = str(root / "data"), str(root / "tfds")
  fake_data_dir.make_classification(data_dir, "sim_classification",
                                    with_indices=False)
  fake_data_dir.make_regression(data_dir, "calvin")
  fake_data_dir.make_classification(data_dir, "human_1st")
  options = prepare.PrepareOptions(num_workers=0)
  return root, {name: prepare.prepare(metadata.DATASETS[name], data_dir,
                                      tfds_dir, options=options)
                for name in ("sim_classification", "calvin", "human_1st")}


@pytest.mark.parametrize("name, mode, keys", [
    ("sim_classification", "video", ("states",)),
    ("calvin", "image", ("src_state", "tgt_state"))])
def test_extraction_reads_the_recorded_states(prepared, name, mode, keys):
  root, builders = prepared
  enc = registry.load("sim_oracle")
  source = builders[name].as_data_source()["train"]
  store = root / f"store_{name}"
  extract.extract_split(enc, source, mode=mode, store_dir=str(store),
                        fields={"model": "sim_oracle"},
                        options=extract.Options(global_batch=8, micro_batch=2,
                                                dtype="float32"))
  features = fs.FeatureSource(str(store)).read_all()
  states = np.stack([np.stack([source[i][k] for k in keys]) if len(keys) > 1
                     else source[i][keys[0]] for i in range(len(source))])
  assert features.shape == (len(source), states.shape[1], 1, 13)
  np.testing.assert_allclose(features, np.asarray(enc(states)), atol=1e-6)


def test_a_dataset_without_states_is_one_line(prepared):
  root, builders = prepared
  source = builders["human_1st"].as_data_source()["train"]
  with pytest.raises(LaryError, match="has no states: this model reads the "
                     "robot states a simulator recorded"):
    extract.extract_split(registry.load("sim_oracle"), source, mode="video",
                          store_dir=str(root / "none"),
                          fields={"model": "sim_oracle",
                                  "dataset": "human_1st"},
                          options=extract.Options(global_batch=8,
                                                  micro_batch=2))
