"""Parity of lary_jax.lams.lapa with upstream's LAQ modules (fixtures).

The fixtures (tests/fixtures/lams/*.npz, from make_lam_fixtures.py) hold a
small upstream LAQ's weights, inputs, NSVQ noise and outputs: the latent
LARY extracts, the nearest-code latent, the reconstruction, the training
loss and a few gradients.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lary_jax.encoders import convert
from lary_jax.encoders import registry
from lary_jax.errors import LaryError
from lary_jax.lams import lapa
from lary_jax.lams import nsvq

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "lams")
NAMES = ("lapa", "lapa_dinov2", "lapa_dinov3", "lapa_siglip2")
# torch parameter -> (NNX path, transpose?) for the saved gradients.
GRADS = {
    "vq.codebooks": ("vq.codebooks", False),
    "vq.project_in.weight": ("vq.project_in.kernel", True),
    "enc_spatial_transformer.layers.0.1.to_q.weight":
        ("enc_spatial_transformer.layers.0.self_attn.to_q.kernel", True),
    "enc_temporal_transformer.layers.1.1.to_out.weight":
        ("enc_temporal_transformer.layers.1.self_attn.to_out.kernel", True),
    "dec_spatial_transformer.layers.0.2.null_kv":
        ("dec_spatial_transformer.layers.0.cross_attn.null_kv", False),
    "spatial_rel_pos_bias.net.0.0.weight":
        ("spatial_rel_pos_bias.net.0.kernel", True),
}


def _fixture(name):
  z = np.load(os.path.join(FIXTURES, f"{name}.npz"), allow_pickle=False)
  data = {k: z[k] for k in z.files}
  weights = {k[2:]: v for k, v in data.items() if k.startswith("w.")}
  fields = {k[4:]: int(v) for k, v in data.items() if k.startswith("cfg.")}
  features = {"lapa": "", "lapa_dinov2": "dinov2", "lapa_dinov3": "dinov3",
              "lapa_siglip2": "siglip2"}[name]
  cfg = lapa.Config(**fields, features=features)
  if features:
    x = data["features"].astype(np.float32)  # [B, 2, g, g, D]
    x = x.reshape(x.shape[0], 2, -1, x.shape[-1])
    recon = data["recon"].transpose(0, 2, 3, 1)  # [B, g, g, D]
  else:
    x = data["video"].astype(np.float32).transpose(0, 2, 3, 4, 1) / 255
    recon = data["recon"].transpose(0, 2, 3, 1)  # [B, H, W, 3]
  return cfg, weights, x, recon, data


def _model(cfg, weights):
  return convert.build(lapa.Model, cfg, lapa.params_from_torch(weights, cfg))


@pytest.mark.parametrize("name", NAMES)
def test_extracted_latent_matches_upstream(name):
  cfg, weights, x, _, data = _fixture(name)
  model = _model(cfg, weights)
  encode = nnx.jit(lambda m, x, noise, mode: m.encode(x, noise=noise,
                                                      mode=mode),
                   static_argnums=3)
  tokens = encode(model, x, data["noise"], "nsvq")
  assert tokens.shape == data["tokens"].shape == (
      x.shape[0], cfg.code_seq_len, cfg.dim)
  np.testing.assert_allclose(tokens, data["tokens"], atol=1e-4, rtol=0)
  np.testing.assert_array_equal(nnx.jit(lambda m, x: m.indices(x))(model, x),
                                data["indices"])
  quantized = encode(model, x, None, "quantized")
  np.testing.assert_allclose(quantized, data["quantized_tokens"], atol=1e-4,
                             rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_training_loss_recon_and_grads_match_upstream(name):
  cfg, weights, x, recon, data = _fixture(name)
  model = _model(cfg, weights)
  graphdef, params = nnx.split(model)

  def loss_fn(p):
    loss, metrics = nnx.merge(graphdef, p).loss(x, noise=data["noise"])
    return loss, metrics

  (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      params)
  np.testing.assert_allclose(loss, data["recon_loss"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["recon"], recon, atol=1e-4, rtol=0)
  np.testing.assert_array_equal(metrics["indices"], data["indices"])
  assert int(metrics["unique_codes"]) == int(data["unique_codes"])
  flat = {".".join(map(str, p)): np.asarray(v[...])
          for p, v in nnx.to_flat_state(grads)}
  for torch_key, (path, transpose) in GRADS.items():
    want = data[f"grad.{torch_key}"]
    got = flat[path].T if transpose else flat[path]
    scale = max(np.abs(want).max(), 1e-3)
    np.testing.assert_allclose(got / scale, want / scale, atol=1e-4, rtol=0,
                               err_msg=torch_key)


def test_config_from_pt_reads_sizes():
  cfg, weights, *_ = _fixture("lapa")
  got = lapa.config_from_pt(weights, lapa.Config.lapa(image_size=28))
  assert got == cfg
  cfg2, weights2, *_ = _fixture("lapa_dinov3")
  preset = lapa.Config.dinov3(image_size=28, patch_size=2)
  assert lapa.config_from_pt(weights2, preset) == cfg2
  with pytest.raises(LaryError, match="pixel LAQ, expected dinov2"):
    lapa.config_from_pt(weights, lapa.Config.dinov2())


def test_converter_names_missing_and_unused_keys():
  cfg, weights, *_ = _fixture("lapa")
  broken = dict(weights)
  del broken["vq.project_out.bias"]
  with pytest.raises(LaryError, match="vq.project_out.bias"):
    lapa.params_from_torch(broken, cfg)
  extra = dict(weights, **{"vq.extra": np.zeros(3, np.float32)})
  with pytest.raises(LaryError, match="vq.extra"):
    lapa.params_from_torch(extra, cfg)
  bad_beta = dict(weights)
  bad_beta["enc_spatial_transformer.norm_out.beta"] = np.ones(
      cfg.dim, np.float32)
  with pytest.raises(LaryError, match="beta"):
    lapa.params_from_torch(bad_beta, cfg)
  # A feature variant's embedded backbone is skipped, not an error.
  cfg2, weights2, *_ = _fixture("lapa_dinov2")
  lapa.params_from_torch(
      dict(weights2, **{"dino_tokenizer.layernorm.weight": np.ones(4)}), cfg2)


def test_replace_unused_codes_copies_live_codes():
  cb = jnp.arange(8 * 3, dtype=jnp.float32).reshape(8, 3)
  # batch size 10: codes used in < 1 step of 10 are dead (threshold 0.1).
  usage = jnp.array([5, 0, 3, 0, 1, 0, 2, 7])
  new, n = nsvq.replace_unused_codes(cb, usage, jax.random.key(0),
                                     num_batches=10)
  assert int(n) == 3
  live = np.array([0, 2, 4, 6, 7])
  np.testing.assert_array_equal(new[live], cb[live])
  # More live than dead codes: the i-th dead code takes the i-th live one.
  # (plus upstream's 1e-12 noise, visible only where a value is 0)
  np.testing.assert_allclose(new[np.array([1, 3, 5])], cb[live[:3]],
                             atol=1e-9, rtol=0)
  # Fewer live than dead: every dead code becomes some live code.
  new, n = nsvq.replace_unused_codes(cb, jnp.array([0, 0, 9, 0, 0, 0, 0, 4]),
                                     jax.random.key(1), num_batches=10)
  assert int(n) == 6
  for i in (0, 1, 3, 4, 5, 6):
    assert any(np.allclose(new[i], cb[j], atol=1e-9, rtol=0) for j in (2, 7))
  # A visible noise scale: copies of the one live code differ from it (and
  # from each other) by about that much, so a nearest-code search splits.
  cb = jax.random.normal(jax.random.key(2), (8, 3))
  new, n = nsvq.replace_unused_codes(cb, jnp.array([9, 0, 0, 0, 0, 0, 0, 0]),
                                     jax.random.key(3), num_batches=10,
                                     noise_scale=1e-2)
  assert int(n) == 7
  np.testing.assert_array_equal(new[0], cb[0])
  gaps = np.abs(np.asarray(new[1:]) - np.asarray(cb[0]))
  assert 1e-4 < gaps.mean() < 3e-2 and gaps.max() < 6e-2
  assert len({tuple(np.asarray(r)) for r in new}) == 8
  usage = nsvq.count_usage(jnp.zeros(8, jnp.int32), jnp.array([[1, 1, 3]]))
  np.testing.assert_array_equal(usage, [0, 1, 0, 1, 0, 0, 0, 0])
  assert [s for s in range(1, 6000) if nsvq.replacement_due(s)][:12] == [
      10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 200, 300]
  assert nsvq.replacement_due(4500) and not nsvq.replacement_due(5000)


def test_sim_small_loss_falls():
  cfg = lapa.Config.sim_small()
  model = lapa.Model(cfg, rngs=nnx.Rngs(0))
  import optax  # pylint: disable=g-import-not-at-top
  opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  x = jax.random.uniform(jax.random.key(0), (4, 2, 56, 56, 3))
  x = x.at[:, 1].set(jnp.roll(x[:, 0], 3, axis=2))  # frame 1 = shifted 0

  @nnx.jit
  def step(model, opt, key):
    def f(m):
      return m.loss(x, key=key)
    (loss, _), grads = nnx.value_and_grad(f, has_aux=True)(model)
    opt.update(model, grads)
    return loss

  losses = [float(step(model, opt, jax.random.key(i))) for i in range(30)]
  assert losses[-1] < 0.5 * losses[0], losses


def test_residual_decoder_starts_from_frame_zero_and_motion_weighs_loss():
  x = jax.random.uniform(jax.random.key(0), (2, 2, 56, 56, 3))
  x = x.at[:, 1].set(x[:, 0]).at[:, 1, 20:30, 20:30].set(0.0)  # a patch moved
  key = jax.random.key(1)
  plain = lapa.Model(lapa.Config.sim_small(), rngs=nnx.Rngs(0))
  residual = lapa.Model(lapa.Config.sim_small(residual=True),
                        rngs=nnx.Rngs(0))
  _, a = plain.loss(x, key=key)
  _, b = residual.loss(x, key=key)
  # The same decoder output, plus frame 0.
  np.testing.assert_allclose(b["recon"] - a["recon"], x[:, 0], atol=1e-5)
  weighted = lapa.Model(lapa.Config.sim_small(residual=True,
                                              motion_weight=10.0),
                        rngs=nnx.Rngs(0))
  loss_w, c = weighted.loss(x, key=key)
  change = jnp.abs(x[:, 1] - x[:, 0]).mean(-1, keepdims=True)
  weight = 1 + 10 * change / change.mean(axis=(1, 2, 3), keepdims=True)
  want = jnp.mean(jnp.square(c["recon"] - x[:, 1]) * weight)
  np.testing.assert_allclose(loss_w, want, rtol=1e-4)  # float32 sums
  with pytest.raises(LaryError, match="residual decoding is for the pixel"):
    lapa.Config.dinov2(residual=True).check()


def _save_pt(path, weights, extra=None):
  import torch  # pylint: disable=g-import-not-at-top
  sd = {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}
  sd |= {k: torch.from_numpy(np.array(v)) for k, v in (extra or {}).items()}
  torch.save({"model": sd, "steps": 3}, path)  # upstream trainer's wrapper
  return str(path)


def test_registry_pixel_lapa_from_pt_and_converted(tmp_path, monkeypatch):
  from lary_jax.encoders import registry  # pylint: disable=g-import-not-at-top
  cfg, weights, x, _, data = _fixture("lapa")
  # The fixture's LAQ sees 28-pixel frames; the real preset is 224.
  monkeypatch.setitem(lapa.REGISTRY, "lapa",
                      (lapa.Config.lapa(image_size=28), ""))
  pt = _save_pt(tmp_path / "laq.pt", weights)
  enc = registry.load("lapa", pt, latent="quantized")
  assert (enc.mode, enc.dim, enc.num_tokens) == ("pairs", 32, 4)
  np.testing.assert_allclose(enc(x), data["quantized_tokens"], atol=1e-4,
                             rtol=0)
  out = registry.convert("lapa", pt, str(tmp_path / "conv"))
  enc2 = registry.load("lapa", out)  # nsvq noise from each example's pixels
  a = np.asarray(enc2(x))
  # Each example's noise is its own: a smaller batch changes only the last
  # bits of the matmuls, not the noise.
  np.testing.assert_allclose(a[1:], np.asarray(enc2(x[1:])), atol=1e-6,
                             rtol=0)
  assert not np.allclose(a, data["quantized_tokens"], atol=1e-3)
  with pytest.raises(LaryError, match="holds a 'lapa' checkpoint"):
    registry.load("lapa_dinov2", out, backbone=out)


def test_registry_feature_lapa_runs_backbone_then_lam(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from lary_jax import encoders  # pylint: disable=g-import-not-at-top
  cfg, weights, *_ = _fixture("lapa_dinov2")
  torch.manual_seed(0)
  hf = transformers.Dinov2Model(transformers.Dinov2Config(
      hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
      image_size=28, patch_size=14))
  hf.save_pretrained(tmp_path / "dino")
  # A checkpoint without its backbone (the fixture's own embedded one is
  # left out; embedded backbones: tests/lams/lapa_backbone_test.py).
  weights = {k: v for k, v in weights.items()
             if not k.startswith("dino_tokenizer.")}
  pt = _save_pt(tmp_path / "laq_dinov2.pt", weights)
  with pytest.raises(LaryError, match="backbone=PATH"):
    encoders.load("lapa_dinov2", pt)
  enc = encoders.load("lapa_dinov2", pt, backbone=str(tmp_path / "dino"),
                      latent="continuous")
  assert (enc.mode, enc.dim, enc.num_tokens) == ("pairs", 32, 16)
  images = np.random.default_rng(0).integers(0, 256, (1, 2, 224, 224, 3),
                                             dtype=np.uint8)
  tokens = encoders.load("dinov2", str(tmp_path / "dino"))(images[0])
  lam = _model(lapa.config_from_pt(weights, lapa.Config.dinov2()), weights)
  want = lam.encode(tokens[None], mode="continuous")
  np.testing.assert_allclose(enc(images), want, atol=1e-5, rtol=0)
