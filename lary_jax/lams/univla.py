"""UniVLA's task-centric latent action model (stage 2) in Flax NNX.

Upstream: LARYBench `get_latent_action/models/univla/genie/modules/lam.py`
(`ControllableDINOLatentActionModel`, built by `dynamics.py` with model_dim
768, latent_dim 128, 16 codes, patch 14, 12 blocks, 12 heads). For a frame
pair the LAM

1. normalises the [0, 1] frames with ImageNet mean/std and encodes each with
   DINOv2 ViT-B/14 with 4 registers (torch hub `dinov2_vitb14_reg`), keeping
   the final-LayerNorm patch tokens;
2. puts 4 learned "controllable" tokens, then 4 "uncontrollable" ones, in
   front of each frame's tokens and runs a spatio-temporal transformer
   (LayerNorm -> Linear -> LayerNorm, sinusoidal position over each frame's
   tokens, blocks of spatial attention, causal temporal attention, GELU MLP);
3. projects frame 1's 4 controllable tokens to `latent_dim` and quantises
   each to its nearest code of `vq_action`.

The latent LARY extracts is that quantised output `z_q` ([B, 4, latent_dim],
`vq_encode(...)["z_q"].squeeze(1)` in `get_latent_action`); `out` also holds
the pre-quantisation tokens and the code indices. The uncontrollable branch,
the decoder and DINOv2's mask token do not reach `z_q`, so their checkpoint
tensors are read and dropped.

DINOv2 is our `encoders.dinov2` port (its patch embedding, blocks and final
norm) plus the register tokens, inserted after the position embedding as the
original code does. The hub model resizes its 37 x 37 position table with
*antialiased* bicubic interpolation (`interpolate_antialias=True`, no
offset), unlike transformers' Dinov2Model; `aa_bicubic_matrix` is that
resize.

Checkpoints: UniVLA's Lightning `.ckpt` (`{"state_dict": {"lam.<key>": ...}}`,
`lam.` stripped as upstream strips it), read without torch by
`torch_checkpoint`; non-tensor objects Lightning pickles beside the weights
(hyper-parameters) are read as inert placeholders, never run.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lary_jax import torch_checkpoint
from lary_jax import xla_options
from lary_jax.encoders import config_dict
from lary_jax.encoders import convert
from lary_jax.encoders import dinov2
from lary_jax.errors import LaryError
from lary_jax.lams import vector_quantizer
from lary_jax.nn import vit_layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Config(config_dict.DictConfig):
  """UniVLA LAM; LAM names follow upstream's constructor.

  `num_codes` latent tokens per pair (upstream fixes 4); `num_latents` codes
  in the task-centric codebook `vq_action`; `dino` the frozen hub ViT whose
  patch tokens the LAM reads, with `dino_registers` register tokens.
  """

  model_dim: int = 768
  latent_dim: int = 128
  num_latents: int = 16
  num_codes: int = 4
  enc_blocks: int = 12
  num_heads: int = 12
  dino: dinov2.Config = dataclasses.field(
      default_factory=dinov2.Config.vitb14)  # position table for 518 px
  dino_registers: int = 4

  @classmethod
  def univla(cls, **kw) -> Config:
    """LARY's UniVLA LAM (`lam-stage-2.ckpt`)."""
    return cls(**kw)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Config:
    """`to_dict`'s inverse; also reads the flat `dino_*` fields that configs
    stored by earlier versions (converted checkpoints) hold instead of
    `dino`."""
    d = dict(d)
    flat = {ours: d.pop(old) for old, ours in _FLAT_DINO.items() if old in d}
    if flat and "dino" in d:
      raise LaryError("univla config: both `dino` and the flat dino_* fields "
                      "of earlier versions")
    dino = dataclasses.asdict(cls().dino) | d.pop("dino", flat)
    return super().from_dict({**d, "dino": dinov2.Config.from_dict(dino)})


# Config fields of earlier versions -> the `dinov2.Config` fields of `dino`.
_FLAT_DINO = {"dino_dim": "hidden_size", "dino_depth": "num_hidden_layers",
              "dino_heads": "num_attention_heads",
              "dino_mlp_ratio": "mlp_ratio", "dino_patch": "patch_size",
              "dino_image_size": "image_size"}


VARIANTS = {"univla": Config.univla()}


# ------------------------------------------------------------- DINOv2 + regs


