"""V-JEPA 2 video encoder (ViT with 3-D RoPE) in Flax NNX.

What upstream LARY does, and what this module does at each step:

1. Frames. Video mode takes the clip's 9 `sample_indices` (clamped to the
   video) at the video's own resolution; image mode takes the row's
   (src_img, tgt_img) as a 2-frame clip. Both go, as one clip, through
   V-JEPA 2's evaluation transform: OpenCV bilinear resize so the short side
   is 256 (`int(224 * 256 / 224)`, aspect kept), a centred 224 x 224 crop
   (offsets `round((side - 224) / 2)`), `/255`, ImageNet mean/std.
   Here `upstream_view` is the resize and crop (bit-exact OpenCV arithmetic,
   `lary_jax.data.images.resize_linear`) and `preprocess` the scaling and
   normalisation. The encoder contract hands every encoder 224 x 224
   frames; a dataset prepared with `--config.prepare.vjepa2_view=True`
   stores this view of the full-resolution frames beside the squashed ones
   (bicubic, aspect not kept, as for the DINO/SigLIP paths), and extraction
   reads it for this model (`FRAMES_VIEW`). From the squashed frames
   (`--config.extract.frames=squashed`, or a dataset prepared without the
   view) V-JEPA 2 sees the whole frame instead of upstream's centre crop.
2. Tubelets. The 3-D patch embedding (a strided Conv3d upstream) cuts the
   clip into tubelets of 2 frames x 16 x 16 pixels. A 9-frame clip gives 4
   tubelets from frames (0, 1), (2, 3), (4, 5), (6, 7); the 9th frame falls
   off the strided convolution and is never seen, here as upstream. A pair
   gives 1 tubelet. (A single frame is repeated to fill a tubelet, as
   transformers does; upstream never feeds one.)
3. Positions. RoPE rotates three equal slices of each head (tubelet index,
   row, column; 2 * (head_dim // 6) channels each, the rest unrotated) with
   positions counted on the input's own token grid, as the original code
   does. The frame ids that upstream passes to its multi-clip wrapper are
   unused there (`use_pos_embed=False`), so the time between sampled frames
   is invisible to the encoder, here too. transformers' `VJEPA2Model` counts
   rows on a `crop_size / patch_size` grid instead (16 for the released
   256-pixel checkpoints), which differs from the original code on 224
   input; the parity tests therefore build it with crop_size = input size.
4. Tokens. The final LayerNorm's output, flattened tubelet-major:
   [B, 4 * 196, D] = [B, 784, 1024] for a 9-frame clip with ViT-L, and
   [B, 196, 1024] for a pair, which is what upstream stores per row.
   `out["tubelets"]` holds the same tokens as [B, T / 2, 196, D].

The model is built for 16 frames at 224 upstream (`frames_per_clip`,
`resolution`); with RoPE and no position table neither size enters the
computation, so `Config` keeps them only as a record.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lary_jax import xla_options
from lary_jax.data import images as image_ops
from lary_jax.encoders import config_dict
from lary_jax.encoders import convert
from lary_jax.errors import LaryError
from lary_jax.nn import vit_layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP = 224
SHORT_SIDE = int(CROP * 256 / 224)
# The stored frames extraction reads for this model: prepared datasets hold
# `upstream_view` of the full-resolution frames under `*_vjepa2` keys.
FRAMES_VIEW = "vjepa2"
XLA_PROFILE = xla_options.DEFAULT

# Heads per width of the released checkpoints (the weights do not say).
_HEADS_BY_WIDTH = {1024: 16, 1280: 16, 1408: 22}


@dataclasses.dataclass(frozen=True)
class Config(config_dict.DictConfig):
  """Encoder shape; field names follow transformers' `VJEPA2Config`.

  Defaults: ViT-L/16, tubelet 2, upstream's encoder (D = 1024).
  `frames_per_clip` and `resolution` are upstream's build sizes (16, 224),
  kept as a record: nothing here depends on them.
  """

  hidden_size: int = 1024
  num_hidden_layers: int = 24
  num_attention_heads: int = 16
  mlp_ratio: float = 4.0
  patch_size: int = 16
  tubelet_size: int = 2
  in_chans: int = 3
  layer_norm_eps: float = 1e-6
  qkv_bias: bool = True
  hidden_act: str = "gelu"
  frames_per_clip: int = 16
  resolution: int = CROP

  @property
  def mlp_hidden(self) -> int:
    return int(self.hidden_size * self.mlp_ratio)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  def num_tokens(self, num_frames: int, size: int = CROP) -> int:
    """Tokens for a clip of `num_frames` frames of size x size pixels."""
    tubelets = max(num_frames // self.tubelet_size, 1)
    return tubelets * (size // self.patch_size) ** 2

  @classmethod
  def vitl16(cls, **kw: Any) -> Config:
    return cls(**kw)

  @classmethod
  def vith16(cls, **kw: Any) -> Config:
    return dataclasses.replace(
        cls(hidden_size=1280, num_hidden_layers=32), **kw)

  @classmethod
  def vitg16(cls, **kw: Any) -> Config:
    return dataclasses.replace(
        cls(hidden_size=1408, num_hidden_layers=40, num_attention_heads=22,
            mlp_ratio=48 / 11), **kw)



VARIANTS = {
    "vitl16": Config.vitl16(),
    "vith16": Config.vith16(),
    "vitg16": Config.vitg16(),
}


def _axis_angles(pos: np.ndarray, width: int) -> np.ndarray:
  """[N] positions -> [N, width] angles, V-JEPA's layout.

  The original code pairs adjacent channels (2i, 2i + 1) for the rotation
  but lays its frequencies out as two copies [f_0..f_{w/2-1}, f_0..]; the
  angles keep that layout, so channel j turns by f_{j mod w/2}.
  """
  half = width // 2
  omega = np.arange(half, dtype=np.float32) / np.float32(half)
  omega = np.float32(1.0) / np.float32(10000.0) ** omega  # [w/2]
  freq = pos.astype(np.float32)[:, None] * omega[None, :]  # [N, w/2]
  return np.concatenate([freq, freq], axis=-1)


def rope_tables(grid: tuple[int, int, int],
                head_dim: int) -> tuple[np.ndarray, np.ndarray]:
  """cos and sin [N, head_dim] (float32) for a (T, H, W) token grid.

  Args:
    grid: tubelets, rows and columns of patch tokens.
    head_dim: channels per head.

  Returns:
    (cos, sin); channels past the three rotated slices get cos 1, sin 0.
  """
  t, h, w = grid
  ids = np.arange(t * h * w)
  frame, row, col = ids // (h * w), ids % (h * w) // w, ids % w
  width = 2 * ((head_dim // 3) // 2)
  angles = np.concatenate([
      _axis_angles(frame, width), _axis_angles(row, width),
      _axis_angles(col, width),
      np.zeros((ids.size, head_dim - 3 * width), np.float32)], axis=-1)
  return np.cos(angles), np.sin(angles)


def _rotate_pairs(x: jax.Array) -> jax.Array:
  """(x_2i, x_2i+1) -> (-x_2i+1, x_2i) on the last axis."""
  pairs = x.reshape(*x.shape[:-1], -1, 2)
  return jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)


def make_rope(grid: tuple[int, int, int], head_dim: int
              ) -> vit_layers.RopeFn:
  """The `rope(q, k)` hook for `vit_layers.Block` on a (T, H, W) grid."""
  cos, sin = rope_tables(grid, head_dim)
  cos, sin = cos[:, None, :], sin[:, None, :]  # [N, 1, Dh]

  def rope(q: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
    c, s = jnp.asarray(cos, q.dtype), jnp.asarray(sin, q.dtype)
    return q * c + _rotate_pairs(q) * s, k * c + _rotate_pairs(k) * s

  return rope


class Model(nnx.Module):
  """Tubelet embedding, pre-norm blocks with 3-D RoPE, final LayerNorm."""

  def __init__(self, cfg: Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    self.dtype = dtype
    d, p = cfg.hidden_size, cfg.patch_size
    self.patch_embed = vit_layers.PatchEmbed(
        (cfg.tubelet_size, p, p), cfg.in_chans, d, dtype=dtype, rngs=rngs)
    self.blocks = nnx.List([
        vit_layers.Block(d, cfg.num_attention_heads, cfg.mlp_hidden,
                         act=cfg.hidden_act, qkv_bias=cfg.qkv_bias,
                         eps=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
        for _ in range(cfg.num_hidden_layers)])
    self.norm = vit_layers.layer_norm(d, cfg.layer_norm_eps, dtype=dtype,
                                      rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encodes clips.

    Args:
      x: [B, T, H, W, C] preprocessed frames; H, W multiples of the patch.

    Returns:
      (tokens [B, T // 2 * N, D] after the final LayerNorm, out) where out
      holds "patch_tokens" (the same), "tubelets" [B, T // 2, N, D] and
      "pre_norm".
    """
    if x.ndim != 5:
      raise LaryError(f"vjepa2 expects clips [B, T, H, W, C], got {x.shape}")
    b, t, h, w, _ = x.shape
    tube, p = self.cfg.tubelet_size, self.cfg.patch_size
    if t < tube:
      x = jnp.tile(x, (1, tube, 1, 1, 1))
    else:  # a strided Conv3d never reaches trailing frames
      x = x[:, :t // tube * tube]
    grid = (x.shape[1] // tube, h // p, w // p)
    tokens = self.patch_embed(x)  # [B, T' * H' * W', D]
    rope = make_rope(grid, self.cfg.head_dim)
    for block in self.blocks:
      tokens = block(tokens, rope=rope)
    pre_norm = tokens
    tokens = self.norm(tokens)
    return tokens, {
        "patch_tokens": tokens,
        "tubelets": tokens.reshape(b, grid[0], grid[1] * grid[2], -1),
        "pre_norm": pre_norm,
    }


def upstream_view(frames: np.ndarray) -> np.ndarray:
  """Upstream's spatial evaluation transform for V-JEPA 2, on the host.

  Args:
    frames: uint8 [T, H, W, 3] at the video's (or image's) own resolution.

  Returns:
    uint8 [T, 224, 224, 3]: bilinear resize (OpenCV arithmetic) so the short
    side is 256, aspect kept, then the centred 224 x 224 crop (see
    `lary_jax.data.images.resize_short_side_center_crop`).
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.dtype != np.uint8 or frames.shape[-1] != 3:
    raise LaryError(f"upstream_view expects uint8 frames [T, H, W, 3], got "
                    f"{frames.dtype} {frames.shape}")
  return image_ops.resize_short_side_center_crop(frames, SHORT_SIDE, CROP)


def preprocess(images: jax.Array | np.ndarray) -> jax.Array:
  """uint8 or [0, 1] float frames -> ImageNet-normalised float32.

  Args:
    images: [..., H, W, 3], uint8 or float in [0, 1].

  Returns:
    float32 `(x - mean) / std` with ImageNet statistics, as upstream feeds.
  """
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return (vit_layers.to_unit_float(images) - mean) / std


def select_tokens(tokens: jax.Array, out: dict[str, jax.Array]) -> jax.Array:
  """Upstream's tokens: all of them, [B, T // 2 * N, D], tubelet-major."""
  del tokens
  return out["patch_tokens"]


def config_from_hf(hf: dict[str, Any]) -> Config:
  """Config from a `VJEPA2Model` (or video classifier) config.json dict.

  `crop_size` and `frames_per_clip` are not copied: the LARY protocol runs
  the encoder at upstream's 224 and 16, whatever the checkpoint trained at.
  """
  if hf.get("model_type") != "vjepa2":
    raise LaryError(f"config.json: model_type={hf.get('model_type')!r}, "
                    "expected 'vjepa2' (VJEPA2Model)")
  act = hf.get("hidden_act", "gelu")
  vit_layers.activation(act)  # fails early on an unsupported activation
  cfg = Config(
      hidden_size=hf.get("hidden_size", 1024),
      num_hidden_layers=hf.get("num_hidden_layers", 24),
      num_attention_heads=hf.get("num_attention_heads", 16),
      mlp_ratio=float(hf.get("mlp_ratio", 4.0)),
      patch_size=config_dict.square(hf.get("patch_size", 16), "patch_size"),
      tubelet_size=hf.get("tubelet_size", 2),
      in_chans=hf.get("in_chans", 3),
      layer_norm_eps=hf.get("layer_norm_eps", 1e-6),
      qkv_bias=hf.get("qkv_bias", True),
      hidden_act=act)
  if cfg.hidden_size % cfg.num_attention_heads:
    raise LaryError(f"config.json: hidden_size={cfg.hidden_size} is not a "
                    f"multiple of num_attention_heads="
                    f"{cfg.num_attention_heads}")
  return cfg


def _block_table(cfg: Config, src: str, *, fused: bool
                 ) -> dict[str, convert.Rule]:
  """Rules for block parameters; `src` is the torch key of block {i}."""
  c, d = convert, cfg.hidden_size
  table = {}
  for i in range(cfg.num_hidden_layers):
    t, n = src.format(i=i), f"blocks.{i}."
    a = t + ("attn." if fused else "attention.")
    table |= {
        n + "norm1.scale": c.same(t + "norm1.weight"),
        n + "norm1.bias": c.same(t + "norm1.bias"),
        n + "attn.proj.kernel": c.linear(a + "proj.weight"),
        n + "attn.proj.bias": c.same(a + "proj.bias"),
        n + "norm2.scale": c.same(t + "norm2.weight"),
        n + "norm2.bias": c.same(t + "norm2.bias"),
        n + "mlp.fc1.kernel": c.linear(t + "mlp.fc1.weight"),
        n + "mlp.fc1.bias": c.same(t + "mlp.fc1.bias"),
        n + "mlp.fc2.kernel": c.linear(t + "mlp.fc2.weight"),
        n + "mlp.fc2.bias": c.same(t + "mlp.fc2.bias"),
    }
    if fused:  # the original's qkv Linear is already q, k, v stacked
      table[n + "attn.qkv.kernel"] = c.linear(a + "qkv.weight")
      if cfg.qkv_bias:
        table[n + "attn.qkv.bias"] = c.same(a + "qkv.bias")
    else:
      qkv = [a + x for x in ("query", "key", "value")]
      table[n + "attn.qkv.kernel"] = c.cat_linear(*[k + ".weight"
                                                     for k in qkv])
      if cfg.qkv_bias:
        table[n + "attn.qkv.bias"] = c.cat_bias(
            *[k + ".bias" for k in qkv], sizes=(d, d, d))
  return table


def params_from_torch(weights: dict[str, np.ndarray], cfg: Config
                      ) -> dict[str, np.ndarray]:
  """NNX parameters from a transformers V-JEPA 2 state dict.

  Args:
    weights: torch key -> array of a `VJEPA2Model` (encoder.*, predictor.*)
      or `VJEPA2ForVideoClassification` (vjepa2.encoder.*, pooler.*, ...).
    cfg: the Config the parameters are for.

  Returns:
    NNX dotted path -> float32 array; the predictor, pooler and classifier
    are dropped, any other unused key is an error.
  """
  probe = "encoder.embeddings.patch_embeddings.proj.weight"
  prefix = next((k[:-len(probe)] for k in weights if k.endswith(probe)), None)
  if prefix not in ("", "vjepa2."):
    raise LaryError(f"checkpoint has no key {probe!r}; is this a "
                    "transformers V-JEPA 2 checkpoint?")
  e = prefix + "encoder."
  c = convert
  table = {
      "patch_embed.kernel": c.conv(e + "embeddings.patch_embeddings.proj."
                                   "weight"),
      "patch_embed.bias": c.same(e + "embeddings.patch_embeddings.proj.bias"),
      "norm.scale": c.same(e + "layernorm.weight"),
      "norm.bias": c.same(e + "layernorm.bias"),
      **_block_table(cfg, e + "layer.{i}.", fused=False),
  }
  unused = [re.escape(prefix) + r"predictor\..*", r"pooler\..*",
            r"classifier\..*"]
  return c.apply_table(weights, table, c.param_shapes(Model, cfg),
                       unused=unused)


def params_from_pt(weights: dict[str, np.ndarray], cfg: Config
                   ) -> dict[str, np.ndarray]:
  """NNX parameters from the original code's `target_encoder` state dict.

  Args:
    weights: torch key -> array with `module.`/`backbone.` already stripped
      (`convert.read_pt`): patch_embed.proj.*, blocks.{i}.*, norm.*.
    cfg: the Config the parameters are for.

  Returns:
    NNX dotted path -> float32 array. A `pos_embed` entry, which some
    checkpoints carry although RoPE models never read it, is dropped, as
    upstream's non-strict load does; any other unused key is an error.
  """
  c = convert
  table = {
      "patch_embed.kernel": c.conv("patch_embed.proj.weight"),
      "patch_embed.bias": c.same("patch_embed.proj.bias"),
      "norm.scale": c.same("norm.weight"),
      "norm.bias": c.same("norm.bias"),
      **_block_table(cfg, "blocks.{i}.", fused=True),
  }
  return c.apply_table(weights, table, c.param_shapes(Model, cfg),
                       unused=(r"pos_embed",))


def config_from_pt(weights: dict[str, np.ndarray]) -> Config:
  """Config read off an original state dict's shapes.

  The head count is not in the weights; it is taken from the released
  models' widths (ViT-L 1024 and ViT-H 1280: 16 heads, ViT-g 1408: 22).
  """
  key = "patch_embed.proj.weight"
  if key not in weights:
    raise LaryError(f"checkpoint has no key {key!r}; is this a V-JEPA 2 "
                    "target_encoder?")
  if "blocks.0.mlp.fc3.weight" in weights:
    raise LaryError("checkpoint key 'blocks.0.mlp.fc3.weight': SwiGLU "
                    "V-JEPA encoders are not supported")
  dim, chans, tube, p, _ = weights[key].shape
  if dim not in _HEADS_BY_WIDTH:
    raise LaryError(f"checkpoint {key!r} has width {dim}; the head count is "
                    f"known only for widths {sorted(_HEADS_BY_WIDTH)} (pass "
                    f"variant=, one of {sorted(VARIANTS)})")
  depth = 0
  while f"blocks.{depth}.norm1.weight" in weights:
    depth += 1
  fc1 = "blocks.0.mlp.fc1.weight"
  if fc1 not in weights:
    raise LaryError(f"checkpoint has no key {fc1!r}")
  hidden = weights[fc1].shape[0]
  ratio = next((r for r in (4.0, 48 / 11) if int(dim * r) == hidden),
               hidden / dim)
  return Config(hidden_size=dim, num_hidden_layers=depth,
                num_attention_heads=_HEADS_BY_WIDTH[dim], mlp_ratio=ratio,
                patch_size=p, tubelet_size=tube, in_chans=chans,
                qkv_bias="blocks.0.attn.qkv.bias" in weights)


# contract.ModelModule's hooks this family does not have.
LOAD_OPTIONS: tuple[str, ...] = ()
load_options = None
load_checkpoint = None
