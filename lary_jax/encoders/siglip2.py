"""SigLIP 2 vision tower (fixed resolution) in Flax NNX.

Upstream LARY loads a fixed-resolution SigLIP 2 checkpoint (e.g.
`google/siglip2-base-patch16-224`) with `AutoModel`, which gives a
transformers `SiglipModel`, keeps its `.vision_model` and stores
`last_hidden_state`: the patch tokens after the post-LayerNorm and before the
attention-pooling head. Frames go in as [0, 1] RGB with no mean/std
normalisation, although the checkpoints were trained on `2x - 1` input; we
keep upstream's choice by default because the benchmark numbers were made
with it (`preprocess(images, native=True)` gives SigLIP's own input). Each
frame is encoded on its own: a 9-frame clip gives [9, 196, 768] with the
base model, an image pair [2, 196, 768].

The NaFlex checkpoints (`Siglip2Model`, variable resolution) are a different
architecture and `config_from_hf` refuses them. A fixed-resolution checkpoint
trained at another size (e.g. L/16 at 256) converts, but the model refuses
input of any other size, because upstream never interpolates the position
table; only the 224 checkpoints (B/16, So400m/14) fit LARY's 224 frames.
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
from lary_jax.encoders import config_dict
from lary_jax.encoders import convert
from lary_jax.errors import LaryError
from lary_jax.nn import vit_layers


@dataclasses.dataclass(frozen=True)
class Config(config_dict.DictConfig):
  """Vision tower; field names follow transformers' `SiglipVisionConfig`.

  The defaults are SigLIP 2 B/16 at 224, upstream's encoder (D = 768).
  """

  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  num_channels: int = 3
  image_size: int = 224
  patch_size: int = 16
  hidden_act: str = "gelu_pytorch_tanh"
  layer_norm_eps: float = 1e-6

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    return self.grid * self.grid


# hidden, intermediate, layers, patch, image: the published sizes (16 heads).
_SIZES = {
    "b16-224": (768, 3072, 12, 16, 224),
    "l16-256": (1024, 4096, 24, 16, 256),
    "so400m14-224": (1152, 4304, 27, 14, 224),
    "so400m16-256": (1152, 4304, 27, 16, 256),
    "g16-256": (1536, 6144, 40, 16, 256),
}
VARIANTS = {
    name: Config(hidden_size=h, intermediate_size=i, num_hidden_layers=n,
                 num_attention_heads=16 if h > 768 else 12, patch_size=p,
                 image_size=size)
    for name, (h, i, n, p, size) in _SIZES.items()
}


class Model(nnx.Module):
  """Patch embedding + learned positions, pre-norm blocks, post-LayerNorm."""

  def __init__(self, cfg: Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    self.dtype = dtype
    d, p = cfg.hidden_size, cfg.patch_size
    self.patch_embed = vit_layers.PatchEmbed((p, p), cfg.num_channels, d,
                                             dtype=dtype, rngs=rngs)
    self.pos_embed = vit_layers.learned(rngs, (cfg.num_tokens, d))
    self.blocks = nnx.List([
        vit_layers.Block(d, cfg.num_attention_heads, cfg.intermediate_size,
                         act=cfg.hidden_act, eps=cfg.layer_norm_eps,
                         dtype=dtype, rngs=rngs)
        for _ in range(cfg.num_hidden_layers)])
    self.post_norm = vit_layers.layer_norm(d, cfg.layer_norm_eps, dtype=dtype,
                                           rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encodes images.

    Args:
      x: [B, H, W, C] preprocessed images, H = W = cfg.image_size.

    Returns:
      (tokens [B, N, D] after the post-LayerNorm, out) where out holds
      "patch_tokens" (the same tokens) and "pre_norm" (before it).
    """
    size = self.cfg.image_size
    if x.ndim != 4 or x.shape[1:3] != (size, size):
      raise LaryError(f"siglip2 expects images [B, {size}, {size}, C], got "
                      f"{x.shape} (fixed-resolution checkpoint, no position "
                      "interpolation)")
    h = self.patch_embed(x) + self.pos_embed[...].astype(self.dtype)
    for block in self.blocks:
      h = block(h)
    tokens = self.post_norm(h)
    return tokens, {"patch_tokens": tokens, "pre_norm": h}


def preprocess(images: jax.Array | np.ndarray, *,
               native: bool = False) -> jax.Array:
  """uint8 or [0, 1] float images -> float32 model input.

  Args:
    images: [..., H, W, 3], uint8 or float in [0, 1].
    native: False (default) feeds [0, 1] unchanged, as upstream does; True
      applies SigLIP's own `2x - 1` (its processor's mean = std = 0.5).

  Returns:
    float32 array of the same shape.
  """
  images = vit_layers.to_unit_float(images)
  return 2.0 * images - 1.0 if native else images


def select_tokens(tokens: jax.Array, out: dict[str, jax.Array]) -> jax.Array:
  """Upstream's `last_hidden_state`: every patch token (SigLIP has no CLS)."""
  del tokens
  return out["patch_tokens"]


