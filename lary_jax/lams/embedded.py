"""Frozen backbones that upstream's LAQ checkpoints carry inside them.

Upstream's feature LAQs keep their frozen backbone as a submodule
(`self.dino_tokenizer = Dinov2Model/DINOv3ViTModel.from_pretrained(...)`,
`self.encoder.vision_model` = a SigLIP vision model, `self.magvit2_tokenizer`
= Open-MAGVIT2's VQModel) and `requires_grad=False` does not take a
parameter out of `state_dict()`, which their trainers save whole. So a
checkpoint such as `laq_dinov2.pt` holds the backbone under that attribute's
prefix, with transformers' key names (`dino_tokenizer.encoder.layer.0.*`).
Upstream's `load_state_dict(strict=False)` then overwrites the
`from_pretrained` backbone with these weights, so they are the ones upstream
ran.

  found = embedded.backbone_from_weights(weights, "dino_tokenizer.", "dinov2")
  if found is not None:
    cfg, params = found                       # dinov2.Config, NNX params
    embedded.save(out_dir, "dinov2", cfg, params)   # -> out_dir/backbone/

Any encoder of lary_jax.encoders works: one whose module has
`config_from_pt(weights)` (e.g. magvit2) reads its Config from the state
dict itself; for the transformers ViTs (dinov2, dinov3, siglip2) the
config.json that transformers would have written is rebuilt from the
shapes (`hf_config_from_weights`) and given to the module's
`config_from_hf`. The parameters come from the module's `params_from_pt`
(else `params_from_torch`) on the keys with the prefix removed.

A `convert`ed LAQ keeps its backbone as a second `convert` output in the
sub-directory `backbone/` (SUBDIR): a plain encoder checkpoint, loadable on
its own with `encoders.load(name, DIR/backbone)`, while `DIR` itself stays
exactly the LAQ's parameters and Config.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

import numpy as np

from lary_jax.encoders import convert
from lary_jax.encoders import dinov2
from lary_jax.encoders import families
from lary_jax.errors import LaryError

SUBDIR = "backbone"

# Attention heads are not in the weights. Every DINOv2/DINOv3 ViT and
# SigLIP B/L checkpoint published uses heads of 64; these widths do not.
_HEADS = {"dinov3": {4096: 32}, "siglip2": {1152: 16, 1536: 16}}


def strip(weights: dict[str, np.ndarray], prefix: str
          ) -> dict[str, np.ndarray]:
  """The keys starting with `prefix`, prefix removed (empty if none)."""
  return {k[len(prefix):]: v for k, v in weights.items()
          if k.startswith(prefix)}


def _heads(encoder: str, width: int) -> int:
  return _HEADS.get(encoder, {}).get(width, max(1, width // 64))


def _need(w: dict[str, np.ndarray], key: str, what: str) -> np.ndarray:
  if key not in w:
    raise LaryError(f"no key {key!r}; not a transformers {what} state dict")
  return w[key]


def _count(w: dict[str, np.ndarray], fmt: str) -> int:
  n = 0
  while fmt.format(n) in w:
    n += 1
  return n


_V5_DINOV2 = re.compile(r"(encoder\.layer\.\d+\.)(attention|mlp)\."
                        r"(q|k|v|o|gate|up|down)_proj\.(weight|bias)")
_V5_DINOV2_NAMES = {"q": "attention.attention.query",
                    "k": "attention.attention.key",
                    "v": "attention.attention.value",
                    "o": "attention.output.dense", "down": "mlp.weights_out"}


def _dinov2_hub_names(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A Dinov2Model state dict under the Hub's key names (dinov2.py's).

  transformers >= 5 names the modules `attention.{q,k,v,o}_proj` and, for
  SwiGLU, `mlp.{gate,up,down}_proj` in memory (what `torch.save(
  module.state_dict())` writes) and converts back to the Hub's names
  (`attention.attention.query`, fused `mlp.weights_in` = [gate; up]) only in
  `save_pretrained`; 4.x uses the Hub's names throughout.
  """
  out, gate_up = {}, {}
  for k, v in w.items():
    m = _V5_DINOV2.fullmatch(k)
    if m is None:
      out[k] = v
    elif m[3] in ("gate", "up"):
      gate_up.setdefault((m[1], m[4]), {})[m[3]] = v
    else:
      out[f"{m[1]}{_V5_DINOV2_NAMES[m[3]]}.{m[4]}"] = v
  for (layer, leaf), parts in gate_up.items():
    if set(parts) != {"gate", "up"}:
      missing = ({"gate", "up"} - set(parts)).pop()
      raise LaryError(f"no key '{layer}mlp.{missing}_proj.{leaf}' beside its "
                      "SwiGLU partner")
    out[f"{layer}mlp.weights_in.{leaf}"] = np.concatenate(
        [parts["gate"], parts["up"]], axis=0)
  return out


