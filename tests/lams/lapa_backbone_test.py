"""Feature LAQ checkpoints that carry their frozen backbone (lams/embedded.py).

Upstream's feature LAQs save their backbone inside their state dict
(`dino_tokenizer.*`, `encoder.vision_model.*`). The fixtures
(tests/fixtures/lams/lapa_{dinov2,dinov3,siglip2}.npz, make_lam_fixtures.py)
hold such a whole state dict of upstream's module, with a tiny transformers
backbone that upstream itself loaded and ran, and its latents from pixels.
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lary_jax import encoders
from lary_jax.encoders import convert
from lary_jax.encoders import registry
from lary_jax.errors import LaryError
from lary_jax.lams import embedded
from lary_jax.lams import lapa

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "lams")
BACKBONE = {"lapa_dinov2": "dinov2", "lapa_dinov3": "dinov3",
            "lapa_siglip2": "siglip2"}


def _fixture(name):
  z = np.load(os.path.join(FIXTURES, f"{name}.npz"), allow_pickle=False)
  data = {k: z[k] for k in z.files}
  weights = {k[2:]: v for k, v in data.items() if k.startswith("w.")}
  images = data["video"].transpose(0, 2, 3, 4, 1)  # [B, 2, H, W, 3] uint8
  return weights, images, data


def _save_pt(path, weights, drop_prefix=None):
  import torch  # pylint: disable=g-import-not-at-top
  sd = {k: torch.from_numpy(np.array(v)) for k, v in weights.items()
        if drop_prefix is None or not k.startswith(drop_prefix)}
  torch.save({"model": sd}, path)  # upstream trainer's wrapper (laq_dinov3)
  return str(path)


@pytest.fixture
def pairs_of(monkeypatch):
  """The registry measures a pair encoder on the fixture's frame size."""
  def set_size(images):
    monkeypatch.setitem(registry.EXAMPLE_SHAPE, "pairs", images.shape[1:])
    monkeypatch.setitem(registry.EXAMPLE_SHAPE, "image", images.shape[2:])
  return set_size


@pytest.mark.parametrize("name", sorted(BACKBONE))
def test_embedded_backbone_reproduces_upstream_from_pixels(name, tmp_path,
                                                           pairs_of):
  weights, images, data = _fixture(name)
  pt = _save_pt(tmp_path / "laq.pt", weights)
  cfg, params, found = lapa.read_pt(name, pt)
  assert found is not None
  module = registry.model_module(BACKBONE[name])
  backbone = convert.build(module.Model, *found)
  lam = convert.build(lapa.Model, cfg, params)

  @nnx.jit
  def run(backbone, lam, images, noise):
    frames = images.reshape(-1, *images.shape[2:]).astype(jnp.float32) / 255
    tokens = module.select_tokens(*backbone(module.preprocess(frames)))
    x = tokens.reshape(images.shape[0], 2, *tokens.shape[1:])
    return tokens, lam.encode(x, noise=noise)

  tokens, latent = run(backbone, lam, images, data["noise"])
  # The tokens upstream's backbone gave the LAQ, from the embedded weights,
  # and upstream's extracted latent (NSVQ with the fixture's noise).
  np.testing.assert_allclose(tokens, data["features"].reshape(tokens.shape),
                             atol=1e-4, rtol=0)
  np.testing.assert_allclose(latent, data["tokens"], atol=1e-4, rtol=0)
  # The whole registry path: `extract --model NAME --checkpoint laq.pt`.
  pairs_of(images)
  enc = encoders.load(name, pt, latent="quantized")
  np.testing.assert_allclose(enc(images), data["quantized_tokens"],
                             atol=1e-4, rtol=0)


def test_embedded_equals_backbone_option_and_option_wins(tmp_path, pairs_of):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  weights, images, _ = _fixture("lapa_dinov2")
  pairs_of(images)
  prefix = lapa.EMBEDDED_PREFIX["dinov2"]
  # The same backbone as a Hugging Face folder (read through config.json).
  hf_cfg = transformers.Dinov2Config(
      hidden_size=32, num_hidden_layers=1, num_attention_heads=1, mlp_ratio=2,
      image_size=32, patch_size=2)
  hf = transformers.Dinov2Model(hf_cfg)
  hf.load_state_dict({k: torch.from_numpy(v) for k, v in
                      embedded.strip(weights, prefix).items()})
  hf.save_pretrained(tmp_path / "same")
  torch.manual_seed(1)
  transformers.Dinov2Model(hf_cfg).save_pretrained(tmp_path / "other")
  with_bb = _save_pt(tmp_path / "with.pt", weights)
  without = _save_pt(tmp_path / "without.pt", weights, drop_prefix=prefix)
  a = encoders.load("lapa_dinov2", with_bb)(images)
  b = encoders.load("lapa_dinov2", without,
                    backbone=str(tmp_path / "same"))(images)
  np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
  # An explicit backbone= wins over the embedded one.
  c = encoders.load("lapa_dinov2", with_bb,
                    backbone=str(tmp_path / "other"))(images)
  d = encoders.load("lapa_dinov2", without,
                    backbone=str(tmp_path / "other"))(images)
  np.testing.assert_array_equal(c, d)
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-2