def _vision_config(hf_config: dict[str, Any]) -> dict[str, Any]:
  """The vision part of a SiglipConfig or a bare SiglipVisionConfig."""
  model_type = hf_config.get("model_type")
  if model_type == "siglip":
    vision = hf_config.get("vision_config")
    if not isinstance(vision, dict):
      raise LaryError("config.json: model_type 'siglip' without a "
                      "'vision_config' dict")
    return vision
  if model_type == "siglip_vision_model":
    return hf_config
  if model_type in ("siglip2", "siglip2_vision_model"):
    raise LaryError(f"config.json: model_type {model_type!r} is SigLIP 2 "
                    "NaFlex (variable resolution); use a fixed-resolution "
                    "checkpoint such as google/siglip2-base-patch16-224 "
                    "(model_type 'siglip')")
  raise LaryError(f"config.json: model_type {model_type!r} is not a SigLIP "
                  "checkpoint; expected 'siglip' or 'siglip_vision_model'")


def config_from_hf(hf: dict[str, Any]) -> Config:
  """Config from a `SiglipModel` / `SiglipVisionModel` config.json dict.

  Hub config.json files leave out fields at their transformers default, so
  missing fields take `Config`'s defaults (which are transformers').
  """
  vision = _vision_config(hf)
  fields = {f.name for f in dataclasses.fields(Config)}
  cfg = Config(**{k: v for k, v in vision.items() if k in fields})
  for key in ("image_size", "patch_size"):
    if not isinstance(getattr(cfg, key), int):
      raise LaryError(f"config.json: vision {key}={getattr(cfg, key)!r}; "
                      "only square sizes (one int) are supported")
  if cfg.image_size % cfg.patch_size:
    raise LaryError(f"config.json: vision image_size={cfg.image_size} is not "
                    f"a multiple of patch_size={cfg.patch_size}")
  try:
    vit_layers.activation(cfg.hidden_act)
  except LaryError as e:
    raise LaryError(f"config.json: vision {e}") from None
  return cfg


def _prefix(weights: dict[str, np.ndarray]) -> str:
  """"vision_model." for SiglipModel (and transformers 4 vision) dicts."""
  probe = "embeddings.patch_embedding.weight"
  if "vision_model." + probe in weights:
    return "vision_model."
  if probe in weights:
    return ""
  raise LaryError(f"checkpoint has no key 'vision_model.{probe}' (nor "
                  f"{probe!r}); is this a SigLIP checkpoint?")


def params_from_torch(weights: dict[str, np.ndarray],
                      cfg: Config) -> dict[str, np.ndarray]:
  """Maps a transformers SigLIP state dict onto `Model`'s parameters.

  Args:
    weights: torch key -> array, from a `SiglipModel` (vision_model.*,
      text_model.*, logit_*) or a `SiglipVisionModel`.
    cfg: the Config the parameters are for.

  Returns:
    NNX dotted path -> float32 array. The text tower, logit scale/bias and
    the vision pooling head are dropped; anything else unused is an error.
  """
  v = _prefix(weights)
  e = v + "embeddings."
  table = {
      "patch_embed.kernel": convert.conv(f"{e}patch_embedding.weight"),
      "patch_embed.bias": convert.same(f"{e}patch_embedding.bias"),
      "pos_embed": convert.same(f"{e}position_embedding.weight"),
      "post_norm.scale": convert.same(f"{v}post_layernorm.weight"),
      "post_norm.bias": convert.same(f"{v}post_layernorm.bias"),
  }
  d = cfg.hidden_size
  for i in range(cfg.num_hidden_layers):
    t, n = f"{v}encoder.layers.{i}.", f"blocks.{i}."
    attn = [f"{t}self_attn.{x}_proj" for x in "qkv"]
    table |= {
        n + "norm1.scale": convert.same(t + "layer_norm1.weight"),
        n + "norm1.bias": convert.same(t + "layer_norm1.bias"),
        n + "attn.qkv.kernel": convert.cat_linear(*(a + ".weight"
                                                    for a in attn)),
        n + "attn.qkv.bias": convert.cat_bias(
            *(a + ".bias" for a in attn), sizes=(d, d, d)),
        n + "attn.proj.kernel": convert.linear(t + "self_attn.out_proj.weight"),
        n + "attn.proj.bias": convert.same(t + "self_attn.out_proj.bias"),
        n + "norm2.scale": convert.same(t + "layer_norm2.weight"),
        n + "norm2.bias": convert.same(t + "layer_norm2.bias"),
        n + "mlp.fc1.kernel": convert.linear(t + "mlp.fc1.weight"),
        n + "mlp.fc1.bias": convert.same(t + "mlp.fc1.bias"),
        n + "mlp.fc2.kernel": convert.linear(t + "mlp.fc2.weight"),
        n + "mlp.fc2.bias": convert.same(t + "mlp.fc2.bias"),
    }
  unused = (r"text_model\..*", r"logit_(scale|bias)",
            re.escape(v) + r"head\..*", r".*position_ids")
  return convert.apply_table(weights, table,
                             convert.param_shapes(Model, cfg), unused=unused)


# contract.ModelModule's hooks this family does not have.
LOAD_OPTIONS: tuple[str, ...] = ()
FRAMES_VIEW = ""
XLA_PROFILE = xla_options.DEFAULT
load_options = None
config_from_pt = None
params_from_pt = None
load_checkpoint = None
