"""DINOv3 ViT (transformers `DINOv3ViTModel`) in Flax NNX.

Upstream LARY feeds `2x - 1` images and drops the CLS token and the 4
registers from `last_hidden_state` (after the final LayerNorm): 196 tokens for
a 224 image. Positions are 2-D RoPE on patch tokens only (CLS and registers
unrotated), computed from the input's own grid, so any size that divides by
the patch works without interpolation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
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
  """DINOv3 ViT architecture; names follow HF's `DINOv3ViTConfig`."""

  hidden_size: int = 1024
  num_hidden_layers: int = 24
  num_attention_heads: int = 16
  intermediate_size: int = 4096
  patch_size: int = 16
  num_channels: int = 3
  num_register_tokens: int = 4
  layer_norm_eps: float = 1e-5
  rope_theta: float = 100.0
  query_bias: bool = True
  key_bias: bool = False
  value_bias: bool = True
  proj_bias: bool = True
  mlp_bias: bool = True
  layerscale_value: float = 1.0
  use_gated_mlp: bool = False
  hidden_act: str = "gelu"

  @classmethod
  def vits16(cls, **kw) -> Config:
    return cls(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
               intermediate_size=1536, **kw)

  @classmethod
  def vitb16(cls, **kw) -> Config:
    return cls(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
               intermediate_size=3072, **kw)

  @classmethod
  def vitl16(cls, **kw) -> Config:
    return cls(**kw)

  @classmethod
  def vith16plus(cls, **kw) -> Config:
    return cls(hidden_size=1280, num_hidden_layers=32, num_attention_heads=20,
               intermediate_size=5120, use_gated_mlp=True, hidden_act="silu",
               **kw)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads



VARIANTS = {
    "vits16": Config.vits16(),
    "vitb16": Config.vitb16(),
    "vitl16": Config.vitl16(),
    "vith16plus": Config.vith16plus(),
}


@functools.lru_cache(maxsize=16)
def rope_tables(gh: int, gw: int, head_dim: int, theta: float
                ) -> tuple[np.ndarray, np.ndarray]:
  """(cos, sin), each [gh * gw, head_dim] float32, for a gh x gw patch grid.

  Patch centres are normalised to [-1, 1] per axis; each axis gets a quarter
  of the head's frequencies, laid out (y freqs, x freqs) twice over so that
  `rotate_half` pairs dimension i with i + head_dim / 2.
  """
  inv_freq = 1.0 / theta ** np.arange(0, 1, 4 / head_dim, dtype=np.float32)
  ys = 2 * (np.arange(0.5, gh, dtype=np.float32) / gh) - 1
  xs = 2 * (np.arange(0.5, gw, dtype=np.float32) / gw) - 1
  coords = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
  angles = 2 * math.pi * coords[:, :, None] * inv_freq  # [N, 2, Dh / 4]
  angles = np.tile(angles.reshape(len(coords), -1), 2)  # [N, Dh]
  return np.cos(angles, dtype=np.float32), np.sin(angles, dtype=np.float32)


