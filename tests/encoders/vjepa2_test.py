"""Parity of lary_jax.encoders.vjepa2 with transformers' VJEPA2Model."""

import dataclasses
import math

import cv2
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers.models.vjepa2 import modeling_vjepa2

from lary_jax import encoders
from lary_jax.encoders import convert
from lary_jax.encoders import registry
from lary_jax.encoders import vjepa2
from lary_jax.errors import LaryError

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning")

# crop_size = input size: transformers counts RoPE rows on a crop_size grid,
# the original code (and lary_jax) on the input's own grid.
_TINY = dict(hidden_size=48, num_attention_heads=2, num_hidden_layers=2,
             crop_size=224, patch_size=16, frames_per_clip=16,
             pred_hidden_size=16, pred_num_attention_heads=2,
             pred_num_hidden_layers=1)


def _spread(model):
  """Redraws the weights at unit gain (LeCun normal, LayerNorm scales ~1).

  At transformers' 0.02 init attention is nearly uniform and RoPE mistakes
  hide below 1e-4; at unit gain they show at the 1e-2 level.
  """
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim >= 2:
        p.normal_(0.0, p[0].numel() ** -0.5)
      elif "norm" in name and name.endswith("weight"):
        p.normal_(1.0, 0.2)
      else:
        p.normal_(0.0, 0.2)
  return model.eval()


def _hf_model(path=None, seed=0, **overrides):
  """A random tiny VJEPA2Model, saved as safetensors if `path` is given."""
  torch.manual_seed(seed)
  model = _spread(transformers.VJEPA2Model(
      transformers.VJEPA2Config(**(_TINY | overrides))))
  if path is not None:
    model.save_pretrained(path)
  return model


def _hf_tokens(model, clips_u8):
  """Upstream's normalisation, then the encoder's last_hidden_state."""
  x = (clips_u8.astype(np.float32) / 255.0 - vjepa2.IMAGENET_MEAN)
  x = torch.from_numpy((x / vjepa2.IMAGENET_STD).astype(np.float32))
  with torch.no_grad():
    out = model(pixel_values_videos=x.permute(0, 1, 4, 2, 3),
                skip_predictor=True)
  return out.last_hidden_state.numpy()