def _dinov2(w: dict[str, np.ndarray]) -> dict[str, Any]:
  what = "Dinov2Model"
  d, c, p, _ = _need(w, "embeddings.patch_embeddings.projection.weight",
                     what).shape
  n = _need(w, "embeddings.position_embeddings", what).shape[1] - 1
  depth = _count(w, "encoder.layer.{}.norm1.weight")
  if not depth:
    raise LaryError("no key 'encoder.layer.0.norm1.weight'; not a "
                    f"transformers {what} state dict")
  swiglu = "encoder.layer.0.mlp.weights_in.weight" in w
  hf = {"model_type": "dinov2", "hidden_size": d, "num_hidden_layers": depth,
        "num_attention_heads": _heads("dinov2", d), "patch_size": p,
        "image_size": int(round(n ** 0.5)) * p, "num_channels": c,
        "qkv_bias": "encoder.layer.0.attention.attention.query.bias" in w,
        "use_swiglu_ffn": swiglu}
  if not swiglu:
    fc1 = _need(w, "encoder.layer.0.mlp.fc1.weight", what)
    hf["mlp_ratio"] = fc1.shape[0] / d
    return hf
  # SwiGLU's width is 2/3 of d * mlp_ratio rounded up to 8: the published
  # ratio 4 if it fits, else the first ratio that gives the saved width.
  width = w["encoder.layer.0.mlp.weights_in.weight"].shape[0] // 2
  for ratio in [4] + [n / d for n in range(width, 2 * width + 8)]:
    if dinov2.Config(hidden_size=d, mlp_ratio=ratio,
                     use_swiglu_ffn=True).mlp_hidden == width:
      hf["mlp_ratio"] = ratio
      return hf
  raise LaryError(f"SwiGLU width {width} of 'encoder.layer.0.mlp.weights_in."
                  f"weight' fits no mlp_ratio for hidden size {d}")


def _dinov3(w: dict[str, np.ndarray]) -> dict[str, Any]:
  what = "DINOv3ViTModel"
  w = {k.removeprefix("model."): v for k, v in w.items()}
  d, c, p, _ = _need(w, "embeddings.patch_embeddings.weight", what).shape
  regs = _need(w, "embeddings.register_tokens", what).shape[1]
  depth = _count(w, "layer.{}.norm1.weight")
  if not depth:
    raise LaryError(f"no key 'layer.0.norm1.weight'; not a transformers "
                    f"{what} state dict")
  gated = "layer.0.mlp.gate_proj.weight" in w
  a = "layer.0.attention."
  return {
      "model_type": "dinov3_vit", "hidden_size": d,
      "num_hidden_layers": depth, "num_attention_heads": _heads("dinov3", d),
      "intermediate_size": _need(w, "layer.0.mlp.up_proj.weight",
                                 what).shape[0],
      "patch_size": p, "num_channels": c, "num_register_tokens": regs,
      "query_bias": a + "q_proj.bias" in w, "key_bias": a + "k_proj.bias" in w,
      "value_bias": a + "v_proj.bias" in w,
      "proj_bias": a + "o_proj.bias" in w,
      "mlp_bias": "layer.0.mlp.up_proj.bias" in w, "use_gated_mlp": gated,
      "hidden_act": "silu" if gated else "gelu"}