def test_convert_keeps_the_backbone_beside_the_lam(tmp_path, pairs_of):
  weights, images, data = _fixture("lapa_siglip2")
  pairs_of(images)
  prefix = lapa.EMBEDDED_PREFIX["siglip2"]
  pt = _save_pt(tmp_path / "siglip2.pt", weights)
  out = registry.convert("lapa_siglip2", pt, str(tmp_path / "conv"))
  sub = os.path.join(out, embedded.SUBDIR)
  assert convert.load_converted(out)[0] == "lapa_siglip2"
  assert convert.load_converted(sub)[0] == "siglip2"
  # The converted dir extracts alone, as the .pt does.
  np.testing.assert_allclose(
      encoders.load("lapa_siglip2", out, latent="quantized")(images),
      data["quantized_tokens"], atol=1e-4, rtol=0)
  # backbone/ is an ordinary encoder checkpoint: upstream's tokens.
  tokens = encoders.load("siglip2", sub)(images.reshape(-1, 28, 28, 3))
  np.testing.assert_allclose(tokens, data["features"].reshape(tokens.shape),
                             atol=1e-4, rtol=0)
  # Re-converting a checkpoint without a backbone drops the stale one.
  bare = _save_pt(tmp_path / "bare.pt", weights, drop_prefix=prefix)
  registry.convert("lapa_siglip2", bare, out)
  assert not os.path.exists(sub)
  with pytest.raises(LaryError, match=r"no backbone/ sub-directory.*"
                     r"backbone=PATH.*SIGLIP2_PATH"):
    encoders.load("lapa_siglip2", out)


def test_errors_name_the_prefix_and_upstream_backbone(tmp_path):
  weights, _, _ = _fixture("lapa_dinov3")
  prefix = lapa.EMBEDDED_PREFIX["dinov3"]
  bare = _save_pt(tmp_path / "bare.pt", weights, drop_prefix=prefix)
  with pytest.raises(LaryError, match=r"no 'dino_tokenizer\.\*' keys.*"
                     r"backbone=PATH.*DINO_V3_PATH"):
    encoders.load("lapa_dinov3", bare)
  broken = dict(weights)
  del broken[prefix + "norm.weight"]
  with pytest.raises(LaryError, match=r"dinov3 backbone embedded under "
                     r"'dino_tokenizer\.'.*'norm\.weight'"):
    lapa.read_pt("lapa_dinov3", _save_pt(tmp_path / "b.pt", broken))
  extra = dict(weights, **{prefix + "extra.weight": np.ones(3, np.float32)})
  with pytest.raises(LaryError, match=r"'extra\.weight'.*not used"):
    registry.convert("lapa_dinov3", _save_pt(tmp_path / "e.pt", extra),
                    str(tmp_path / "conv"))
  not_vit = {prefix + "foo": np.ones(3, np.float32)}
  with pytest.raises(LaryError, match=r"'dino_tokenizer\.'.*no key "
                     r"'embeddings\.patch_embeddings\.weight'"):
    embedded.backbone_from_weights(not_vit, prefix, "dinov3")
  assert embedded.backbone_from_weights(weights, "nothing.", "dinov3") is None


@pytest.mark.parametrize("swiglu", [False, True])
def test_dinov2_in_memory_names_of_transformers_4_and_5(tmp_path, swiglu):
  """Both key spellings convert as the Hub folder does, heads of 64."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  from lary_jax.encoders import dinov2  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  hf = transformers.Dinov2Model(transformers.Dinov2Config(
      hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
      mlp_ratio=2, image_size=28, patch_size=14, use_swiglu_ffn=swiglu))
  hf.save_pretrained(tmp_path)
  want_cfg, want = convert.params_from_source(dinov2, str(tmp_path))
  v5 = {k: v.numpy() for k, v in hf.state_dict().items()}  # q_proj, ...
  v4 = load_file(str(tmp_path / "model.safetensors"))  # attention.attention
  assert set(v5) != set(v4)
  for sd in (v5, v4):
    cfg, params = embedded.backbone_from_weights(
        {f"dino_tokenizer.{k}": v for k, v in sd.items()}, "dino_tokenizer.",
        "dinov2")
    assert (cfg.num_attention_heads, cfg.mlp_hidden) == (
        want_cfg.num_attention_heads, want_cfg.mlp_hidden)
    assert set(params) == set(want)
    for k in want:
      np.testing.assert_array_equal(params[k], want[k], err_msg=k)
