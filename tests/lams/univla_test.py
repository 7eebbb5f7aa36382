"""Parity of lary_jax.lams.univla with upstream's UniVLA LAM (fixtures).

The fixtures come from `tests/fixtures/make_univla_villa_fixtures.py`: a
small `ControllableDINOLatentActionModel` (model_dim 32, latent 16, 2 blocks)
over a small hub DINOv2 with 4 registers (width 32, 2 blocks, position table
for 70 px), random weights, run through `vq_encode` as LARY does.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
import torch

from lary_jax.encoders import convert
from lary_jax.encoders import registry
from lary_jax.errors import LaryError
from lary_jax.lams import univla

# Jitted: one compilation per input shape instead of op-by-op dispatch.
_forward = nnx.jit(lambda model, frames: model(univla.preprocess(frames)))

FIXTURES = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures",
                        "lams")


@functools.cache
def _fixture():
  weights = dict(np.load(os.path.join(FIXTURES, "univla_weights.npz"),
                         allow_pickle=False))
  io = dict(np.load(os.path.join(FIXTURES, "univla_io.npz"),
                    allow_pickle=False))
  return weights, io


def _heads():
  cfg = json.loads(str(_fixture()[1]["config"]))
  return dict(num_heads=cfg["lam"]["num_heads"],
              dino_heads=cfg["dino"]["num_heads"])


def _write_ckpt(path, weights):
  """A Lightning-style .ckpt: `lam.` keys plus pickled hyper-parameters."""
  state = {f"lam.{k}": torch.from_numpy(v) for k, v in weights.items()}
  torch.save({"state_dict": state, "epoch": 3,
              "hyper_parameters": {"optimizer": functools.partial(
                  torch.optim.AdamW, lr=1e-4), "stage": "stage-2"}}, path)
  return str(path)


@functools.cache
def _model():
  weights, _ = _fixture()
  cfg = univla.config_from_pt(weights, **_heads())
  return convert.build(univla.Model, cfg,
                       univla.params_from_torch(weights, cfg))


@pytest.mark.parametrize("size", [42, 70])  # resized / native position table
def test_latent_matches_upstream(size):
  _, io = _fixture()
  latent, out = _forward(_model(), jnp.asarray(io[f"frames_{size}"]))
  assert latent.shape == io[f"tokens_{size}"].shape == (2, 4, 16)
  np.testing.assert_array_equal(np.asarray(out["indices"]),
                                io[f"indices_{size}"])
  for got, want in ((latent, "tokens"), (out["pre_quant"], "pre_quant"),
                    (out["dino"], "dino")):
    err = np.abs(np.asarray(got) - io[f"{want}_{size}"]).max()
    assert err < 1e-4, (want, err)


def test_ckpt_loads_and_infers_config(tmp_path):
  weights, io = _fixture()
  path = _write_ckpt(tmp_path / "lam-stage-2.ckpt", weights)
  cfg, params = univla.load_checkpoint(path, **_heads())
  assert (cfg.model_dim, cfg.latent_dim, cfg.num_latents, cfg.enc_blocks,
          cfg.dino.hidden_size, cfg.dino.num_hidden_layers,
          cfg.dino.image_size, cfg.dino_registers) == (32, 16, 8, 2, 32, 2,
                                                       70, 4)
  model = convert.build(univla.Model, cfg, params)
  latent, _ = _forward(model, jnp.asarray(io["frames_42"]))
  assert np.abs(np.asarray(latent) - io["tokens_42"]).max() < 1e-4


def test_converter_names_bad_keys():
  weights, _ = _fixture()
  cfg = univla.config_from_pt(weights, **_heads())
  missing = {k: v for k, v in weights.items() if k != "to_codebook.bias"}
  with pytest.raises(LaryError, match="to_codebook.bias"):
    univla.params_from_torch(missing, cfg)
  extra = {**weights, "encoder.out.weight": np.zeros((16, 32), np.float32)}
  with pytest.raises(LaryError, match="encoder.out.weight"):
    univla.params_from_torch(extra, cfg)
  with pytest.raises(LaryError, match="no key 'to_codebook.weight'"):
    univla.config_from_pt({})
  # Head counts are not in the weights: a width they do not divide is named.
  with pytest.raises(LaryError, match="load option num_heads"):
    univla.Model(univla.config_from_pt(weights), rngs=nnx.Rngs(0))


def test_pairs_only():
  with pytest.raises(LaryError, match="frame pairs"):
    _model()(jnp.zeros((1, 3, 42, 42, 3)))


@pytest.mark.parametrize("n_in,n_out", [(37, 16), (5, 3), (4, 7), (6, 6)])
def test_antialiased_bicubic_matches_torch(n_in, n_out):
  # The hub model's position resize: F.interpolate(bicubic, antialias=True).
  x = np.random.default_rng(0).normal(size=(2, n_in, n_in)).astype(np.float32)
  want = torch.nn.functional.interpolate(
      torch.from_numpy(x)[None], size=(n_out, n_out), mode="bicubic",
      antialias=True, align_corners=False)[0].numpy()
  m = univla.aa_bicubic_matrix(n_in, n_out)
  got = np.einsum("hy,cyx,wx->chw", m, x, m)
  assert np.abs(got - want).max() < 1e-5


def test_registry_loads_ckpt_and_converted_dir(tmp_path):
  from lary_jax import encoders  # pylint: disable=g-import-not-at-top
  from lary_jax import extract  # pylint: disable=g-import-not-at-top
  weights, io = _fixture()
  ckpt = _write_ckpt(tmp_path / "lam-stage-2.ckpt", weights)
  enc = encoders.load("univla", ckpt, **_heads())
  assert (enc.mode, enc.dim, enc.num_tokens) == ("pairs", 16, 4)
  assert np.abs(np.asarray(enc(io["frames_42"])) - io["tokens_42"]).max() < 1e-4
  # `convert` stores the config; head counts are load options.
  out = registry.convert("univla", ckpt, str(tmp_path / "converted"))
  enc = encoders.load("univla", out, **_heads())
  # A clip is encoded pair by pair: frames (0, 1) then (1, 0).
  pair = io["frames_42"][:1]
  clip = np.concatenate([pair, pair[:, :1]], axis=1)
  encode = jax.jit(lambda p, x: extract.encode_rows(enc, p, x))
  got = np.asarray(encode(enc.params, jnp.asarray(clip)))
  assert got.shape == (1, 2, 4, 16)
  assert np.abs(got[0, 0] - io["tokens_42"][0]).max() < 1e-4


@pytest.mark.slow  # traces the full-size model
def test_full_size_shapes():
  # LARY's UniVLA LAM on 224 px pairs: 256 DINOv2-B tokens a frame, 4 x 128.
  model = nnx.eval_shape(lambda: univla.Model(univla.Config.univla(),
                                              rngs=nnx.Rngs(0)))
  latent, out = nnx.eval_shape(lambda m, x: m(x), model,
                               jax.ShapeDtypeStruct((2, 2, 224, 224, 3),
                                                    jnp.float32))
  assert latent.shape == (2, 4, 128) and out["dino"].shape == (2, 2, 256, 768)


def test_config_round_trips_and_reads_the_flat_fields_of_old_checkpoints(
    tmp_path):
  weights, io = _fixture()
  cfg = univla.config_from_pt(weights, **_heads())
  stored = json.loads(json.dumps(cfg.to_dict()))
  assert stored["dino"]["hidden_size"] == 32
  assert univla.Config.from_dict(stored) == cfg
  # A checkpoint converted before `dino` was one field stored it flat.
  out = registry.convert("univla", _write_ckpt(tmp_path / "lam.ckpt", weights),
                         str(tmp_path / "converted"))
  with open(os.path.join(out, "config.json")) as f:
    meta = json.load(f)
  converted = univla.Config.from_dict(meta["config"])
  dino = meta["config"].pop("dino")
  meta["config"].update(
      dino_dim=dino["hidden_size"], dino_depth=dino["num_hidden_layers"],
      dino_heads=dino["num_attention_heads"], dino_mlp_ratio=dino["mlp_ratio"],
      dino_patch=dino["patch_size"], dino_image_size=dino["image_size"])
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(meta, f)
  assert univla.Config.from_dict(meta["config"]) == converted
  enc = registry.load("univla", out, **_heads())
  assert np.abs(np.asarray(enc(io["frames_42"])) - io["tokens_42"]).max() < 1e-4
  with pytest.raises(LaryError, match="both `dino` and the flat"):
    univla.Config.from_dict({**meta["config"], "dino": dino})
