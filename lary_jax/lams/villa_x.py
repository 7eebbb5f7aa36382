"""villa-X's latent action model (`IgorModel`, inverse dynamics side) in NNX.

Upstream: LARYBench `get_latent_action/models/villa_x/lam/` (`model.py`,
`st.py`, `transformer.py`, `vq.py`), loaded with `IgorModel.from_pretrained`
and run through `idm(clips, return_dict=True)["vq_tokens"]` (`lary/
extract.py`). For frames [B, T, H, W, 3] the encoder

1. normalises the uint8 frames with ImageNet mean/std, embeds 14-pixel
   patches and adds a fixed 2-D sin-cos table;
2. runs spatio-temporal blocks (adaLN-style shift/scale/gate from a learned
   table, spatial attention per frame, causal temporal attention per patch
   with a 1-D sin-cos time table added to its input in the first block only,
   tanh-GELU MLP; q/k LayerNorm per head), then an RMSNorm;
3. averages each pair of consecutive frames' tokens and pools them with an
   attention block of `num_learned_tokens` learned queries (MAP: RMSNorm,
   SwiGLU) into [n, action_latent_dim] per pair;
4. quantises each of the n tokens to its nearest code (`VectorQuantizer2`).

LARY stores the quantised tokens (`vq_tokens`): [B, n, d] for an image pair,
[B, 8, n, d] for a 9-frame clip. For a clip longer than `d_t` upstream slides
a `d_t`-frame window: the first window gives its `d_t - 1` pair latents, each
later window its last one; because temporal attention is causal, a pair's
latent depends on the frames before it in its window. `__call__` reproduces
both (a pair is the T = 2 case), which is why the registry lists villa_x as
a clip ("video") encoder: extraction hands it LARY's 9-frame clips whole
rather than as separate pairs. Upstream pads short clips along the image
height, not along time (`F.pad(clips, (0, 0, 0, d_t - T))`); the patch
embedding drops those rows when `d_t - T` < patch (224 px, patch 14, d_t 8),
so a short clip here is simply encoded as it is.

Checkpoints: the `from_pretrained` folder, `model_config.json` (`{"architecture":
"IgorModel", "config": {...}}`) and `model.safetensors`, read with
`safetensors.numpy` (no torch). The decoder's tensors are read and dropped.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lary_jax import xla_options
from lary_jax.encoders import config_dict
from lary_jax.encoders import convert
from lary_jax.errors import LaryError
from lary_jax.lams import vector_quantizer
from lary_jax.nn import vit_layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Config(config_dict.DictConfig):
  """The encoder's fields of upstream's `IgorConfig` (same names, defaults)."""

  resolution: int = 224
  patch_size: int = 14
  in_channels: int = 3
  d_t: int = 8
  mlp_ratio: float = 4.0
  encoder_depth: int = 12
  encoder_embed_dim: int = 768
  encoder_n_heads: int = 8
  action_latent_dim: int = 128
  st_use_qk_norm: bool = True
  num_learned_tokens: int = 4
  map_heads: int = 24
  n_codes: int = 32

  @property
  def grid(self) -> int:
    return self.resolution // self.patch_size


VARIANTS = {"igor": Config()}


class RMSNorm(nnx.Module):
  """x / max(|x| / sqrt(D), eps) * g (upstream's RMSNorm, eps 1e-8)."""

  def __init__(self, dim: int, eps: float = 1e-8):
    self.eps = eps
    self.g = nnx.Param(jnp.ones((dim,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    rms = jnp.sqrt((xf * xf).sum(-1, keepdims=True)) * x.shape[-1]**-0.5
    return (xf / jnp.maximum(rms, self.eps) * self.g[...]).astype(x.dtype)


def _sdpa(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False
          ) -> jax.Array:
  """Softmax attention on [B, N, H, Dh] (k, v [B, M, H, Dh]), fp32 logits."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                      preferred_element_type=jnp.float32) * q.shape[-1]**-0.5
  if causal:
    n, m = q.shape[1], k.shape[1]
    logits = jnp.where(np.tril(np.ones((n, m), bool)), logits, -jnp.inf)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


class Attention(nnx.Module):
  """`AttentionWithMask` without xformers: fused qkv, optional q/k LayerNorm."""

  def __init__(self, dim: int, num_heads: int, *, qk_norm: bool,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.num_heads, self.head_dim = num_heads, dim // num_heads
    self.qkv = vit_layers.linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
    self.proj = vit_layers.linear(dim, dim, dtype=dtype, rngs=rngs)
    if qk_norm:  # torch LayerNorm(head_dim): eps 1e-5, affine
      self.q_norm = vit_layers.layer_norm(self.head_dim, 1e-5, dtype=dtype,
                                          rngs=rngs)
      self.k_norm = vit_layers.layer_norm(self.head_dim, 1e-5, dtype=dtype,
                                          rngs=rngs)
    else:
      self.q_norm = self.k_norm = None

  def __call__(self, x: jax.Array, *, causal: bool = False) -> jax.Array:
    b, n, _ = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    if causal:
      out = _sdpa(q, k, v, causal=True)
    else:
      out = vit_layers.attention(q, k, v)
    return self.proj(out.reshape(b, n, -1))


class STBlock(nnx.Module):
  """Open-Sora style spatio-temporal block (`st.STBlock`, no drop path)."""

  def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float,
               qk_norm: bool, dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    # LayerNorms without affine parameters, eps 1e-6.
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, use_scale=False,
                               use_bias=False, dtype=dtype, rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, use_scale=False,
                               use_bias=False, dtype=dtype, rngs=rngs)
    self.attn = Attention(dim, num_heads, qk_norm=qk_norm, dtype=dtype,
                          rngs=rngs)
    self.attn_temp = Attention(dim, num_heads, qk_norm=qk_norm, dtype=dtype,
                               rngs=rngs)
    self.mlp = vit_layers.Mlp(dim, int(dim * mlp_ratio),
                              act="gelu_pytorch_tanh", dtype=dtype, rngs=rngs)
    self.scale_shift_table = nnx.Param(
        jax.random.normal(rngs.params(), (6, dim), jnp.float32) * dim**-0.5)

  def __call__(self, x: jax.Array, t: int, tpe: jax.Array | None
               ) -> jax.Array:
    """[B * T, N, D] (frames of a clip consecutive) -> same shape."""
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
        self.scale_shift_table[...].astype(self.dtype))
    x = x + gate_msa * self.attn(self.norm1(x) * (1 + scale_msa) + shift_msa)
    bt, n, d = x.shape
    b = bt // t
    xt = x.reshape(b, t, n, d).transpose(0, 2, 1, 3)  # [B, N, T, D]
    if tpe is not None:  # the time table feeds the attention, not the stream
      xt = xt + tpe[:t].astype(self.dtype)
    y = self.attn_temp(xt.reshape(b * n, t, d), causal=True)
    x = x + gate_msa * y.reshape(b, n, t, d).transpose(0, 2, 1, 3).reshape(
        bt, n, d)
    return x + gate_mlp * self.mlp(
        self.norm2(x) * (1 + scale_mlp) + shift_mlp)


class CrossAttention(nnx.Module):
  """`FlashAttention` without q/k norm: q from the queries, fused kv."""

  def __init__(self, dim: int, num_heads: int, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.q = vit_layers.linear(dim, dim, dtype=dtype, rngs=rngs)
    self.kv = vit_layers.linear(dim, 2 * dim, dtype=dtype, rngs=rngs)
    self.proj = vit_layers.linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, q_in: jax.Array, kv_in: jax.Array) -> jax.Array:
    b, n, d = q_in.shape
    h = self.num_heads
    q = self.q(q_in).reshape(b, n, h, d // h)
    kv = self.kv(kv_in).reshape(b, kv_in.shape[1], 2, h, d // h)
    return self.proj(_sdpa(q, kv[:, :, 0], kv[:, :, 1]).reshape(b, n, d))


class MAPBlock(nnx.Module):
  """Multi-head attention pooling with learned queries (post-norm, SwiGLU)."""

  def __init__(self, n_latents: int, dim: int, num_heads: int,
               out_dim: int, *, mlp_ratio: float, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.dtype = dtype
    self.pre_projection = vit_layers.linear(dim, dim, dtype=dtype, rngs=rngs)
    self.latents = nnx.Param(vit_layers.trunc_normal(
        rngs.params(), (n_latents, dim), jnp.float32))
    self.attn_norm = RMSNorm(dim)
    self.attn = CrossAttention(dim, num_heads, dtype=dtype, rngs=rngs)
    self.mlp_norm = RMSNorm(dim)
    # SwishGLU; `gate_up` holds the gate's columns first (see the converter).
    self.mlp = vit_layers.GatedMlp(dim, int(mlp_ratio * dim), act="silu",
                                   dtype=dtype, rngs=rngs)
    self.final_proj = vit_layers.linear(dim, out_dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, N, D] -> [B, n_latents, out_dim]."""
    lat = jnp.broadcast_to(self.latents[...].astype(self.dtype),
                           (x.shape[0], *self.latents.shape))
    lat = self.attn_norm(lat + self.attn(lat, self.pre_projection(x)))
    lat = self.mlp_norm(lat + self.mlp(lat))
    return self.final_proj(lat)


class Encoder(nnx.Module):
  """`IgorEncoder.forward` for clips of at most `d_t` frames."""

  def __init__(self, cfg: Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
    d, p = cfg.encoder_embed_dim, cfg.patch_size
    self.dtype = dtype
    self.embed = vit_layers.PatchEmbed((p, p), cfg.in_channels, d,
                                       dtype=dtype, rngs=rngs)
    # Fixed sin-cos tables, stored in (and read from) the checkpoint.
    self.pe_spatial = nnx.Param(jnp.zeros((cfg.grid**2, d), jnp.float32))
    self.pe_temporal = nnx.Param(jnp.zeros((cfg.d_t, d), jnp.float32))
    self.layers = nnx.List([
        STBlock(d, cfg.encoder_n_heads, mlp_ratio=cfg.mlp_ratio,
                qk_norm=cfg.st_use_qk_norm, dtype=dtype, rngs=rngs)
        for _ in range(cfg.encoder_depth)])
    self.norm = RMSNorm(d)
    self.map_block = MAPBlock(cfg.num_learned_tokens, d, cfg.map_heads,
                              cfg.action_latent_dim, mlp_ratio=cfg.mlp_ratio,
                              dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, T, H, W, C] normalised -> [B, T - 1, n, d] pre-quantisation."""
    b, t = x.shape[:2]
    x = self.embed(x.reshape(b * t, *x.shape[2:]))  # [B * T, N, D]
    x = x + self.pe_spatial[...].astype(self.dtype)
    for i, layer in enumerate(self.layers):
      x = layer(x, t, self.pe_temporal[...] if i == 0 else None)
    x = self.norm(x)
    x = x.reshape(b, t, *x.shape[1:])
    pooled = (x[:, 1:] + x[:, :-1]) / 2.0  # each consecutive pair
    out = self.map_block(pooled.reshape(b * (t - 1), *x.shape[2:]))
    return out.reshape(b, t - 1, *out.shape[1:])


class Codebook(nnx.Module):
  """Nearest-code quantiser (`VectorQuantizer2`, inference)."""

  def __init__(self, num: int, dim: int, *, rngs: nnx.Rngs):
    self.embedding = nnx.Param(jax.random.uniform(
        rngs.params(), (num, dim), jnp.float32, -1.0 / num, 1.0 / num))

  def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[..., dim] -> (z_q [..., dim], indices [...] int32)."""
    return vector_quantizer.quantize(z, self.embedding[...])


class Model(nnx.Module):
  """villa-X LAM encoder + quantiser: frames -> latent action per pair."""

  def __init__(self, cfg: Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder = Encoder(cfg, dtype=dtype, rngs=rngs)
    self.vq = Codebook(cfg.n_codes, cfg.action_latent_dim, rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encodes clips as upstream's `idm` does.

    Args:
      x: [B, T, H, W, 3], T >= 2, already `preprocess`ed; resized to
        `cfg.resolution` if it is not at it (LARY's 224 px frames are).

    Returns:
      (quantised latents [B, T - 1, n, d], named intermediates:
      "pre_quant" (same shape), "indices" [B, T - 1, n]).
    """
    b, t, h, w, c = x.shape
    r, d_t = self.cfg.resolution, self.cfg.d_t
    if t < 2:
      raise LaryError(f"villa_x encodes clips [B, T >= 2, H, W, 3], got "
                      f"{x.shape}")
    if (h, w) != (r, r):
      # Upstream's `transforms.Resize(resolution)` (bilinear, antialiased)
      # on uint8; LARY feeds 224 px to a 224 px model, where it is the
      # identity. Here it runs on the normalised float frames, no rounding.
      x = jax.image.resize(x, (b, t, r, r, c), "linear", antialias=True)
    if t <= d_t:
      pre = self.encoder(x)
    else:  # sliding d_t-frame windows; later windows add their last pair
      nw = t - d_t + 1
      windows = jnp.stack([x[:, i:i + d_t] for i in range(nw)])
      pre = self.encoder(windows.reshape(nw * b, *windows.shape[2:]))
      pre = pre.reshape(nw, b, *pre.shape[1:])  # [nw, B, d_t - 1, n, d]
      pre = jnp.concatenate([pre[0], pre[1:, :, -1].transpose(1, 0, 2, 3)],
                            axis=1)
    latent, idx = self.vq(pre)
    return latent, {"pre_quant": pre, "indices": idx}


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 (or [0, 1] float) frames -> ImageNet mean/std float32."""
  x = vit_layers.to_unit_float(images)
  return (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(
      IMAGENET_STD, np.float32)


def select_tokens(tokens: jax.Array, out: dict[str, jax.Array]) -> jax.Array:
  """[B, n, d] for a pair (LARY's image mode), else [B, T - 1, n, d]."""
  del out
  return tokens[:, 0] if tokens.shape[1] == 1 else tokens


# --------------------------------------------------------------- conversion

_FIELDS = tuple(f.name for f in dataclasses.fields(Config))


def config_from_json(model_config: dict[str, Any]) -> Config:
  """Config from `model_config.json` (upstream's `ModelConfig`)."""
  arch = model_config.get("architecture")
  if arch != "IgorModel":
    raise LaryError(f"model_config.json: architecture={arch!r}, expected "
                    "'IgorModel' (villa-X's latent action model)")
  fields = model_config.get("config")
  if not isinstance(fields, dict):
    raise LaryError("model_config.json: no 'config' object")
  # Decoder and augmentation fields are not the encoder's; `use_xformers`
  # picks an attention kernel, not a different function.
  return Config(**{k: v for k, v in fields.items() if k in _FIELDS})


def _swiglu_kernel(key: str) -> convert.Rule:
  # SwishGLU computes first_half * silu(second_half); GatedMlp wants the
  # gate's columns first.
  return convert.Rule((key,), lambda w: np.concatenate(
      np.split(w, 2, axis=0)[::-1], axis=0).T)


def _swiglu_bias(key: str) -> convert.Rule:
  return convert.Rule((key,), lambda b: np.concatenate(
      np.split(b, 2)[::-1]))


def params_from_torch(weights: dict[str, np.ndarray], cfg: Config
                      ) -> dict[str, np.ndarray]:
  """NNX parameters from `model.safetensors` (IgorModel's state dict)."""
  c = convert
  d = cfg.encoder_embed_dim

  def lin(table, ours, theirs):
    table[ours + ".kernel"] = c.linear(theirs + ".weight")
    table[ours + ".bias"] = c.same(theirs + ".bias")

  e = "encoder."
  table = {
      e + "embed.kernel": c.conv(e + "embed.proj.weight"),
      e + "embed.bias": c.same(e + "embed.proj.bias"),
      e + "pe_spatial": c.reshape(e + "pe_spatial", (cfg.grid**2, d)),
      e + "pe_temporal": c.reshape(e + "pe_temporal", (cfg.d_t, d)),
      e + "norm.g": c.same(e + "norm.g"),
      "vq.embedding": c.same("vq.embedding.weight"),
  }
  for i in range(cfg.encoder_depth):
    t = f"{e}layers.{i}."
    table[t + "scale_shift_table"] = c.same(t + "scale_shift_table")
    for att in ("attn", "attn_temp"):
      lin(table, f"{t}{att}.qkv", f"{t}{att}.qkv")
      lin(table, f"{t}{att}.proj", f"{t}{att}.proj")
      if cfg.st_use_qk_norm:
        for norm in ("q_norm", "k_norm"):
          table[f"{t}{att}.{norm}.scale"] = c.same(f"{t}{att}.{norm}.weight")
          table[f"{t}{att}.{norm}.bias"] = c.same(f"{t}{att}.{norm}.bias")
    lin(table, t + "mlp.fc1", t + "mlp.fc1")
    lin(table, t + "mlp.fc2", t + "mlp.fc2")
  m = e + "map_block."
  table[m + "latents"] = c.same(m + "latents")
  table[m + "attn_norm.g"] = c.same(m + "attn_norm.g")
  table[m + "mlp_norm.g"] = c.same(m + "mlp_norm.g")
  for name in ("pre_projection", "attn.q", "attn.kv", "attn.proj"):
    lin(table, m + name, m + name)
  lin(table, m + "final_proj", m + "final_proj.0")
  table[m + "mlp.gate_up.kernel"] = _swiglu_kernel(m + "mlp.0.project.weight")
  table[m + "mlp.gate_up.bias"] = _swiglu_bias(m + "mlp.0.project.bias")
  lin(table, m + "mlp.down", m + "mlp.1")
  return c.apply_table(weights, table, c.param_shapes(Model, cfg),
                       unused=(r"decoder\..*",))


def load_checkpoint(path: str, *, variant: str | None = None,
                    **overrides: Any
                    ) -> tuple[Config, dict[str, np.ndarray]]:
  """(Config, NNX params) from a `from_pretrained` folder (local files).

  Args:
    path: folder with `model_config.json` and `model.safetensors`.
    variant: must be None (the folder carries its config).
    **overrides: Config fields to replace (none needed for real folders).
  """
  if variant is not None:
    raise LaryError(f"villa_x takes its config from model_config.json, not "
                    f"variant={variant!r}")
  cfg_path = os.path.join(path, "model_config.json")
  weights_path = os.path.join(path, "model.safetensors")
  for f in (cfg_path, weights_path):
    if not os.path.isfile(f):
      raise LaryError(f"{path}: not a villa-X LAM folder (no "
                      f"{os.path.basename(f)}; IgorModel.from_pretrained "
                      "reads model_config.json + model.safetensors)")
  try:
    with open(cfg_path) as f:
      cfg = config_from_json(json.load(f))
  except json.JSONDecodeError as e:
    raise LaryError(f"{cfg_path}: not valid JSON ({e})") from None
  if overrides:
    cfg = dataclasses.replace(cfg, **overrides)
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  try:
    weights = load_file(weights_path)
  except Exception as e:  # safetensors raises its own error types
    raise LaryError(f"{weights_path}: cannot read safetensors ({e})"
                    ) from None
  weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
  return cfg, params_from_torch(weights, cfg)


# contract.ModelModule's hooks this family does not have.
LOAD_OPTIONS: tuple[str, ...] = ()
FRAMES_VIEW = ""
XLA_PROFILE = xla_options.DEFAULT
load_options = None
config_from_hf = None
config_from_pt = None
params_from_pt = None