class Model(nnx.Module):
  """DINOv3 ViT: patch embed, CLS + registers, RoPE blocks, final LN."""

  def __init__(self, cfg: Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    self.dtype = dtype
    d, p = cfg.hidden_size, cfg.patch_size
    self.patch_embed = vit_layers.PatchEmbed((p, p), cfg.num_channels, d,
                                             dtype=dtype, rngs=rngs)
    self.cls_token = vit_layers.learned(rngs, (d,))
    self.register_tokens = vit_layers.learned(rngs,
                                              (cfg.num_register_tokens, d))
    self.blocks = nnx.List([
        vit_layers.Block(
            d, cfg.num_attention_heads, cfg.intermediate_size,
            mlp="gated" if cfg.use_gated_mlp else "mlp", act=cfg.hidden_act,
            qkv_bias=cfg.query_bias or cfg.key_bias or cfg.value_bias,
            out_bias=cfg.proj_bias, mlp_bias=cfg.mlp_bias,
            layer_scale=cfg.layerscale_value, eps=cfg.layer_norm_eps,
            dtype=dtype, rngs=rngs)
        for _ in range(cfg.num_hidden_layers)])
    self.norm = vit_layers.layer_norm(d, cfg.layer_norm_eps, dtype=dtype,
                                      rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encodes normalised images.

    Args:
      x: [B, H, W, C], already `preprocess`ed.

    Returns:
      (tokens [B, 1 + R + N, D] after the final LayerNorm, named
      intermediates: "cls" [B, D], "registers" [B, R, D], "patch_tokens"
      [B, N, D], "pre_norm" [B, 1 + R + N, D]).
    """
    b, h, w, _ = x.shape
    cfg = self.cfg
    p, r = cfg.patch_size, cfg.num_register_tokens
    patches = self.patch_embed(x)  # [B, N, D]
    d = patches.shape[-1]
    prefix = jnp.concatenate([self.cls_token[...][None],
                              self.register_tokens[...]])
    prefix = jnp.broadcast_to(prefix.astype(self.dtype), (b, 1 + r, d))
    x = jnp.concatenate([prefix, patches], axis=1)
    cos, sin = rope_tables(h // p, w // p, cfg.head_dim, cfg.rope_theta)

    def rope(q, k):
      rot = functools.partial(vit_layers.apply_rope, cos=cos, sin=sin,
                              num_prefix=1 + r)
      return rot(q), rot(k)

    for block in self.blocks:
      x = block(x, rope=rope)
    pre_norm = x
    x = self.norm(x)
    return x, {"cls": x[:, 0], "registers": x[:, 1:1 + r],
               "patch_tokens": x[:, 1 + r:], "pre_norm": pre_norm}


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 or [0, 1] float images -> `2x - 1` float32 (upstream's input)."""
  return vit_layers.to_unit_float(images) * 2.0 - 1.0


def select_tokens(tokens: jax.Array, out: dict[str, jax.Array]) -> jax.Array:
  """Upstream's `last_hidden_state[:, 5:]` (CLS + 4 registers dropped)."""
  del tokens
  return out["patch_tokens"]


def config_from_hf(hf: dict[str, Any]) -> Config:
  """Config from a `DINOv3ViTModel` config.json dict."""
  if hf.get("model_type") != "dinov3_vit":
    raise LaryError(f"config.json: model_type={hf.get('model_type')!r}, "
                    "expected 'dinov3_vit' (DINOv3ViTModel)")
  patch = hf.get("patch_size", 16)
  if isinstance(patch, (list, tuple)):
    if len(patch) != 2 or patch[0] != patch[1]:
      raise LaryError(f"dinov3 config: patch_size={patch} is not square")
    patch = patch[0]
  vit_layers.activation(hf.get("hidden_act", "gelu"))
  fields = {f.name for f in dataclasses.fields(Config)} - {"patch_size"}
  return Config(patch_size=int(patch),
                **{k: hf[k] for k in fields if k in hf})


def params_from_torch(weights: dict[str, np.ndarray], cfg: Config
                      ) -> dict[str, np.ndarray]:
  """NNX parameters from a `DINOv3ViTModel` state dict (Hub key names)."""
  # save_pretrained writes `layer.N.`; the in-memory module says `model.layer`.
  weights = {k.removeprefix("model."): v for k, v in weights.items()}
  c = convert
  d, m = cfg.hidden_size, cfg.intermediate_size
  table = {
      "patch_embed.kernel": c.conv("embeddings.patch_embeddings.weight"),
      "patch_embed.bias": c.same("embeddings.patch_embeddings.bias"),
      "cls_token": c.reshape("embeddings.cls_token", (d,)),
      "register_tokens": c.reshape("embeddings.register_tokens",
                                   (cfg.num_register_tokens, d)),
      "norm.scale": c.same("norm.weight"),
      "norm.bias": c.same("norm.bias"),
  }
  for i in range(cfg.num_hidden_layers):
    t, n = f"layer.{i}.", f"blocks.{i}."
    a = t + "attention."
    table |= {
        n + "norm1.scale": c.same(t + "norm1.weight"),
        n + "norm1.bias": c.same(t + "norm1.bias"),
        n + "attn.qkv.kernel": c.cat_linear(
            a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"),
        n + "attn.proj.kernel": c.linear(a + "o_proj.weight"),
        n + "ls1.lambda1": c.same(t + "layer_scale1.lambda1"),
        n + "norm2.scale": c.same(t + "norm2.weight"),
        n + "norm2.bias": c.same(t + "norm2.bias"),
        n + "ls2.lambda1": c.same(t + "layer_scale2.lambda1"),
        n + "mlp.down.kernel" if cfg.use_gated_mlp else n + "mlp.fc2.kernel":
            c.linear(t + "mlp.down_proj.weight"),
    }
    biases = [a + f"{x}_proj.bias" if on else None for x, on in
              (("q", cfg.query_bias), ("k", cfg.key_bias),
               ("v", cfg.value_bias))]
    if any(biases):  # a missing key bias is zeros in the fused qkv bias
      table[n + "attn.qkv.bias"] = c.cat_bias(*biases, sizes=(d, d, d))
    if cfg.proj_bias:
      table[n + "attn.proj.bias"] = c.same(a + "o_proj.bias")
    if cfg.use_gated_mlp:
      table[n + "mlp.gate_up.kernel"] = c.cat_linear(
          t + "mlp.gate_proj.weight", t + "mlp.up_proj.weight")
      if cfg.mlp_bias:
        table[n + "mlp.gate_up.bias"] = c.cat_bias(
            t + "mlp.gate_proj.bias", t + "mlp.up_proj.bias", sizes=(m, m))
        table[n + "mlp.down.bias"] = c.same(t + "mlp.down_proj.bias")
    else:
      table[n + "mlp.fc1.kernel"] = c.linear(t + "mlp.up_proj.weight")
      if cfg.mlp_bias:
        table[n + "mlp.fc1.bias"] = c.same(t + "mlp.up_proj.bias")
        table[n + "mlp.fc2.bias"] = c.same(t + "mlp.down_proj.bias")
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