def _clips(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _original_state_dict(hf_weights, num_layers):
  """transformers' keys renamed to the original repo's, q/k/v fused."""
  out = {"pos_embed": np.zeros((1, 8, 48), np.float32)}  # unused by RoPE
  for k, v in hf_weights.items():
    if not k.startswith("encoder."):
      continue
    k = k.removeprefix("encoder.")
    k = k.replace("embeddings.patch_embeddings.", "patch_embed.")
    k = k.replace("layernorm.", "norm.").replace("layer.", "blocks.")
    k = k.replace(".attention.", ".attn.")
    out[k] = v
  for i in range(num_layers):
    a = f"blocks.{i}.attn."
    for kind in ("weight", "bias"):
      out[a + "qkv." + kind] = np.concatenate(
          [out.pop(f"{a}{x}.{kind}") for x in ("query", "key", "value")])
  return {"module.backbone." + k: torch.from_numpy(v) for k, v in out.items()}


def test_converted_encoder_matches_transformers(tmp_path):
  model = _hf_model(tmp_path / "hf")
  out = registry.convert("vjepa2", str(tmp_path / "hf"), str(tmp_path / "o"))
  enc = encoders.load("vjepa2", out)
  assert (enc.dim, enc.mode, enc.num_tokens) == (48, "video", 784)
  assert enc.frames_view == "vjepa2"  # extraction reads the stored crop
  # A LARY clip: 9 frames -> 4 tubelets (the 9th frame is dropped) x 196.
  clips = _clips((2, 9, 224, 224, 3))
  got, want = np.asarray(enc(clips)), _hf_tokens(model, clips)
  assert got.shape == want.shape == (2, 784, 48)
  assert np.abs(got - want).max() < 1e-4
  # An image pair: one tubelet, 196 tokens.
  pairs = _clips((2, 2, 224, 224, 3), seed=1)
  got, want = np.asarray(enc(pairs)), _hf_tokens(model, pairs)
  assert got.shape == want.shape == (2, 196, 48)
  assert np.abs(got - want).max() < 1e-4


def test_model_odd_single_and_nonsquare_clips(tmp_path):
  model = _hf_model(tmp_path, seed=1, crop_size=64, num_attention_heads=4)
  hf_config, weights = convert.read_hf(str(tmp_path))
  cfg = vjepa2.config_from_hf(hf_config)
  ours = convert.build(vjepa2.Model, cfg,
                       vjepa2.params_from_torch(weights, cfg))
  run = nnx.jit(lambda m, x: m(vjepa2.preprocess(x)))
  for shape in [(1, 5, 64, 64, 3), (2, 1, 64, 64, 3), (1, 4, 64, 64, 3)]:
    clips = _clips(shape, seed=shape[1])
    tokens, out = run(ours, clips)
    got = np.asarray(vjepa2.select_tokens(tokens, out))
    assert np.abs(got - _hf_tokens(model, clips)).max() < 1e-4, shape
    tubes = max(shape[1] // 2, 1)
    assert out["tubelets"].shape == (shape[0], tubes, 16, 48)
    assert got.shape[1] == cfg.num_tokens(shape[1], 64)
  # Non-square input: positions follow the input's 2 x 4 grid.
  assert run(ours, _clips((1, 2, 32, 64, 3)))[0].shape == (1, 8, 48)
  with pytest.raises(LaryError, match=r"clips \[B, T, H, W, C\]"):
    ours(jnp.zeros((1, 64, 64, 3)))


def test_original_pt_checkpoint_converts(tmp_path, monkeypatch):
  model = _hf_model(tmp_path / "hf", seed=2)
  hf_config, weights = convert.read_hf(str(tmp_path / "hf"))
  cfg = vjepa2.config_from_hf(hf_config)
  state = _original_state_dict(weights, cfg.num_hidden_layers)
  pt = str(tmp_path / "vitl.pt")
  torch.save({"target_encoder": state, "epoch": 3}, pt)
  monkeypatch.setitem(vjepa2.VARIANTS, "tiny", cfg)
  out = registry.convert("vjepa2", pt, str(tmp_path / "o"), variant="tiny")
  clips = _clips((1, 9, 224, 224, 3), seed=3)
  got = np.asarray(encoders.load("vjepa2", out)(clips))
  assert np.abs(got - _hf_tokens(model, clips)).max() < 1e-4

  clean = convert.read_pt(pt)
  assert "blocks.0.attn.qkv.weight" in clean and "pos_embed" in clean
  key = "blocks.1.attn.qkv.weight"
  renamed = {("blocks.1.attn.qkv_w" if k == key else k): v
             for k, v in clean.items()}
  with pytest.raises(LaryError, match=f"no key '{key}'"):
    vjepa2.params_from_pt(renamed, cfg)
  with pytest.raises(LaryError, match="blocks.1.attn.qkv_w"):
    vjepa2.params_from_pt(renamed | {key: clean[key]}, cfg)
  wrong = clean | {"norm.weight": np.ones(47, np.float32)}
  with pytest.raises(LaryError, match=r"'norm.weight' \(47,\).*\(48,\)"):
    vjepa2.params_from_pt(wrong, cfg)


def test_config_from_pt_reads_released_shapes():
  for name in ("vitl16", "vith16", "vitg16"):
    cfg = vjepa2.VARIANTS[name]
    d, blocks = cfg.hidden_size, cfg.num_hidden_layers
    # Shape-only stand-ins: broadcast views cost no memory.
    fake = lambda *s: np.broadcast_to(np.float32(0), s)
    w = {"patch_embed.proj.weight": fake(d, 3, 2, 16, 16),
         "blocks.0.mlp.fc1.weight": fake(cfg.mlp_hidden, d),
         "blocks.0.attn.qkv.bias": fake(3 * d)}
    w |= {f"blocks.{i}.norm1.weight": fake(d) for i in range(blocks)}
    assert vjepa2.config_from_pt(w) == cfg, name
  w["patch_embed.proj.weight"] = fake(48, 3, 2, 16, 16)
  with pytest.raises(LaryError, match="width 48"):
    vjepa2.config_from_pt(w)


@pytest.mark.parametrize("name", sorted(vjepa2.VARIANTS))
def test_variant_sizes_match_transformers(name):
  # Two blocks keep this fast; the widths are what a preset can get wrong.
  cfg = dataclasses.replace(vjepa2.VARIANTS[name], num_hidden_layers=2)
  hf = transformers.VJEPA2Config(
      hidden_size=cfg.hidden_size, num_hidden_layers=2,
      num_attention_heads=cfg.num_attention_heads, mlp_ratio=cfg.mlp_ratio)
  with torch.device("meta"):
    encoder = transformers.VJEPA2Model(hf).encoder
  want = sum(p.numel() for p in encoder.parameters())
  shapes = convert.param_shapes(vjepa2.Model, cfg)
  assert sum(math.prod(s) for s in shapes.values()) == want


@pytest.mark.parametrize("head_dim", [64, 80, 6])
def test_rope_matches_transformers_rotation(head_dim):
  grid = (3, 2, 4)
  n = math.prod(grid)
  q = np.random.default_rng(head_dim).normal(size=(1, n, 2, head_dim))
  q = q.astype(np.float32)
  rope = vjepa2.make_rope(grid, head_dim)
  got = np.asarray(rope(jnp.asarray(q), jnp.asarray(q))[0])
  ids = torch.arange(n)
  pos = (ids // 8, ids % 8 // 4, ids % 4)  # tubelet, row, column
  width = 2 * ((head_dim // 3) // 2)
  x = torch.from_numpy(q).transpose(1, 2)  # [B, H, N, Dh]
  parts = [modeling_vjepa2.rotate_queries_or_keys(
      x[..., i * width:(i + 1) * width], pos=p.float())
           for i, p in enumerate(pos)]
  want = torch.cat(parts + [x[..., 3 * width:]], dim=-1).transpose(1, 2)
  np.testing.assert_allclose(got, want.numpy(), atol=2e-6)


@pytest.mark.parametrize("hw", [(360, 640), (480, 270), (256, 300),
                                (224, 224)])
def test_upstream_view_is_resize_short_side_and_centre_crop(hw):
  h, w = hw
  frames = _clips((2, h, w, 3), seed=h)
  got = vjepa2.upstream_view(frames)
  # Upstream: cv2 INTER_LINEAR to short side 256 (skipped when already
  # 256), then a crop at round((side - 224) / 2).
  if min(h, w) != 256:
    size = ((256, int(256 * h / w)) if w < h else (int(256 * w / h), 256))
    frames = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_LINEAR)
                       for f in frames])
  top = round((frames.shape[1] - 224) / 2)
  left = round((frames.shape[2] - 224) / 2)
  np.testing.assert_array_equal(
      got, frames[:, top:top + 224, left:left + 224])
  with pytest.raises(LaryError, match="uint8 frames"):
    vjepa2.upstream_view(frames.astype(np.float32))


def test_preprocess_is_imagenet_normalisation():
  u8 = np.array([[[[0, 255, 51]]]], np.uint8)
  want = (np.array([0, 1, 0.2]) - vjepa2.IMAGENET_MEAN) / vjepa2.IMAGENET_STD
  np.testing.assert_allclose(vjepa2.preprocess(u8)[0, 0, 0], want, atol=1e-6)
  np.testing.assert_allclose(vjepa2.preprocess(np.float32([[0.2] * 3])),
                             vjepa2.preprocess(np.uint8([[51] * 3])),
                             atol=1e-6)


def test_config_from_hf_and_token_counts():
  hf = {"model_type": "vjepa2", "hidden_size": 1408, "num_hidden_layers": 40,
        "num_attention_heads": 22, "mlp_ratio": 4.363636363636363,
        "crop_size": 256, "frames_per_clip": 64}
  cfg = vjepa2.config_from_hf(hf)
  assert cfg == vjepa2.VARIANTS["vitg16"]
  assert (cfg.mlp_hidden, cfg.resolution, cfg.frames_per_clip) == (
      6144, 224, 16)
  assert vjepa2.Config.from_dict(cfg.to_dict()) == cfg
  large = vjepa2.VARIANTS["vitl16"]
  assert [large.num_tokens(t) for t in (9, 2, 1, 16)] == [784, 196, 196, 1568]
  with pytest.raises(LaryError, match="model_type='videomae'"):
    vjepa2.config_from_hf(hf | {"model_type": "videomae"})
  with pytest.raises(LaryError, match="hidden_act='relu6'"):
    vjepa2.config_from_hf(hf | {"hidden_act": "relu6"})
  with pytest.raises(LaryError, match="unknown field"):
    vjepa2.Config.from_dict({"crop_size": 256})
