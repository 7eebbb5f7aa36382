"""LARY's `magvit2` row: the LAPA LAQ on Open-MAGVIT2 latents, against upstream.

The fixture (tests/fixtures/lams/magvit2_laq.npz, from
make_magvit2_laq_fixtures.py) holds a narrow upstream
`LatentActionQuantizationMagvit2` at LARY's geometry (224-pixel frames, a
14 x 14 grid of 18-wide latents, code_seq_len 16): its whole state dict (the
tokenizer embedded under `magvit2_tokenizer.`), the input video, NSVQ's
noise and what upstream extracts.
"""

import os

import numpy as np
import pytest
import torch
from flax import nnx

from lary_jax import encoders
from lary_jax import extract
from lary_jax.encoders import convert
from lary_jax.encoders import magvit2
from lary_jax.encoders import registry
from lary_jax.errors import LaryError
from lary_jax.lams import embedded
from lary_jax.lams import lapa

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning")

_FIXTURE = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures",
                        "lams", "magvit2_laq.npz")
_TOKENIZER = "magvit2_tokenizer."
# What a real embedded Open-MAGVIT2 VQModel also carries; never read.
_DECOYS = {_TOKENIZER + "decoder.conv_in.weight": np.ones((4, 18, 3, 3)),
           _TOKENIZER + "quantize.codebook": np.ones((4, 18)),
           _TOKENIZER + "model_ema.decay": np.ones(())}


@pytest.fixture(scope="module")
def fixture():
  with np.load(_FIXTURE, allow_pickle=False) as z:
    data = dict(z)
  weights = {k[2:]: v for k, v in data.items() if k.startswith("w.")}
  fields = {k[4:]: int(v) for k, v in data.items() if k.startswith("cfg.")}
  cfg = lapa.Config(**fields, features="magvit2")
  # upstream's [B, 3, 2, H, W] -> pairs [B, 2, H, W, 3], uint8
  pairs = data["video"].transpose(0, 2, 3, 4, 1)
  return cfg, weights, pairs, data


def _save_pt(path, weights):
  """Upstream's magvit2.pt: the LAQ's bare state dict (`dynamics.load`)."""
  torch.save({k: torch.from_numpy(np.asarray(v, np.float32))
              for k, v in weights.items()}, path)
  return str(path)


def test_latent_from_pixels_matches_upstream(fixture):
  cfg, weights, pairs, data = fixture
  assert lapa.config_from_pt(weights, lapa.Config.magvit2()) == cfg
  lam = convert.build(lapa.Model, cfg, lapa.params_from_torch(weights, cfg))
  mag_cfg, mag_params = embedded.backbone_from_weights(
      weights, _TOKENIZER, "magvit2_encoder")
  # Upstream feeds the tokenizer [0, 1] frames.
  mag = convert.build(magvit2.Model, magvit2.load_options(
      mag_cfg, upstream_range=True), mag_params)
  pair_encoder = lapa.PairEncoder(lam, mag, backbone_module=magvit2)

  @nnx.jit
  def run(model, images, noise):
    b = images.shape[0]
    frames = images.reshape(b * 2, *images.shape[2:])
    latents, _ = model.backbone(model.backbone_preprocess(frames))
    latents = latents.reshape(b, 2, *latents.shape[1:])
    return (latents, model.lam.encode(latents, noise=noise),
            model.lam.indices(latents),
            model.lam.encode(latents, mode="quantized"))

  latents, tokens, indices, quantized = run(pair_encoder, pairs,
                                            data["noise"])
  assert latents.shape == data["latents"].shape == (2, 2, 196, 18)
  np.testing.assert_allclose(latents, data["latents"], atol=1e-4, rtol=0)
  # The latent LARY extracts: NSVQ's training output, [B, 16, 18].
  assert tokens.shape == data["tokens"].shape == (2, 16, 18)
  np.testing.assert_allclose(tokens, data["tokens"], atol=1e-4, rtol=0)
  np.testing.assert_array_equal(indices, data["indices"])
  np.testing.assert_allclose(quantized, data["quantized_tokens"], atol=1e-4,
                             rtol=0)


