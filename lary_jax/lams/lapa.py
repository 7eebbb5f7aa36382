"""LAPA's latent action quantiser (LAQ) in Flax NNX: pixels or frozen features.

Upstream: LARYBench `get_latent_action/models/laq_model/` (LAPA's LAQ and its
DINOv2 / DINOv3 / SigLIP2 feature variants, and LARY's `magvit2` row: the LAQ
on Open-MAGVIT2 latents, 18 wide), built as `dynamics.py` builds them. For
an image pair the LAM embeds both frames (pixels: patches -> LayerNorm ->
Linear -> LayerNorm; features: the frozen backbone's patch tokens as a grid),
runs a spatial then a temporal transformer, quantises the change from frame 0
to frame 1 with NSVQ into `code_seq_len` action tokens, and decodes frame 1
(pixels, or the backbone's tokens) from frame 0's embedding with the action
tokens as cross-attention context.

API (what training and extraction call):

  cfg = lapa.Config.sim_small()            # or .lapa(), .dinov2(), ...
  model = lapa.Model(cfg, rngs=nnx.Rngs(0))
  loss, metrics = model.loss(x, key=key)   # metrics: recon_loss, indices
                                           #   [B, code_seq_len] int32,
                                           #   perplexity, unique_codes
  tokens = model.encode(x, key=key)        # [B, code_seq_len, dim]
  codebook, n = lapa.replace_unused_codes(codebook, usage, key,
                                          num_batches=batch_size)

`x` is the pair: float32 pixels [B, 2, H, W, 3] in [0, 1] for the pixel LAQ
(`cfg.features == ""`), or the backbone's patch tokens [B, 2, N, D] for a
feature variant (N = grid * grid). The codebook lives at
`model.vq.codebooks` (an nnx.Param [K, quant_dim]); count usage per step
with `nsvq.count_usage(usage, metrics["indices"])` and re-seed when
`nsvq.replacement_due(step)` (upstream passes the batch size as
`num_batches`), then reset usage to zeros.

Which latent upstream extracts: `dynamics.get_latent_action` calls the LAQ's
*training* forward with `return_only_codebook_ids=True`, so the stored latent
is NSVQ's noisy training output `project_out(z + |z - c| / |r| r)` (upstream
layout, see nsvq.py), [B, code_seq_len, dim], drawn afresh each call.
`encode(mode="nsvq")` reproduces it given the noise; extraction draws the
noise from a key derived from each example's content (so a result depends
neither on the batch it was in nor on the device count). `mode="quantized"`
(upstream's `inference`: the nearest codes) and `mode="continuous"` (before
quantisation) are deterministic alternatives.
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

from lary_jax import hub
from lary_jax.encoders import contract
from lary_jax.encoders import convert
from lary_jax.encoders import families
from lary_jax.errors import LaryError
from lary_jax.lams import embedded
from lary_jax.lams import nsvq
from lary_jax.nn import laq_layers

FEATURES = ("", "dinov2", "dinov3", "siglip2", "magvit2")
LATENTS = ("nsvq", "quantized", "continuous")


@dataclasses.dataclass(frozen=True)
class Config:
  """LAQ hyper-parameters; names follow upstream's constructor.

  `features` "" is the pixel LAQ; otherwise the backbone whose patch tokens
  the LAM reads (`image_size // patch_size` tokens a side, `dim` wide).
  (`to_dict`/`from_dict` as encoders.config_dict.DictConfig.)
  """

  dim: int = 1024
  quant_dim: int = 32
  codebook_size: int = 8
  image_size: int = 224
  patch_size: int = 32
  spatial_depth: int = 8
  temporal_depth: int = 8
  dim_head: int = 64
  heads: int = 16
  channels: int = 3
  code_seq_len: int = 4
  ff_mult: int = 4
  features: str = ""
  # Not upstream's: the pixel decoder predicts frame 1 as frame 0 plus its
  # output, so a fresh model already copies frame 0 and the latent only has
  # to carry what moved (`run`'s small LAM; see configs/lam/lapa_sim.py).
  residual: bool = False
  # Not upstream's: > 0 weighs each pixel's squared error by 1 + w * (its
  # change between the frames, relative to the image's mean change), so the
  # few pixels that move (LARY-Sim's arm) are not drowned by the static rest.
  motion_weight: float = 0.0

  @classmethod
  def lapa(cls, **kw) -> Config:
    """Upstream's `lapa` (laq_openx.pt): pixels, patch 32, depth 8/8."""
    return cls(**kw)

  @classmethod
  def dinov2(cls, **kw) -> Config:
    """`laq_dinov2.pt`: DINOv2 ViT-L/14 tokens (16 x 16), depth 4/4."""
    return cls(**({"patch_size": 14, "spatial_depth": 4, "temporal_depth": 4,
                   "code_seq_len": 16, "features": "dinov2"} | kw))

  @classmethod
  def dinov3(cls, **kw) -> Config:
    """`laq_dinov3.pt`: DINOv3 ViT-L/16 tokens (14 x 14), depth 4/4."""
    return cls(**({"patch_size": 16, "spatial_depth": 4, "temporal_depth": 4,
                   "code_seq_len": 16, "features": "dinov3"} | kw))

  @classmethod
  def siglip2(cls, **kw) -> Config:
    """`siglip2.pt`: SigLIP2 B/16-224 tokens (14 x 14, 768), depth 4/4."""
    return cls(**({"dim": 768, "patch_size": 16, "spatial_depth": 4,
                   "temporal_depth": 4, "code_seq_len": 16,
                   "features": "siglip2"} | kw))

  @classmethod
  def magvit2(cls, **kw) -> Config:
    """`magvit2.pt`: Open-MAGVIT2 latents (14 x 14, 18 wide), depth 4/4.

    Heads of 64 x 16 on 18-wide tokens, as upstream's dynamics.py builds it.
    """
    return cls(**({"dim": 18, "patch_size": 16, "spatial_depth": 4,
                   "temporal_depth": 4, "code_seq_len": 16,
                   "features": "magvit2"} | kw))

  @classmethod
  def sim_small(cls, **kw) -> Config:
    """A pixel LAQ that trains on LARY-Sim on 2 CPU cores in minutes.

    Frames resized to 56 x 56 (patch 8: the 7 x 7 grid that code_seq_len 4
    needs, as 224 / 32 upstream), dim 128, 4 heads of 32, depth 2/2.
    """
    return cls(**({"dim": 128, "quant_dim": 16, "image_size": 56,
                   "patch_size": 8, "spatial_depth": 2, "temporal_depth": 2,
                   "dim_head": 32, "heads": 4} | kw))

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Config:
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise LaryError(f"lapa config: unknown field(s) {sorted(unknown)}")
    return cls(**d)

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def out_dim(self) -> int:
    return self.dim

  def check(self) -> None:
    if self.features not in FEATURES:
      raise LaryError(f"lapa config: features={self.features!r}, expected "
                      f"one of {FEATURES}")
    if self.image_size % self.patch_size:
      raise LaryError(f"lapa config: image_size {self.image_size} is not a "
                      f"multiple of patch_size {self.patch_size}")
    if self.residual and self.features:
      raise LaryError("lapa config: residual decoding is for the pixel LAQ "
                      f"only, not features={self.features!r}")


