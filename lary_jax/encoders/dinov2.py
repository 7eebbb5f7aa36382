"""DINOv2 ViT (transformers `Dinov2Model`) in Flax NNX.

Upstream LARY feeds `2x - 1` images (not ImageNet mean/std) and keeps the
patch tokens of `last_hidden_state` (after the final LayerNorm): 256 tokens
for a 224 image with 14-pixel patches. The checkpoints' position table is
for 518 pixels (37 x 37); like transformers, it is resized bicubically
(PyTorch's a = -0.75, half-pixel centres, no antialias) to the input's grid.
"""

from __future__ import annotations

import dataclasses
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
  """DINOv2 architecture; field names follow Hugging Face's `Dinov2Config`."""

  hidden_size: int = 1024
  num_hidden_layers: int = 24
  num_attention_heads: int = 16
  mlp_ratio: float = 4
  patch_size: int = 14
  image_size: int = 518  # size the position table was trained for
  num_channels: int = 3
  layer_norm_eps: float = 1e-6
  qkv_bias: bool = True
  layerscale_value: float = 1.0
  use_swiglu_ffn: bool = False
  hidden_act: str = "gelu"

  @classmethod
  def vits14(cls, **kw) -> Config:
    return cls(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
               **kw)

  @classmethod
  def vitb14(cls, **kw) -> Config:
    return cls(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
               **kw)

  @classmethod
  def vitl14(cls, **kw) -> Config:
    return cls(**kw)

  @classmethod
  def vitg14(cls, **kw) -> Config:
    return cls(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24,
               use_swiglu_ffn=True, **kw)

  @property
  def mlp_hidden(self) -> int:
    hidden = int(self.hidden_size * self.mlp_ratio)
    if self.use_swiglu_ffn:  # two thirds, rounded up to a multiple of 8
      hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
    return hidden

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size