def aa_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of PyTorch's antialiased bicubic resize, one axis.

  `F.interpolate(mode="bicubic", antialias=True, align_corners=False)` with
  a target size (PIL's filter): Keys kernel with a = -0.5, stretched by the
  scale when shrinking, taps outside the input dropped and the remaining
  weights renormalised.
  """
  a = -0.5

  def cubic(x):
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))

  scale = n_in / n_out
  support = 2.0 * scale if scale >= 1 else 2.0
  inv = 1.0 / scale if scale >= 1 else 1.0
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), n_in)
    w = cubic((np.arange(lo, hi) - center + 0.5) * inv)
    m[i, lo:hi] = w / w.sum()
  return m.astype(np.float32)


class DinoRegisters(nnx.Module):
  """The hub's DINOv2 with registers: `dinov2.Model` + `register_tokens`."""

  def __init__(self, cfg: dinov2.Config, num_registers: int, *,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    self.vit = dinov2.Model(cfg, dtype=dtype, rngs=rngs)
    self.register_tokens = nnx.Param(vit_layers.trunc_normal(
        rngs.params(), (num_registers, cfg.hidden_size), jnp.float32))

  def position_table(self, gh: int, gw: int) -> jax.Array:
    """[1 + gh * gw, D], antialiased-bicubic resized from the trained grid."""
    table = self.vit.pos_embed[...]
    g = self.cfg.grid
    if (gh, gw) == (g, g):
      return table
    patch = table[1:].reshape(g, g, -1)
    patch = jnp.einsum("hy,yxd,wx->hwd", aa_bicubic_matrix(g, gh), patch,
                       aa_bicubic_matrix(g, gw),
                       precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([table[:1], patch.reshape(gh * gw, -1)])

  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, 3] normalised -> [B, N, D] final-LayerNorm patch tokens."""
    vit = self.vit
    b, h, w, _ = x.shape
    p = self.cfg.patch_size
    patches = vit.patch_embed(x)
    d = patches.shape[-1]
    cls = jnp.broadcast_to(vit.cls_token[...].astype(vit.dtype), (b, 1, d))
    x = jnp.concatenate([cls, patches], axis=1)
    x = x + self.position_table(h // p, w // p).astype(vit.dtype)
    regs = jnp.broadcast_to(self.register_tokens[...].astype(vit.dtype),
                            (b, *self.register_tokens.shape))
    x = jnp.concatenate([x[:, :1], regs, x[:, 1:]], axis=1)
    for block in vit.blocks:
      x = block(x)
    return vit.norm(x)[:, 1 + regs.shape[1]:]


# ------------------------------------------------------------------ the LAM


def sinusoid_table(n: int, dim: int) -> np.ndarray:
  """[n, dim] float32: sin on even channels, cos on odd (`PositionalEncoding`).

  Computed in float32 as upstream does, so that positions in the hundreds
  round the same way.
  """
  pos = np.arange(n, dtype=np.float32)[:, None]
  div = np.exp(np.arange(0, dim, 2, dtype=np.float32)
               * np.float32(-(math.log(10000.0) / dim)))
  table = np.zeros((n, dim), np.float32)
  table[:, 0::2] = np.sin(pos * div)
  table[:, 1::2] = np.cos(pos * div)
  return table


class Attention(vit_layers.Attention):
  """Bias-free q/k/v (fused), biased output; optionally causal."""

  def __call__(self, x: jax.Array, *, causal: bool = False) -> jax.Array:
    if not causal:
      return super().__call__(x)
    b, n, _ = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                        preferred_element_type=jnp.float32)
    logits = logits * self.head_dim**-0.5
    logits = jnp.where(np.tril(np.ones((n, n), bool)), logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return self.proj(jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, -1))


class SpatioTemporalBlock(nnx.Module):
  """Spatial attention within a frame, causal temporal attention per token."""

  def __init__(self, dim: int, num_heads: int, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    ln = lambda: vit_layers.layer_norm(dim, 1e-5, dtype=dtype, rngs=rngs)
    att = lambda: Attention(dim, num_heads, qkv_bias=False, dtype=dtype,
                            rngs=rngs)
    self.norm1, self.spatial_attn = ln(), att()
    self.norm2, self.temporal_attn = ln(), att()
    self.norm3 = ln()
    self.ffn = vit_layers.Mlp(dim, 4 * dim, act="gelu", dtype=dtype,
                              rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, T, S, E] -> [B, T, S, E]."""
    b, t, s, e = x.shape
    y = self.spatial_attn(self.norm1(x.reshape(b * t, s, e)))
    x = x + y.reshape(b, t, s, e)
    xt = x.transpose(0, 2, 1, 3).reshape(b * s, t, e)
    y = self.temporal_attn(self.norm2(xt), causal=True)
    x = x + y.reshape(b, s, t, e).transpose(0, 2, 1, 3)
    return x + self.ffn(self.norm3(x))


class SpatioTemporalEncoder(nnx.Module):
  """`SpatioTemporalTransformer(to_out=False)`: ffn, position, blocks."""

  def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, *,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.ffn = nnx.List([
        vit_layers.layer_norm(in_dim, 1e-5, dtype=dtype, rngs=rngs),
        vit_layers.linear(in_dim, dim, dtype=dtype, rngs=rngs),
        vit_layers.layer_norm(dim, 1e-5, dtype=dtype, rngs=rngs)])
    self.transformer_blocks = nnx.List([
        SpatioTemporalBlock(dim, num_heads, dtype=dtype, rngs=rngs)
        for _ in range(depth)])

  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, T, S, in_dim] -> [B, T, S, dim]."""
    for layer in self.ffn:
      x = layer(x)
    x = x + sinusoid_table(x.shape[2], x.shape[3]).astype(x.dtype)
    for block in self.transformer_blocks:
      x = block(x)
    return x


class Codebook(nnx.Module):
  """Nearest-code quantiser (`VectorQuantizer`, inference)."""

  def __init__(self, num: int, dim: int, *, rngs: nnx.Rngs):
    self.codebook = nnx.Param(jax.random.uniform(
        rngs.params(), (num, dim), jnp.float32, -1.0 / num, 1.0 / num))

  def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[..., dim] -> (z_q [..., dim], indices [...] int32)."""
    return vector_quantizer.quantize(z, self.codebook[...])


class Model(nnx.Module):
  """UniVLA LAM, encoder side: frame pair -> quantised latent action tokens."""

  def __init__(self, cfg: Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
    dino = cfg.dino
    for width, heads, name in (
        (cfg.model_dim, cfg.num_heads, "num_heads"),
        (dino.hidden_size, dino.num_attention_heads, "dino_heads")):
      if width % heads:
        raise LaryError(f"univla: width {width} is not divisible by "
                        f"{name}={heads}; set the checkpoint's head count "
                        f"(load option {name}=N)")
    self.cfg = cfg
    self.dino_encoder = DinoRegisters(dino, cfg.dino_registers, dtype=dtype,
                                      rngs=rngs)
    shape = (cfg.num_codes, dino.hidden_size)
    self.action_latent = nnx.Param(jax.random.uniform(
        rngs.params(), shape, jnp.float32, -1.0, 1.0))
    self.action_latent_controllable = nnx.Param(jax.random.uniform(
        rngs.params(), shape, jnp.float32, -1.0, 1.0))
    self.encoder = SpatioTemporalEncoder(dino.hidden_size, cfg.model_dim,
                                         cfg.enc_blocks, cfg.num_heads,
                                         dtype=dtype, rngs=rngs)
    self.to_codebook = vit_layers.linear(cfg.model_dim, cfg.latent_dim,
                                         dtype=dtype, rngs=rngs)
    self.vq_action = Codebook(cfg.num_latents, cfg.latent_dim, rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encodes frame pairs.

    Args:
      x: [B, 2, H, W, 3], already `preprocess`ed (ImageNet mean/std).

    Returns:
      (latent [B, num_codes, latent_dim] = upstream's z_q, named
      intermediates: "pre_quant" (same shape), "indices" [B, num_codes],
      "dino" [B, 2, N, dino.hidden_size]).
    """
    b, t = x.shape[:2]
    if t != 2:  # upstream hard-codes T = 2 when it folds frames back
      raise LaryError(f"univla encodes frame pairs [B, 2, H, W, 3], got "
                      f"{x.shape}")
    feats = self.dino_encoder(x.reshape(b * t, *x.shape[2:]))
    feats = feats.reshape(b, t, *feats.shape[1:])
    c = self.cfg.num_codes

    def pad(p):
      return jnp.broadcast_to(p[...].astype(feats.dtype),
                              (b, t, c, feats.shape[-1]))

    tokens = jnp.concatenate([pad(self.action_latent_controllable),
                              pad(self.action_latent), feats], axis=2)
    z = self.encoder(tokens)
    pre = self.to_codebook(z[:, 1, :c])  # frame 1's controllable tokens
    latent, idx = self.vq_action(pre)
    return latent, {"pre_quant": pre, "indices": idx, "dino": feats}


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 or [0, 1] frames -> ImageNet-normalised float32 (`dino_transform`)."""
  x = vit_layers.to_unit_float(images)
  return (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(
      IMAGENET_STD, np.float32)


def select_tokens(tokens: jax.Array, out: dict[str, jax.Array]) -> jax.Array:
  """The quantised latent: [B, num_codes, latent_dim]."""
  del out
  return tokens


# --------------------------------------------------------------- conversion

# Tensors that never reach the extracted latent: the uncontrollable branch,
# the decoder side and DINOv2's mask token.
_UNUSED = (r"to_codebook_uncontrol\..*", r"vq\.codebook\.weight",
           r"patch_up\..*", r"action_up\..*", r"action_up_uncontrol\..*",
           r"decoder\..*", r"dino_encoder\.mask_token")


def config_from_pt(weights: dict[str, np.ndarray], *, num_heads: int = 12,
                   dino_heads: int | None = None) -> Config:
  """Config read off a state dict's shapes.

  Head counts are not in the weights: the LAM's defaults to upstream's 12,
  DINOv2's to width / 64 (ViT-S 6, B 12, L 16). Other checkpoints set them
  here or with the load options (`LOAD_OPTIONS`); conversion itself does not
  depend on them.
  """
  def get(key):
    if key not in weights:
      raise LaryError(f"UniVLA checkpoint has no key {key!r}")
    return weights[key].shape

  def count(prefix):
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in weights):
      n += 1
    return n

  latent_dim, model_dim = get("to_codebook.weight")
  dino_dim, _, patch, _ = get("dino_encoder.patch_embed.proj.weight")
  grid = math.isqrt(get("dino_encoder.pos_embed")[1] - 1)
  fc1 = get("dino_encoder.blocks.0.mlp.fc1.weight")[0]
  return Config(
      model_dim=model_dim, latent_dim=latent_dim,
      num_latents=get("vq_action.codebook.weight")[0],
      num_codes=get("action_latent")[2],
      enc_blocks=count("encoder.transformer_blocks."), num_heads=num_heads,
      dino=dinov2.Config(
          hidden_size=dino_dim,
          num_hidden_layers=count("dino_encoder.blocks."),
          num_attention_heads=dino_heads or max(1, dino_dim // 64),
          mlp_ratio=fc1 / dino_dim, patch_size=patch, image_size=grid * patch),
      dino_registers=get("dino_encoder.register_tokens")[1])


def params_from_torch(weights: dict[str, np.ndarray], cfg: Config
                      ) -> dict[str, np.ndarray]:
  """NNX parameters from the LAM's state dict (`lam.` prefix stripped)."""
  c = convert
  dd, g = cfg.dino.hidden_size, cfg.dino.grid
  s, n = "dino_encoder.", "dino_encoder.vit."
  table = {
      n + "patch_embed.kernel": c.conv(s + "patch_embed.proj.weight"),
      n + "patch_embed.bias": c.same(s + "patch_embed.proj.bias"),
      n + "cls_token": c.reshape(s + "cls_token", (dd,)),
      n + "pos_embed": c.reshape(s + "pos_embed", (1 + g * g, dd)),
      s + "register_tokens": c.reshape(s + "register_tokens",
                                       (cfg.dino_registers, dd)),
      n + "norm.scale": c.same(s + "norm.weight"),
      n + "norm.bias": c.same(s + "norm.bias"),
      "action_latent": c.reshape("action_latent", (cfg.num_codes, dd)),
      "action_latent_controllable": c.reshape(
          "action_latent_controllable", (cfg.num_codes, dd)),
      "to_codebook.kernel": c.linear("to_codebook.weight"),
      "to_codebook.bias": c.same("to_codebook.bias"),
      "vq_action.codebook": c.same("vq_action.codebook.weight"),
  }
  for i in range(cfg.dino.num_hidden_layers):
    t, m = f"{s}blocks.{i}.", f"{n}blocks.{i}."
    for norm in ("norm1", "norm2"):
      table[f"{m}{norm}.scale"] = c.same(f"{t}{norm}.weight")
      table[f"{m}{norm}.bias"] = c.same(f"{t}{norm}.bias")
    for lin in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
      table[f"{m}{lin}.kernel"] = c.linear(f"{t}{lin}.weight")
      table[f"{m}{lin}.bias"] = c.same(f"{t}{lin}.bias")
    table[m + "ls1.lambda1"] = c.same(t + "ls1.gamma")
    table[m + "ls2.lambda1"] = c.same(t + "ls2.gamma")
  for j in (0, 2):  # ffn = LayerNorm, Linear, LayerNorm
    table[f"encoder.ffn.{j}.scale"] = c.same(f"encoder.ffn.{j}.weight")
    table[f"encoder.ffn.{j}.bias"] = c.same(f"encoder.ffn.{j}.bias")
  table["encoder.ffn.1.kernel"] = c.linear("encoder.ffn.1.weight")
  table["encoder.ffn.1.bias"] = c.same("encoder.ffn.1.bias")
  for i in range(cfg.enc_blocks):
    t = m = f"encoder.transformer_blocks.{i}."
    for att in ("spatial_attn", "temporal_attn"):
      table[f"{m}{att}.qkv.kernel"] = c.cat_linear(
          *[f"{t}{att}.to_{x}.weight" for x in "qkv"])
      table[f"{m}{att}.proj.kernel"] = c.linear(f"{t}{att}.to_out.0.weight")
      table[f"{m}{att}.proj.bias"] = c.same(f"{t}{att}.to_out.0.bias")
    for norm in ("norm1", "norm2", "norm3"):
      table[f"{m}{norm}.scale"] = c.same(f"{t}{norm}.weight")
      table[f"{m}{norm}.bias"] = c.same(f"{t}{norm}.bias")
    for ours, theirs in (("fc1", "0"), ("fc2", "3")):
      table[f"{m}ffn.{ours}.kernel"] = c.linear(f"{t}ffn.{theirs}.weight")
      table[f"{m}ffn.{ours}.bias"] = c.same(f"{t}ffn.{theirs}.bias")
  # Parameter shapes do not depend on the head counts (not in the weights);
  # measure them with one head so that any width converts.
  shapes = c.param_shapes(Model, with_heads(cfg, num_heads=1, dino_heads=1))
  return c.apply_table(weights, table, shapes, unused=_UNUSED)


params_from_pt = params_from_torch


def read_ckpt(path: str) -> dict[str, np.ndarray]:
  """UniVLA's `.ckpt`: the LAM state dict as numpy, `lam.` stripped.

  Read without torch (`torch_checkpoint`); the objects that Lightning
  pickles beside the weights (hyper-parameters, callbacks) load as inert
  placeholders, whose code never runs, instead of failing the load.
  """
  obj = torch_checkpoint.load(path, opaque=True)
  state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
  if not isinstance(state, dict):
    raise LaryError(f"{path}: expected a Lightning checkpoint with a "
                    "'state_dict' (or a bare state dict)")
  out = {k.replace("lam.", ""): v.astype(np.float32)
         for k, v in state.items() if isinstance(v, np.ndarray)}
  if not out:
    raise LaryError(f"{path}: 'state_dict' holds no tensors")
  return out


def load_checkpoint(path: str, *, variant: str | None = None,
                    **config_overrides: Any
                    ) -> tuple[Config, dict[str, np.ndarray]]:
  """(Config, NNX params) from UniVLA's `.ckpt` (or a `.pt/.pth` state dict).

  The config is read off the weights (`variant` must be None);
  `config_overrides` go to `config_from_pt` (`num_heads`, `dino_heads`).
  """
  if variant is not None:
    raise LaryError(f"univla takes its config from the checkpoint, not "
                    f"variant={variant!r}")
  if not (os.path.isfile(path)
          and path.endswith((".ckpt", ".pt", ".pth"))):
    raise LaryError(f"{path}: expected UniVLA's .ckpt file (e.g. "
                    "lam-stage-2.ckpt)")
  weights = read_ckpt(path)
  cfg = config_from_pt(weights, **config_overrides)
  return cfg, params_from_torch(weights, cfg)


# Head counts are not in the weights; `encoders.load("univla", path,
# num_heads=...)` sets them when a checkpoint differs from upstream's 12.
LOAD_OPTIONS = ("num_heads", "dino_heads")


def with_heads(cfg: Config, *, num_heads: int | None = None,
               dino_heads: int | None = None) -> Config:
  """`cfg` with the LAM's and DINOv2's head counts set (None: kept)."""
  dino = cfg.dino
  if dino_heads is not None:
    dino = dataclasses.replace(dino, num_attention_heads=dino_heads)
  return dataclasses.replace(
      cfg, dino=dino, num_heads=cfg.num_heads if num_heads is None
      else num_heads)


def load_options(cfg: Config, **options: Any) -> Config:
  """`cfg` with load-time options (`LOAD_OPTIONS`) set."""
  out = {}
  for k, v in options.items():
    try:
      out[k] = int(v)
    except (TypeError, ValueError):
      raise LaryError(f"univla option {k}={v!r}: expected an integer"
                      ) from None
  return with_heads(cfg, **out)


# contract.ModelModule's hooks this family does not have.
FRAMES_VIEW = ""
XLA_PROFILE = xla_options.DEFAULT
config_from_hf = None