def test_extract_reads_the_embedded_tokenizer_pt_and_converted(fixture,
                                                                tmp_path):
  _, weights, pairs, data = fixture
  pt = _save_pt(tmp_path / "magvit2.pt", dict(weights, **_DECOYS))
  enc = encoders.load("magvit2", pt, latent="quantized")
  assert (enc.mode, enc.dim, enc.num_tokens) == ("pairs", 18, 16)
  np.testing.assert_allclose(enc(pairs), data["quantized_tokens"],
                             atol=1e-4, rtol=0)
  # What extraction stores: a pair's tokens, a clip's 8 consecutive pairs.
  assert extract.token_shape(enc, "image") == (16, 18)
  assert extract.token_shape(enc, "video") == (8, 16, 18)
  # `convert` keeps the tokenizer beside the LAQ; the directory loads alone.
  out = registry.convert("magvit2", pt, str(tmp_path / "conv"))
  assert embedded.converted_path(out) is not None
  assert encoders.load("magvit2_encoder",
                       embedded.converted_path(out)).dim == 18
  a = np.asarray(encoders.load("magvit2", pt)(pairs))  # nsvq, own noise
  b = np.asarray(encoders.load("magvit2", out)(pairs))
  np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
  assert not np.allclose(a, data["quantized_tokens"], atol=1e-3)


def test_backbone_option_when_the_checkpoint_has_no_tokenizer(fixture,
                                                               tmp_path):
  _, weights, pairs, data = fixture
  laq = {k: v for k, v in weights.items() if not k.startswith(_TOKENIZER)}
  pt = _save_pt(tmp_path / "laq_only.pt", laq)
  with pytest.raises(LaryError, match=r"magvit2_tokenizer\.\*.*backbone=PATH"
                     r".*MAGVIT2_TOKENIZER_PATH"):
    encoders.load("magvit2", pt)
  # Open-MAGVIT2's own Lightning checkpoint of the tokenizer; its load
  # default ([-1, 1] frames) is overridden: the LAQ was trained on [0, 1].
  ckpt = tmp_path / "tokenizer.ckpt"
  torch.save({"state_dict": {k[len(_TOKENIZER):]: torch.from_numpy(v)
                             for k, v in weights.items()
                             if k.startswith(_TOKENIZER)}}, ckpt)
  enc = encoders.load("magvit2", pt, backbone=str(ckpt), latent="quantized")
  np.testing.assert_allclose(enc(pairs), data["quantized_tokens"],
                             atol=1e-4, rtol=0)


def test_converter_errors_and_skips(fixture):
  cfg, weights, *_ = fixture
  broken = dict(weights)
  del broken["vq.cnn_encoder.2.weight"]
  with pytest.raises(LaryError, match=r"vq\.cnn_encoder\.2\.weight"):
    lapa.params_from_torch(broken, cfg)
  with pytest.raises(LaryError, match="vq.extra"):
    lapa.params_from_torch(dict(weights, **{"vq.extra": np.zeros(2)}), cfg)
  # The pixel head is skipped only for this variant.
  other = lapa.Config.dinov3(**{f: getattr(cfg, f) for f in (
      "dim", "quant_dim", "dim_head", "heads", "spatial_depth",
      "temporal_depth")})
  with pytest.raises(LaryError, match="to_pixels_first_frame"):
    lapa.params_from_torch(weights, other)
  # A tokenizer key missing from the checkpoint is named.
  torn = dict(weights)
  del torn[_TOKENIZER + "encoder.conv_out.bias"]
  with pytest.raises(LaryError, match=r"magvit2_tokenizer\..*"
                     r"encoder\.conv_out\.bias"):
    embedded.backbone_from_weights(torn, _TOKENIZER, "magvit2_encoder")
  lam = convert.build(lapa.Model, cfg, lapa.params_from_torch(weights, cfg))
  with pytest.raises(LaryError, match="MAGVIT2 LAQ trains"):
    lam.loss(np.zeros((1, 2, 196, 18), np.float32), noise=np.zeros((16, 8)))
