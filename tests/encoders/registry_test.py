"""Tests for lary_jax.encoders.registry: load, available, register."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from lary_jax import encoders
from lary_jax.encoders import contract
from lary_jax.encoders import registry
from lary_jax.lams import lapa
from lary_jax.errors import LaryError

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory):
  torch.manual_seed(0)
  cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, image_size=56,
                                  patch_size=14)
  path = tmp_path_factory.mktemp("hf_dinov2")
  transformers.Dinov2Model(cfg).save_pretrained(path)
  return str(path)


def _images(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_available_lists_every_encoder():
  assert encoders.available() == ["dinov2", "dinov3", "flow", "flux2", "lapa",
                                  "lapa_dinov2", "lapa_dinov3",
                                  "lapa_siglip2", "magvit2",
                                  "magvit2_encoder", "pixels", "random_vit",
                                  "siglip2", "sim_oracle", "univla",
                                  "villa_x", "vjepa2", "wan2_2"]


def test_convert_then_load_equals_load_from_hf_folder(dinov2_folder,
                                                      tmp_path):
  out = registry.convert("dinov2", dinov2_folder, str(tmp_path / "ckpt"))
  from_orbax = encoders.load("dinov2", out)
  from_hf = encoders.load("dinov2", dinov2_folder)
  images = _images((2, 224, 224, 3))
  np.testing.assert_array_equal(from_orbax(images), from_hf(images))
  assert (from_orbax.name, from_orbax.dim, from_orbax.num_tokens) == (
      "dinov2", 32, 256)
  with pytest.raises(LaryError, match="holds a 'dinov2' checkpoint"):
    encoders.load("dinov3", out)


def test_image_encoder_folds_frames_and_exposes_pure_apply(dinov2_folder):
  enc = encoders.load("dinov2", dinov2_folder)
  clips = _images((2, 3, 224, 224, 3), seed=1)
  tokens = np.asarray(enc(clips))
  assert tokens.shape == (2, 3, 256, 32)
  np.testing.assert_allclose(tokens[1, 2], enc(clips[1, 2:3])[0], atol=1e-5)
  np.testing.assert_allclose(jax.jit(enc.apply)(enc.params, clips[0]),
                             tokens[0], atol=1e-5)
  with pytest.raises(LaryError, match=r"got input of shape \(224, 224, 3\)"):
    enc(clips[0, 0])


def test_unknown_and_missing():
  with pytest.raises(LaryError, match="available: .*'dinov2'.*'vjepa2'"):
    encoders.load("dinov5")
  with pytest.raises(LaryError, match="'dinov2' needs a checkpoint"):
    encoders.load("dinov2")
  with pytest.raises(LaryError, match="/nonexistent/dir: no such file or "
                     "folder, and not a Hugging Face hub id"):
    encoders.load("dinov2", "/nonexistent/dir")


def test_missing_model_module_is_a_clear_error(monkeypatch):
  monkeypatch.setitem(registry._MODEL_MODULES, "vjepa2", (None, "video"))
  with pytest.raises(LaryError, match="lary_jax.encoders.vjepa2 is not"):
    encoders.load("vjepa2", "/any/path")


class _MeanColour(nnx.Module):
  """A user's encoder: one token per image, its mean colour times w."""

  def __init__(self, rngs):
    self.w = nnx.Param(jnp.full((3,), 2.0))

  def __call__(self, x):
    return (x.mean(axis=(1, 2)) * self.w[...])[:, None, :]


def test_register_plugs_in_a_user_encoder(monkeypatch):
  monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))

  def factory(path, *, dtype, **options):
    return encoders.make_encoder("colour", _MeanColour(nnx.Rngs(0)))

  encoders.register("colour", factory)
  assert "colour" in encoders.available()
  enc = encoders.load("colour")
  images = np.full((4, 224, 224, 3), 51, np.uint8)
  np.testing.assert_allclose(enc(images), np.full((4, 1, 3), 0.4), atol=1e-6)
  assert (enc.dim, enc.num_tokens, enc.mode) == (3, 1, "image")
  assert enc.frames_view == ""  # the squashed 224 frames
  for name in ("dinov2", "flow", "sim_oracle"):
    with pytest.raises(LaryError, match="built in"):
      encoders.register(name, factory)
  with pytest.raises(LaryError, match="frames_view='crop', expected one of"):
    encoders.make_encoder("colour", _MeanColour(nnx.Rngs(0)),
                          frames_view="crop")



def test_every_model_file_declares_the_model_module_contract():
  """Every family the catalogue loads from files provides each hook of
  contract.ModelModule (None, () or "" where it has none)."""
  modules = {m for m, _ in registry._MODEL_MODULES.values()  # pylint: disable=protected-access
             if m is not None and m is not lapa}
  assert len(modules) >= 9
  for module in modules:
    assert isinstance(module, contract.ModelModule), module.__name__
    assert isinstance(module.LOAD_OPTIONS, tuple), module.__name__
    assert module.FRAMES_VIEW in contract.FRAMES_VIEWS, module.__name__
    assert (module.load_options is None) == (not module.LOAD_OPTIONS)
    for option in module.LOAD_OPTIONS:  # each sets the config ("1": 1, on)
      cfg = module.load_options(module.Config(), **{option: "1"})
      assert isinstance(cfg, module.Config), (module.__name__, option)
    assert module.params_from_pt is not None or (
        module.config_from_hf is not None
        or module.load_checkpoint is not None), module.__name__