def _siglip2(w: dict[str, np.ndarray]) -> dict[str, Any]:
  what = "SigLIP vision model"
  v = ("vision_model." if "vision_model.embeddings.patch_embedding.weight" in w
       else "")
  d, c, p, _ = _need(w, v + "embeddings.patch_embedding.weight", what).shape
  n = _need(w, v + "embeddings.position_embedding.weight", what).shape[0]
  depth = _count(w, v + "encoder.layers.{}.layer_norm1.weight")
  if not depth:
    raise LaryError(f"no key '{v}encoder.layers.0.layer_norm1.weight'; not a "
                    f"transformers {what} state dict")
  return {"model_type": "siglip_vision_model", "hidden_size": d,
          "intermediate_size": _need(w, v + "encoder.layers.0.mlp.fc1.weight",
                                     what).shape[0],
          "num_hidden_layers": depth,
          "num_attention_heads": _heads("siglip2", d), "num_channels": c,
          "image_size": int(round(n ** 0.5)) * p, "patch_size": p}


_HF_FROM_WEIGHTS = {"dinov2": _dinov2, "dinov3": _dinov3, "siglip2": _siglip2}
# Key renames to the names the encoder module reads, before anything else.
_NORMALIZE = {"dinov2": _dinov2_hub_names}


def hf_config_from_weights(encoder: str, weights: dict[str, np.ndarray]
                           ) -> dict[str, Any]:
  """The config.json dict transformers would save for this state dict.

  `weights` are the backbone's own keys (prefix removed). Sizes come from
  the shapes; the attention head count, which no weight shows, from the
  published models (width / 64, see `_HEADS`); the rest are transformers'
  defaults for that model type.
  """
  if encoder not in _HF_FROM_WEIGHTS:
    raise LaryError(f"cannot read a {encoder!r} Config from a state dict; "
                    f"known: {sorted(_HF_FROM_WEIGHTS)}")
  return _HF_FROM_WEIGHTS[encoder](_NORMALIZE.get(encoder, dict)(weights))


def backbone_from_weights(weights: dict[str, np.ndarray], prefix: str,
                          encoder: str
                          ) -> tuple[Any, dict[str, np.ndarray]] | None:
  """(Config, NNX params) of encoder `encoder` from the keys under `prefix`.

  Args:
    weights: a whole LAQ state dict (numpy).
    prefix: where upstream's module keeps the backbone, e.g.
      "dino_tokenizer.".
    encoder: the encoder family's name (`encoders.families`), e.g.
      "dinov2".

  Returns:
    None when no key starts with `prefix` (a checkpoint saved without its
    backbone); else the backbone's Config and parameters. A missing,
    unused or mis-shaped key is a LaryError naming the prefix and the key
    under it.
  """
  sub = strip(weights, prefix)
  if not sub:
    return None
  module = families.model_module(encoder)
  try:
    sub = _NORMALIZE.get(encoder, dict)(sub)
    if module.config_from_pt is not None:
      cfg = module.config_from_pt(sub)
    else:
      cfg = module.config_from_hf(hf_config_from_weights(encoder, sub))
    to_params = module.params_from_pt or module.params_from_torch
    return cfg, to_params(sub, cfg)
  except LaryError as e:
    raise LaryError(f"the {encoder} backbone embedded under {prefix!r} (keys "
                    f"below are relative to it): {e}") from None


def save(out: str, encoder: str, cfg: Any, params: dict[str, np.ndarray]
         ) -> str:
  """Writes the backbone as a `convert` output into `out/backbone/`."""
  return convert.save(os.path.join(out, SUBDIR), encoder, cfg, params)


def remove(out: str) -> None:
  """Drops a stale `out/backbone/` (re-converting a backbone-less LAQ)."""
  path = os.path.join(out, SUBDIR)
  if os.path.isdir(path):
    shutil.rmtree(path)


def converted_path(path: str) -> str | None:
  """`path/backbone` when `path` is a converted dir that holds one."""
  sub = os.path.join(path, SUBDIR)
  return sub if os.path.isdir(path) and convert.is_converted(sub) else None