VARIANTS = {
    "lapa": Config.lapa(),
    "dinov2": Config.dinov2(),
    "dinov3": Config.dinov3(),
    "siglip2": Config.siglip2(),
    "magvit2": Config.magvit2(),
    "sim_small": Config.sim_small(),
}


class Model(nnx.Module):
  """The LAQ: frame embedding, encoder transformers, NSVQ, decoder."""

  def __init__(self, cfg: Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
    cfg.check()
    self.cfg = cfg
    self.dtype = dtype
    d = cfg.dim
    kw = dict(heads=cfg.heads, dim_head=cfg.dim_head, ff_mult=cfg.ff_mult,
              dtype=dtype, rngs=rngs)
    self.spatial_rel_pos_bias = laq_layers.ContinuousPositionBias(
        d, cfg.heads, dtype=dtype, rngs=rngs)
    if not cfg.features:
      pd = cfg.channels * cfg.patch_size**2
      self.patch_norm = laq_layers.layer_norm(pd, dtype=dtype, rngs=rngs)
      self.patch_proj = laq_layers.linear(pd, d, dtype=dtype, rngs=rngs)
      self.patch_out_norm = laq_layers.layer_norm(d, dtype=dtype, rngs=rngs)
    self.enc_spatial_transformer = laq_layers.Transformer(
        d, cfg.spatial_depth, **kw)
    self.enc_temporal_transformer = laq_layers.Transformer(
        d, cfg.temporal_depth, **kw)
    self.vq = nsvq.NSVQ(d, cfg.codebook_size, cfg.quant_dim, grid=cfg.grid,
                        code_seq_len=cfg.code_seq_len, dtype=dtype, rngs=rngs)
    self.dec_spatial_transformer = laq_layers.Transformer(
        d, cfg.spatial_depth, context_dim=d, **kw)
    if not cfg.features:
      self.to_pixels = laq_layers.linear(d, pd, dtype=dtype, rngs=rngs)

  # -------------------------------------------------------------- pieces

  def frame_tokens(self, x: jax.Array) -> jax.Array:
    """The pair as LAM tokens [B, 2, g, g, dim] (pixels or features)."""
    cfg, g = self.cfg, self.cfg.grid
    if cfg.features:
      if x.ndim != 4 or x.shape[1:3] != (2, g * g):
        raise LaryError(f"lapa ({cfg.features}): expected backbone tokens "
                        f"[B, 2, {g * g}, {cfg.dim}], got {x.shape}")
      return x.reshape(x.shape[0], 2, g, g, -1).astype(self.dtype)
    s, p, c = cfg.image_size, cfg.patch_size, cfg.channels
    if x.ndim != 5 or x.shape[1:] != (2, s, s, c):
      raise LaryError(f"lapa: expected a pair [B, 2, {s}, {s}, {c}], got "
                      f"{x.shape}")
    b = x.shape[0]
    # Upstream flattens each patch channel-major: (c p1 p2).
    x = x.astype(self.dtype).reshape(b, 2, g, p, g, p, c)
    x = x.transpose(0, 1, 2, 4, 6, 3, 5).reshape(b, 2, g, g, c * p * p)
    return self.patch_out_norm(self.patch_proj(self.patch_norm(x)))

  def encode_frames(self, tokens: jax.Array, bias: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
    """Spatial then temporal transformer: [B, 2, g, g, d] -> 2 x [B, gg, d]."""
    b, t, g, _, d = tokens.shape
    shape = (b, t, g, g)
    x = self.enc_spatial_transformer(tokens.reshape(b * t, g * g, d),
                                     video_shape=shape, attn_bias=bias)
    x = x.reshape(b, t, g * g, d).transpose(0, 2, 1, 3)  # [B, gg, T, d]
    x = self.enc_temporal_transformer(x.reshape(b * g * g, t, d),
                                      video_shape=shape)
    x = x.reshape(b, g * g, t, d)
    return x[:, :, 0], x[:, :, 1]

  def decode(self, first: jax.Array, actions: jax.Array, bias: jax.Array
             ) -> jax.Array:
    """Frame 1 from frame 0's embedding [B, g, g, d] and actions [B, n, d].

    Returns pixels [B, H, W, C] (pixel LAQ) or tokens [B, g, g, d].
    """
    cfg = self.cfg
    b, g, _, d = first.shape
    x = self.dec_spatial_transformer(
        first.reshape(b, g * g, d), video_shape=(b, 1, g, g), attn_bias=bias,
        context=actions)
    if cfg.features:
      return x.reshape(b, g, g, d)
    p, c = cfg.patch_size, cfg.channels
    x = self.to_pixels(x).reshape(b, g, g, c, p, p)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, g * p, g * p, c)

  def _reconstruct(self, x: jax.Array, emb: jax.Array, actions: jax.Array,
                   bias: jax.Array) -> jax.Array:
    # Upstream decodes from frame 0's embedding with its gradient stopped.
    recon = self.decode(jax.lax.stop_gradient(emb[:, 0]),
                        actions.astype(self.dtype), bias)
    if self.cfg.residual:
      recon = recon + x[:, 0].astype(recon.dtype)
    return recon

  def _forward(self, x: jax.Array, noise: jax.Array | None, mode: str,
               *, decode: bool):
    emb = self.frame_tokens(x)
    g = self.cfg.grid
    bias = self.spatial_rel_pos_bias(g, g)
    first, last = self.encode_frames(emb, bias)
    actions, stats = self.vq(first, last, noise=noise, mode=mode)
    recon = self._reconstruct(x, emb, actions, bias) if decode else None
    return emb, actions, stats, recon

  def noise_shape(self, batch: int) -> tuple[int, int]:
    return (batch * self.cfg.code_seq_len, self.cfg.quant_dim)

  # ----------------------------------------------------------------- API

  def loss(self, x: jax.Array, *, key: jax.Array | None = None,
           noise: jax.Array | None = None
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Upstream's training loss: MSE between frame 1 and its reconstruction.

    Args:
      x: the pair, pixels [B, 2, H, W, 3] in [0, 1] or tokens [B, 2, N, D].
      key: PRNG key for NSVQ's noise (or give `noise` itself).
      noise: standard normal [B * code_seq_len, quant_dim] (tests).

    Returns:
      (loss scalar float32, {"recon_loss", "indices" [B, code_seq_len]
      int32, "perplexity", "unique_codes", "recon" (pixels [B, H, W, C] or
      tokens [B, g, g, d])}).
    """
    if self.cfg.features == "magvit2":
      raise LaryError("lapa.Model.loss: upstream's MAGVIT2 LAQ trains "
                      "against frame 1's pixels through a decoder head that "
                      "lary-jax does not port; it extracts latents only")
    if noise is None:
      if key is None:
        raise LaryError("lapa.Model.loss needs key= (NSVQ noise)")
      noise = jax.random.normal(key, self.noise_shape(x.shape[0]))
    emb, _, stats, recon = self._forward(x, noise, "nsvq", decode=True)
    if self.cfg.features:
      target = emb[:, 1]
    else:
      target = x[:, 1]
    recon = recon.astype(jnp.float32)
    error = jnp.square(recon - target.astype(jnp.float32))
    if self.cfg.motion_weight and not self.cfg.features:
      change = jnp.abs(x[:, 1] - x[:, 0]).astype(jnp.float32).mean(
          -1, keepdims=True)
      relative = change / (change.mean(axis=(1, 2, 3), keepdims=True) + 1e-6)
      error = error * (1.0 + self.cfg.motion_weight * relative)
    loss = jnp.mean(error)
    k = self.cfg.codebook_size
    used = jnp.zeros((k,), jnp.bool_).at[stats["indices"].reshape(-1)].set(
        True)
    metrics = {"recon_loss": loss, "indices": stats["indices"],
               "perplexity": stats["perplexity"],
               "unique_codes": jnp.sum(used), "recon": recon}
    return loss, metrics

  def encode(self, x: jax.Array, *, key: jax.Array | None = None,
             noise: jax.Array | None = None, mode: str = "nsvq"
             ) -> jax.Array:
    """Latent action tokens [B, code_seq_len, dim] of the pair `x`.

    Args:
      x: as in `loss`.
      key: PRNG key for the noise of mode "nsvq" (or give `noise`).
      noise: standard normal [B * code_seq_len, quant_dim].
      mode: "nsvq" (upstream's extraction), "quantized" or "continuous".
    """
    if mode not in LATENTS:
      raise LaryError(f"lapa latent {mode!r}: expected one of {LATENTS}")
    if mode == "nsvq" and noise is None:
      if key is None:
        raise LaryError("lapa.Model.encode(mode='nsvq') needs key= or noise=")
      noise = jax.random.normal(key, self.noise_shape(x.shape[0]))
    _, actions, _, _ = self._forward(x, noise, mode, decode=False)
    return actions

  def indices(self, x: jax.Array) -> jax.Array:
    """Code indices [B, code_seq_len] int32 (no noise needed)."""
    _, _, stats, _ = self._forward(x, None, "continuous", decode=False)
    return stats["indices"]


def replace_unused_codes(model: Model, usage: jax.Array, key: jax.Array, *,
                         num_batches: int,
                         threshold: float = nsvq.DISCARD_THRESHOLD,
                         noise_scale: float = nsvq.EPS) -> jax.Array:
  """Re-seeds `model.vq.codebooks` in place (see nsvq.replace_unused_codes).

  Returns the number of replaced codes; reset `usage` afterwards. For a pure
  function over the codebook array use `nsvq.replace_unused_codes`.
  """
  cb, n = nsvq.replace_unused_codes(model.vq.codebooks[...], usage, key,
                                    num_batches=num_batches,
                                    threshold=threshold,
                                    noise_scale=noise_scale)
  model.vq.codebooks[...] = cb
  return n


def example_keys(x: jax.Array, seed: int = 0) -> jax.Array:
  """One PRNG key per example, from `seed` and the example's values.

  Extraction's NSVQ noise uses these, so an example's latent does not depend
  on which batch or device it was encoded on.
  """
  bits = jax.lax.bitcast_convert_type(
      x.reshape(x.shape[0], -1).astype(jnp.float32), jnp.uint32)
  n = bits.shape[1]
  mult = (jnp.arange(n, dtype=jnp.uint32) * jnp.uint32(2654435761)
          + jnp.uint32(1))
  digest = jnp.sum(bits * mult, axis=1, dtype=jnp.uint32)
  base = jax.random.key(seed)
  return jax.vmap(lambda h: jax.random.fold_in(base, h))(digest)


def example_noise(x: jax.Array, cfg: Config, seed: int = 0) -> jax.Array:
  """NSVQ noise [B * code_seq_len, quant_dim] from `example_keys`."""
  keys = example_keys(x, seed)
  shape = (cfg.code_seq_len, cfg.quant_dim)
  return jax.vmap(lambda k: jax.random.normal(k, shape))(keys).reshape(
      -1, cfg.quant_dim)


# ---------------------------------------------------------------------------
# Checkpoints: upstream state dicts -> NNX parameters.

# Keys upstream saves that the LAM never reads: the self-attention's context
# norm and (empty) null key/values, and the frozen backbone of a feature
# variant (DINOv2/v3 `dino_tokenizer.*`, SigLIP2 `encoder.vision_model.*`,
# MAGVIT2 `magvit2_tokenizer.*`), which lary-jax loads as its own encoder
# (see `encoder_factory`).
_UNUSED = (r".*\.layers\.\d+\.1\.null_kv",
           r".*\.layers\.\d+\.1\.context_norm\.(gamma|beta)",
           r".*\.beta",  # bias-less LayerNorms' zero buffers (checked below)
           r"dino_tokenizer\..*", r"encoder\.vision_model\..*",
           r"magvit2_tokenizer\..*")
BACKBONE_PREFIXES = ("dino_tokenizer.", "encoder.vision_model.",
                     "magvit2_tokenizer.")
# The MAGVIT2 LAQ decodes frame 1's pixels from its 18-wide tokens for its
# training loss (`to_pixels_first_frame`); the latent upstream extracts
# never reaches that head, and lary-jax does not train this variant.
_UNUSED_MAGVIT2 = (r"to_pixels_first_frame\.0\.(weight|bias)",)


def _transformer_table(nnx_name: str, depth: int, cross: bool
                       ) -> dict[str, Any]:
  c = convert
  table = {f"{nnx_name}.norm_out.scale": c.same(f"{nnx_name}.norm_out.gamma")}
  for i in range(depth):
    t, n = f"{nnx_name}.layers.{i}.", f"{nnx_name}.layers.{i}."
    table |= {
        n + "peg.dsconv.kernel": c.conv(t + "0.dsconv.weight"),
        n + "peg.dsconv.bias": c.same(t + "0.dsconv.bias"),
        n + "ff.norm.scale": c.same(t + "3.0.weight"),
        n + "ff.norm.bias": c.same(t + "3.0.bias"),
        n + "ff.proj_in.kernel": c.linear(t + "3.1.weight"),
        n + "ff.proj_out.kernel": c.linear(t + "3.4.weight"),
    }
    attns = [("self_attn", "1")] + ([("cross_attn", "2")] if cross else [])
    for name, idx in attns:
      a, s = f"{n}{name}.", f"{t}{idx}."
      table |= {
          a + "norm.scale": c.same(s + "norm.gamma"),
          a + "to_q.kernel": c.linear(s + "to_q.weight"),
          a + "to_kv.kernel": c.linear(s + "to_kv.weight"),
          a + "to_out.kernel": c.linear(s + "to_out.weight"),
          a + "q_scale": c.same(s + "q_scale"),
          a + "k_scale": c.same(s + "k_scale"),
      }
      if name == "cross_attn":
        table |= {a + "context_norm.scale": c.same(s + "context_norm.gamma"),
                  a + "null_kv": c.same(s + "null_kv")}
  return table


def params_from_torch(weights: dict[str, np.ndarray], cfg: Config
                      ) -> dict[str, np.ndarray]:
  """NNX parameters from an upstream LAQ state dict (its own key names).

  A missing, unused or mis-shaped key is a LaryError naming it; a feature
  variant's embedded backbone weights are skipped (see `_UNUSED`).
  """
  c = convert
  for k, v in weights.items():
    if k.endswith(".beta") and not k.startswith(BACKBONE_PREFIXES) and np.any(
        v):
      raise LaryError(f"checkpoint key {k!r}: upstream's bias-less LayerNorm "
                      "keeps beta at zero, this one is not")
  table = {
      "spatial_rel_pos_bias.net.0.kernel": c.linear(
          "spatial_rel_pos_bias.net.0.0.weight"),
      "spatial_rel_pos_bias.net.0.bias": c.same(
          "spatial_rel_pos_bias.net.0.0.bias"),
      "spatial_rel_pos_bias.net.1.kernel": c.linear(
          "spatial_rel_pos_bias.net.1.0.weight"),
      "spatial_rel_pos_bias.net.1.bias": c.same(
          "spatial_rel_pos_bias.net.1.0.bias"),
      "spatial_rel_pos_bias.net.2.kernel": c.linear(
          "spatial_rel_pos_bias.net.2.weight"),
      "spatial_rel_pos_bias.net.2.bias": c.same(
          "spatial_rel_pos_bias.net.2.bias"),
      "vq.codebooks": c.same("vq.codebooks"),
      "vq.project_in.kernel": c.linear("vq.project_in.weight"),
      "vq.project_in.bias": c.same("vq.project_in.bias"),
      "vq.project_out.kernel": c.linear("vq.project_out.weight"),
      "vq.project_out.bias": c.same("vq.project_out.bias"),
  }
  for j in range(len(nsvq.CNN_LAYERS[cfg.code_seq_len])):
    # Upstream's Sequential puts a ReLU between the convolutions.
    table |= {f"vq.cnn_encoder.{j}.kernel": c.conv(
        f"vq.cnn_encoder.{2 * j}.weight"),
              f"vq.cnn_encoder.{j}.bias": c.same(
                  f"vq.cnn_encoder.{2 * j}.bias")}
  table |= _transformer_table("enc_spatial_transformer", cfg.spatial_depth,
                              False)
  table |= _transformer_table("enc_temporal_transformer", cfg.temporal_depth,
                              False)
  table |= _transformer_table("dec_spatial_transformer", cfg.spatial_depth,
                              True)
  if not cfg.features:
    e = "to_patch_emb_first_frame."
    table |= {
        "patch_norm.scale": c.same(e + "1.weight"),
        "patch_norm.bias": c.same(e + "1.bias"),
        "patch_proj.kernel": c.linear(e + "2.weight"),
        "patch_proj.bias": c.same(e + "2.bias"),
        "patch_out_norm.scale": c.same(e + "3.weight"),
        "patch_out_norm.bias": c.same(e + "3.bias"),
        "to_pixels.kernel": c.linear("to_pixels_first_frame.0.weight"),
        "to_pixels.bias": c.same("to_pixels_first_frame.0.bias"),
    }
  unused = _UNUSED + (_UNUSED_MAGVIT2 if cfg.features == "magvit2" else ())
  return c.apply_table(weights, table, c.param_shapes(Model, cfg),
                       unused=unused)


def _depth(weights: dict[str, np.ndarray], name: str) -> int:
  pat = f"{name}.layers."
  ids = {int(k[len(pat):].split(".")[0]) for k in weights
         if k.startswith(pat)}
  if not ids or ids != set(range(len(ids))):
    raise LaryError(f"checkpoint: no consecutive {pat}N.* keys "
                    f"(found layers {sorted(ids)}); not an upstream LAQ")
  return len(ids)


def config_from_pt(weights: dict[str, np.ndarray], preset: Config) -> Config:
  """`preset` with the sizes an upstream LAQ state dict shows.

  The token grid (image_size / patch_size) of a feature variant is not in
  its weights; it comes from `preset` (which also says which backbone).
  """
  for key in ("vq.codebooks", "vq.project_in.weight",
              "enc_spatial_transformer.layers.0.1.to_q.weight",
              "enc_spatial_transformer.layers.0.1.q_scale"):
    if key not in weights:
      raise LaryError(f"checkpoint has no key {key!r}; not an upstream LAQ "
                      "state dict")
  codebook_size, quant_dim = weights["vq.codebooks"].shape
  dim = weights["vq.project_in.weight"].shape[1]
  dim_head = weights["enc_spatial_transformer.layers.0.1.q_scale"].shape[0]
  heads = weights["enc_spatial_transformer.layers.0.1.to_q.weight"].shape[0]
  kw = dict(dim=dim, quant_dim=quant_dim, codebook_size=codebook_size,
            dim_head=dim_head, heads=heads // dim_head,
            spatial_depth=_depth(weights, "enc_spatial_transformer"),
            temporal_depth=_depth(weights, "enc_temporal_transformer"))
  pixel = "to_patch_emb_first_frame.1.weight" in weights
  if pixel != (not preset.features):
    raise LaryError("checkpoint is a " + ("pixel" if pixel else "feature")
                    + f" LAQ, expected {preset.features or 'pixel'} one")
  if pixel:
    pd = weights["to_patch_emb_first_frame.1.weight"].shape[0]
    kw["patch_size"] = int(round(math.sqrt(pd / preset.channels)))
  cfg = dataclasses.replace(preset, **kw)
  # code_seq_len: the CNN whose kernels match and whose output fits the grid.
  kernels = [weights[f"vq.cnn_encoder.{2 * j}.weight"].shape[2:]
             for j in range(2) if f"vq.cnn_encoder.{2 * j}.weight" in weights]
  fits = [n for n, layers in nsvq.CNN_LAYERS.items()
          if [k for k, _, _ in layers] == [tuple(k) for k in kernels]
          and math.prod(nsvq._conv_out(cfg.grid, layers)) == n]  # pylint: disable=protected-access
  if len(fits) != 1:
    raise LaryError(f"checkpoint: NSVQ CNN kernels {kernels} fit no "
                    f"code_seq_len for a {cfg.grid}x{cfg.grid} token grid")
  return dataclasses.replace(cfg, code_seq_len=fits[0])


# ---------------------------------------------------------------------------
# Extraction: the LAM as an encoder of mode "pairs".

# Registry name -> (preset, backbone encoder name or "").
REGISTRY = {
    "lapa": (Config.lapa(), ""),
    "lapa_dinov2": (Config.dinov2(), "dinov2"),
    "lapa_dinov3": (Config.dinov3(), "dinov3"),
    "lapa_siglip2": (Config.siglip2(), "siglip2"),
    # LARY's `magvit2` row: the LAQ on Open-MAGVIT2's latents.
    "magvit2": (Config.magvit2(), "magvit2_encoder"),
}

# Backbone encoder name -> the prefix under which upstream's feature LAQ
# module keeps that frozen backbone (a submodule), and so where its saved
# state dict holds the backbone's weights (transformers key names).
EMBEDDED_PREFIX = {
    "dinov2": "dino_tokenizer.",          # Dinov2Model
    "dinov3": "dino_tokenizer.",          # DINOv3ViTModel
    "siglip2": "encoder.vision_model.",   # AutoModel(...).vision_model
    "magvit2_encoder": "magvit2_tokenizer.",  # Open-MAGVIT2's VQModel
}
# Where upstream itself loads each backbone from (named in errors).
UPSTREAM_BACKBONE = {
    "dinov2": "$DINO_V2_PATH, a transformers Dinov2Model folder (DINOv2 "
              "ViT-L/14, e.g. facebook/dinov2-large; "
              "get_latent_action/tokenizer.py load_dino)",
    "dinov3": "$DINO_V3_PATH, a transformers DINOv3ViTModel folder (DINOv3 "
              "ViT-L/16; get_latent_action/tokenizer.py load_dinov3)",
    "siglip2": "$SIGLIP2_PATH, a transformers SigLIP folder (SigLIP2 "
               "B/16-224, e.g. google/siglip2-base-patch16-224; "
               "latent_action_quantization_siglipv2_feature.py)",
    "magvit2_encoder": "$MAGVIT2_TOKENIZER_PATH, Open-MAGVIT2's Lightning "
                       ".ckpt (pretrain256_262144, 18-wide latents; "
                       "get_latent_action/tokenizer.py "
                       "get_magvit2_tokenizer)",
}
# Load-time options a backbone must run with under its LAQ: upstream feeds
# the MAGVIT2 encoder [0, 1] frames (`get_reps_magvit2`), which its LAQ was
# trained on, whatever range a standalone magvit2_encoder is set to.
BACKBONE_OPTIONS = {"magvit2_encoder": {"upstream_range": True}}


def _backbone_options(name: str, module: Any, cfg: Any) -> Any:
  """The backbone Config `cfg` of encoder `name` with BACKBONE_OPTIONS."""
  options = BACKBONE_OPTIONS.get(name)
  return module.load_options(cfg, **options) if options else cfg


class PairEncoder(nnx.Module):
  """Images [B, 2, H, W, 3] in [0, 1] -> latent tokens [B, code_seq, dim].

  A feature variant runs its frozen backbone (an NNX encoder from
  lary_jax.encoders, with that encoder's own preprocess and token choice)
  on both frames first. The pixel LAQ resizes frames whose size is not its
  `image_size` (bilinear, antialiased). The NSVQ noise of latent "nsvq"
  comes from `example_keys(images, seed)`.
  """

  def __init__(self, lam: Model, backbone: nnx.Module | None = None, *,
               backbone_module: Any = None, latent: str = "nsvq",
               seed: int = 0):
    if latent not in LATENTS:
      raise LaryError(f"lapa latent={latent!r}: expected one of {LATENTS}")
    self.lam = lam
    self.backbone = backbone
    # The backbone's module-level functions: static, hashable.
    self.backbone_preprocess = (backbone_module.preprocess
                                if backbone_module else None)
    self.backbone_select = (backbone_module.select_tokens
                            if backbone_module else None)
    self.latent, self.seed = latent, seed

  def __call__(self, images: jax.Array) -> jax.Array:
    cfg = self.lam.cfg
    b = images.shape[0]
    noise = (example_noise(images, cfg, self.seed)
             if self.latent == "nsvq" else None)
    frames = images.reshape(b * 2, *images.shape[2:])
    if self.backbone is not None:
      tokens, out = self.backbone(self.backbone_preprocess(frames))
      # select_tokens None: every token as it is (MAGVIT2's latents).
      x = (tokens if self.backbone_select is None
           else self.backbone_select(tokens, out))
      x = x.reshape(b, 2, *x.shape[1:])
    else:
      s = cfg.image_size
      if frames.shape[1:3] != (s, s):
        frames = jax.image.resize(frames, (b * 2, s, s, frames.shape[-1]),
                                  "bilinear", antialias=True)
      x = frames.reshape(b, 2, s, s, -1)
    return self.lam.encode(x, noise=noise, mode=self.latent)


def _read(name: str, path: str | None, *, variant: str | None = None,
          with_backbone: bool = True
          ) -> tuple[Config, dict[str, np.ndarray], Any]:
  """(Config, LAQ params, embedded backbone or None) of the LAM at `path`.

  `path`: upstream's .pt/.pth/.ckpt or a `convert`ed directory (whose
  backbone, if any, is the sub-directory `embedded.converted_path(path)`;
  the third item is then None). See `read_pt`.
  """
  if path is None:
    raise LaryError(f"encoder {name!r} needs --checkpoint: upstream's LAQ "
                    ".pt/.pth/.ckpt or a directory written by `convert`")
  if convert.is_converted(path):
    saved, cfg_dict, params = convert.load_converted(path)
    if saved != name:
      raise LaryError(f"{path}: holds a {saved!r} checkpoint, not {name!r}")
    return Config.from_dict(cfg_dict), params, None
  return read_pt(name, path, variant=variant, with_backbone=with_backbone)


def load_lam(name: str, path: str, *, dtype=jnp.float32) -> Model:
  """The LAM `name` (a REGISTRY key) from an upstream .pt or a converted dir."""
  cfg, params, _ = _read(name, path, with_backbone=False)
  return convert.build(Model, cfg, params, dtype=dtype)


def _backbone(name: str, path: str | None, dtype) -> tuple[nnx.Module, Any]:
  """The frozen backbone `name` (dinov2, ...) as (NNX model, its module)."""
  module = families.model_module(name)
  if convert.is_converted(path):
    saved, cfg_dict, params = convert.load_converted(path)
    if saved != name:
      raise LaryError(f"backbone {path}: holds a {saved!r} checkpoint, not "
                      f"{name!r}")
    cfg = module.Config.from_dict(cfg_dict)
  else:
    cfg, params = convert.params_from_source(module, path)
  cfg = _backbone_options(name, module, cfg)
  return convert.build(module.Model, cfg, params, dtype=dtype), module


def _no_backbone(name: str, features: str, path: str) -> LaryError:
  if convert.is_converted(path):
    where = f"no {embedded.SUBDIR}/ sub-directory written by `convert`"
  elif features in EMBEDDED_PREFIX:
    where = f"no '{EMBEDDED_PREFIX[features]}*' keys"
  else:
    where = "none embedded"
  upstream = UPSTREAM_BACKBONE.get(features)
  return LaryError(
      f"encoder {name!r} reads {features} tokens, but {path} holds no "
      f"{features} backbone ({where}): give it with "
      f"--config.extract.encoder_options=backbone=PATH (a {features} Hugging "
      "Face folder or a `convert`ed directory)"
      + (f"; upstream loads it from {upstream}" if upstream else ""))


def encoder_factory(name: str):
  """registry Factory for `name`: `(path, *, dtype, backbone=, latent=,
  seed=) -> Encoder` of mode "pairs".

  Options (`--config.extract.encoder_options=backbone=DIR,latent=quantized`):
  backbone: the feature variant's DINOv2/DINOv3/SigLIP2 checkpoint (HF
  folder, `convert`ed dir or hub id). Without it the backbone that the
  checkpoint carries is used: upstream's state dicts hold it under
  EMBEDDED_PREFIX, a `convert`ed directory in `backbone/`; an explicit one
  wins.
  latent: nsvq (default, upstream's), quantized or continuous; seed: the
  NSVQ noise seed.
  """

  def factory(path, *, dtype=jnp.float32, backbone: str | None = None,
              latent: str = "nsvq", seed: int = 0):
    _, features = REGISTRY[name]
    if backbone is not None and not features:
      raise LaryError(f"encoder {name!r} reads pixels; backbone= is for the "
                      "feature variants")
    if path is not None:
      path = hub.resolve(path)
    # An explicit backbone wins: the embedded one is then not even read.
    cfg, params, found = _read(name, path, with_backbone=backbone is None)
    lam = convert.build(Model, cfg, params, dtype=dtype)
    del params
    bb = module = None
    if features:
      if backbone is not None:
        bb, module = _backbone(features, hub.resolve(backbone), dtype)
      elif found is not None:
        module = families.model_module(features)
        bb = convert.build(module.Model, _backbone_options(
            features, module, found[0]), found[1], dtype=dtype)
      elif (sub := embedded.converted_path(path)) is not None:
        bb, module = _backbone(features, sub, dtype)
      else:
        raise _no_backbone(name, features, path)
    model = PairEncoder(lam, bb, backbone_module=module, latent=latent,
                        seed=int(seed))
    return contract.make_encoder(name, model, mode="pairs")

  return factory


def read_pt(name: str, path: str, *, variant: str | None = None,
            with_backbone: bool = True
            ) -> tuple[Config, dict[str, np.ndarray], Any]:
  """(Config, LAQ params, embedded backbone) of an upstream .pt/.pth/.ckpt.

  `name` is a REGISTRY key: it fixes the preset (and so the backbone and
  token grid), which a state dict alone does not show. The file is read
  once. The embedded backbone is `(backbone Config, params)` from the keys
  under EMBEDDED_PREFIX (see lams/embedded.py), or None when the checkpoint
  has none, the LAQ reads pixels, or `with_backbone` is False. `variant` (a
  VARIANTS key) replaces the sizes read off the weights.
  """
  if name not in REGISTRY:
    raise LaryError(f"unknown LAPA model {name!r}; expected one of "
                    f"{sorted(REGISTRY)}")
  if not (os.path.isfile(path)
          and path.endswith((".pt", ".pth", ".ckpt"))):
    raise LaryError(f"{path}: expected upstream's LAQ .pt/.pth/.ckpt or a "
                    "directory written by `convert`")
  weights = convert.read_pt(path)
  if variant is None:
    cfg = config_from_pt(weights, REGISTRY[name][0])
  elif variant in VARIANTS:
    cfg = VARIANTS[variant]
  else:
    raise LaryError(f"variant {variant!r}: expected one of "
                    f"{sorted(VARIANTS)}")
  params = params_from_torch(weights, cfg)
  features = REGISTRY[name][1]
  found = None
  if with_backbone and features in EMBEDDED_PREFIX:
    found = embedded.backbone_from_weights(
        weights, EMBEDDED_PREFIX[features], features)
  return cfg, params, found


def convert_checkpoint(name: str, src: str, out: str, *,
                       variant: str | None = None) -> str:
  """`convert`: the LAQ into `out`, its embedded backbone into `out/backbone`.

  Both are plain `convert` outputs (the backbone one names its encoder,
  e.g. "dinov2"), so `out` extracts with no backbone= option and
  `out/backbone` loads alone as an encoder. A checkpoint without an
  embedded backbone leaves no `backbone/` (a stale one is removed).
  """
  cfg, params, found = read_pt(name, src, variant=variant)
  out = convert.save(out, name, cfg, params)
  if found is None:
    embedded.remove(out)
  else:
    embedded.save(out, REGISTRY[name][1], *found)
  return out