VARIANTS = {
    "vits14": Config.vits14(),
    "vitb14": Config.vitb14(),
    "vitl14": Config.vitl14(),
    "vitg14": Config.vitg14(),
}


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of PyTorch's bicubic resize along one axis.

  `F.interpolate(mode="bicubic", align_corners=False)` with a target size:
  source x = (i + 0.5) * n_in / n_out - 0.5, Keys kernel with a = -0.75,
  taps clamped at the border, no antialiasing.
  """
  a = -0.75
  src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  i0 = np.floor(src).astype(int)
  t = src - i0
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
  taps = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
  m = np.zeros((n_out, n_in))
  for j in range(4):
    np.add.at(m, (np.arange(n_out), np.clip(i0 - 1 + j, 0, n_in - 1)),
              taps[:, j])
  return m.astype(np.float32)


class Model(nnx.Module):
  """DINOv2: patch embed + CLS + position table, pre-norm blocks, final LN."""

  def __init__(self, cfg: Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    self.dtype = dtype
    d, p = cfg.hidden_size, cfg.patch_size
    self.patch_embed = vit_layers.PatchEmbed((p, p), cfg.num_channels, d,
                                             dtype=dtype, rngs=rngs)
    self.cls_token = vit_layers.learned(rngs, (d,))
    self.pos_embed = vit_layers.learned(rngs, (1 + cfg.grid**2, d))
    self.blocks = nnx.List([
        vit_layers.Block(
            d, cfg.num_attention_heads, cfg.mlp_hidden,
            mlp="gated" if cfg.use_swiglu_ffn else "mlp",
            act="silu" if cfg.use_swiglu_ffn else cfg.hidden_act,
            qkv_bias=cfg.qkv_bias, layer_scale=cfg.layerscale_value,
            eps=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
        for _ in range(cfg.num_hidden_layers)])
    self.norm = vit_layers.layer_norm(d, cfg.layer_norm_eps, dtype=dtype,
                                      rngs=rngs)

  def position_table(self, gh: int, gw: int) -> jax.Array:
    """[1 + gh * gw, D] float32, resized from the trained grid if needed."""
    table = self.pos_embed[...]
    g = self.cfg.grid
    if (gh, gw) == (g, g):
      return table
    patch = table[1:].reshape(g, g, -1)
    patch = jnp.einsum("hy,yxd,wx->hwd", bicubic_matrix(g, gh), patch,
                       bicubic_matrix(g, gw),
                       precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([table[:1], patch.reshape(gh * gw, -1)])

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encodes normalised images.

    Args:
      x: [B, H, W, C], already `preprocess`ed.

    Returns:
      (tokens [B, 1 + N, D] after the final LayerNorm, named intermediates:
      "cls" [B, D], "patch_tokens" [B, N, D], "pre_norm" [B, 1 + N, D]).
    """
    b, h, w, _ = x.shape
    p = self.cfg.patch_size
    patches = self.patch_embed(x)  # [B, N, D]
    cls = jnp.broadcast_to(self.cls_token[...].astype(self.dtype),
                           (b, 1, patches.shape[-1]))
    x = jnp.concatenate([cls, patches], axis=1)
    x = x + self.position_table(h // p, w // p).astype(self.dtype)
    for block in self.blocks:
      x = block(x)
    pre_norm = x
    x = self.norm(x)
    return x, {"cls": x[:, 0], "patch_tokens": x[:, 1:], "pre_norm": pre_norm}


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 or [0, 1] float images -> `2x - 1` float32 (upstream's input)."""
  return vit_layers.to_unit_float(images) * 2.0 - 1.0


def select_tokens(tokens: jax.Array, out: dict[str, jax.Array]) -> jax.Array:
  """Upstream's `last_hidden_state[:, 1:]`: [B, N, D] patch tokens."""
  del tokens
  return out["patch_tokens"]


def config_from_hf(hf: dict[str, Any]) -> Config:
  """Config from a `Dinov2Model` config.json dict."""
  if hf.get("model_type") != "dinov2":
    raise LaryError(f"config.json: model_type={hf.get('model_type')!r}, "
                    "expected 'dinov2' (Dinov2Model)")
  swiglu = bool(hf.get("use_swiglu_ffn", False))
  act = hf.get("hidden_act", "gelu")
  if not swiglu:
    vit_layers.activation(act)  # fails early on an unsupported activation
  return Config(
      hidden_size=hf["hidden_size"],
      num_hidden_layers=hf["num_hidden_layers"],
      num_attention_heads=hf["num_attention_heads"],
      mlp_ratio=hf.get("mlp_ratio", 4),
      patch_size=config_dict.square(hf.get("patch_size", 14), "patch_size"),
      image_size=config_dict.square(hf.get("image_size", 518), "image_size"),
      num_channels=hf.get("num_channels", 3),
      layer_norm_eps=hf.get("layer_norm_eps", 1e-6),
      qkv_bias=hf.get("qkv_bias", True),
      layerscale_value=hf.get("layerscale_value", 1.0),
      use_swiglu_ffn=swiglu,
      hidden_act=act)


def params_from_torch(weights: dict[str, np.ndarray], cfg: Config
                      ) -> dict[str, np.ndarray]:
  """NNX parameters from a `Dinov2Model` state dict (Hub key names)."""
  c = convert
  d = cfg.hidden_size
  table = {
      "patch_embed.kernel": c.conv(
          "embeddings.patch_embeddings.projection.weight"),
      "patch_embed.bias": c.same("embeddings.patch_embeddings.projection.bias"),
      "cls_token": c.reshape("embeddings.cls_token", (d,)),
      "pos_embed": c.reshape("embeddings.position_embeddings",
                             (1 + cfg.grid**2, d)),
      "norm.scale": c.same("layernorm.weight"),
      "norm.bias": c.same("layernorm.bias"),
  }
  for i in range(cfg.num_hidden_layers):
    t, n = f"encoder.layer.{i}.", f"blocks.{i}."
    qkv = [f"{t}attention.attention.{x}" for x in ("query", "key", "value")]
    table |= {
        n + "norm1.scale": c.same(t + "norm1.weight"),
        n + "norm1.bias": c.same(t + "norm1.bias"),
        n + "attn.qkv.kernel": c.cat_linear(*[k + ".weight" for k in qkv]),
        n + "attn.proj.kernel": c.linear(t + "attention.output.dense.weight"),
        n + "attn.proj.bias": c.same(t + "attention.output.dense.bias"),
        n + "ls1.lambda1": c.same(t + "layer_scale1.lambda1"),
        n + "norm2.scale": c.same(t + "norm2.weight"),
        n + "norm2.bias": c.same(t + "norm2.bias"),
        n + "ls2.lambda1": c.same(t + "layer_scale2.lambda1"),
    }
    if cfg.qkv_bias:
      table[n + "attn.qkv.bias"] = c.cat_bias(*[k + ".bias" for k in qkv],
                                              sizes=(d, d, d))
    # Hub SwiGLU checkpoints keep gate and up fused in `weights_in`, gate first.
    fc1, fc2 = (("weights_in", "weights_out") if cfg.use_swiglu_ffn
                else ("fc1", "fc2"))
    into, out = (("gate_up", "down") if cfg.use_swiglu_ffn
                 else ("fc1", "fc2"))
    table |= {
        f"{n}mlp.{into}.kernel": c.linear(f"{t}mlp.{fc1}.weight"),
        f"{n}mlp.{into}.bias": c.same(f"{t}mlp.{fc1}.bias"),
        f"{n}mlp.{out}.kernel": c.linear(f"{t}mlp.{fc2}.weight"),
        f"{n}mlp.{out}.bias": c.same(f"{t}mlp.{fc2}.bias"),
    }
  return c.apply_table(weights, table, c.param_shapes(Model, cfg),
                       unused=(r"embeddings\.mask_token",))


# contract.ModelModule's hooks this family does not have.
LOAD_OPTIONS: tuple[str, ...] = ()
FRAMES_VIEW = ""
XLA_PROFILE = xla_options.DEFAULT
load_options = None
config_from_pt = None
params_from_pt = None
load_checkpoint = None
