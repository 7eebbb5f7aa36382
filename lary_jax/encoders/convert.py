"""The weights library: torch weights -> NNX parameters -> orbax.

How a model file plugs in. Its `params_from_torch(weights, cfg)` writes an
explicit table `{nnx_path: Rule}` and hands it to `apply_table`:

  def params_from_torch(weights, cfg):
    table = {"embed.kernel": convert.conv("embeddings.proj.weight"),
             "blocks.0.attn.qkv.kernel": convert.cat_linear(q, k, v), ...}
    return convert.apply_table(weights, table, convert.param_shapes(Model,
                               cfg), unused=(r"embeddings\\.mask_token",))

`apply_table` fails with a LaryError naming the key and both shapes when a
torch key is missing, left unused (unless it matches `unused`), or gives the
wrong shape, and when an NNX parameter has no rule. NNX paths are dotted
(`blocks.3.mlp.fc1.kernel`); list indices are plain numbers. A model holds
only `nnx.Param` state (float32); constants such as RoPE tables are computed
in `__call__` from static shapes (numpy), not stored.

Files. `params_from_source(module, src)` reads a Hugging Face folder
(config.json + *.safetensors, via `safetensors.numpy`, no torch) or an
original `.pt/.pth` (read without torch by `torch_checkpoint`;
`target_encoder` picked, `module.`/`backbone.` stripped, then the module's
`params_from_pt(weights, cfg)` hook, with cfg from `variant` or the module's
optional `config_from_pt(weights)`); `save` writes `out/params` (orbax) and
`out/config.json` (`{"model", "config"}`). This file knows no model by name:
`encoders.registry.convert(name, src, out)` looks the module up and calls
these.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
# Registers bfloat16 with numpy, so that `safetensors.numpy` reads bf16 files.
import ml_dtypes  # pylint: disable=unused-import
import numpy as np
from flax import nnx

from lary_jax import hub
from lary_jax import torch_checkpoint
from lary_jax.errors import LaryError

FORMAT = "lary_jax.encoders/1"
_PT_WRAPPERS = ("target_encoder", "state_dict", "model")
_PT_PREFIXES = ("module.", "backbone.")


# ---------------------------------------------------------------------------
# Mapping rules.


@dataclasses.dataclass(frozen=True)
class Rule:
  """Builds one NNX parameter from one or more torch tensors."""

  keys: tuple[str, ...]
  fn: Callable[..., np.ndarray]

  def __call__(self, weights: Mapping[str, np.ndarray]) -> np.ndarray:
    return self.fn(*(weights[k] for k in self.keys))


def same(key: str) -> Rule:
  """The tensor as it is (LayerNorm, biases, tokens, position tables)."""
  return Rule((key,), lambda w: w)


def reshape(key: str, shape: tuple[int, ...]) -> Rule:
  """The tensor reshaped, e.g. cls token [1, 1, D] -> [D]."""
  return Rule((key,), lambda w: w.reshape(shape))


def linear(key: str) -> Rule:
  """A torch Linear weight [out, in] -> kernel [in, out]."""
  return Rule((key,), lambda w: w.T)


def conv(key: str) -> Rule:
  """A torch Conv weight [D, C, *patch] -> kernel [*patch, C, D]."""
  return Rule((key,), lambda w: np.moveaxis(w, (0, 1), (-1, -2)))


def cat_linear(*keys: str) -> Rule:
  """Several torch Linear weights fused along the output: kernel [in, sum]."""
  return Rule(keys, lambda *ws: np.concatenate([w.T for w in ws], axis=1))


def cat_bias(*keys: str | None, sizes: Iterable[int]) -> Rule:
  """Biases fused like `cat_linear`; a None key or absent tensor is zeros."""
  sizes = tuple(sizes)
  present = tuple(k for k in keys if k is not None)

  def fn(*ws):
    it = iter(ws)
    parts = [next(it) if k is not None else None for k in keys]
    return np.concatenate([
        np.zeros((n,), np.float32) if w is None else w
        for w, n in zip(parts, sizes)])
  return Rule(present, fn)


@functools.lru_cache(maxsize=32)
def _abstract(model_cls: type, cfg: Any, dtype: Any
              ) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, abstract state) of `model_cls(cfg)`: tracing init is slow."""
  return nnx.split(nnx.eval_shape(
      lambda: model_cls(cfg, dtype=dtype, rngs=nnx.Rngs(0))))


def param_shapes(model_cls: type, cfg: Any) -> dict[str, tuple[int, ...]]:
  """Dotted path -> shape of every parameter of `model_cls(cfg)`."""
  _, state = _abstract(model_cls, cfg, np.dtype(np.float32))
  return {_dotted(p): tuple(v.shape) for p, v in nnx.to_flat_state(state)}


def apply_table(weights: Mapping[str, np.ndarray], table: Mapping[str, Rule],
                shapes: Mapping[str, tuple[int, ...]], *,
                unused: Iterable[str] = ()) -> dict[str, np.ndarray]:
  """Maps torch tensors to NNX parameters, checking both sides completely.

  Args:
    weights: torch state dict as numpy arrays.
    table: NNX dotted path -> Rule.
    shapes: the expected NNX shapes (`param_shapes`).
    unused: regexes of torch keys that are known and deliberately dropped
      (e.g. a mask token that inference never uses).

  Returns:
    NNX dotted path -> float32 array, one entry per parameter.
  """
  unused = [re.compile(p) for p in unused]
  missing_rules = sorted(set(shapes) - set(table))
  if missing_rules:
    raise LaryError(f"no torch weight maps to NNX parameter(s) "
                    f"{missing_rules[:5]} (of {len(missing_rules)})")
  extra_rules = sorted(set(table) - set(shapes))
  if extra_rules:
    raise LaryError(f"mapping table names NNX parameter(s) {extra_rules[:5]} "
                    "that the model does not have")
  used, out = set(), {}
  for path, rule in table.items():
    absent = [k for k in rule.keys if k not in weights]
    if absent:
      raise LaryError(f"checkpoint has no key {absent[0]!r} (needed for NNX "
                      f"parameter {path!r}, shape {shapes[path]})")
    used.update(rule.keys)
    srcs = ", ".join(f"{k!r} {tuple(weights[k].shape)}" for k in rule.keys)
    try:
      value = np.asarray(rule(weights), np.float32)
    except ValueError as e:
      raise LaryError(f"cannot build NNX parameter {path!r} from {srcs}: "
                      f"{e}") from None
    if value.shape != shapes[path]:
      raise LaryError(f"shape mismatch: checkpoint {srcs} gives {value.shape} "
                      f"for NNX parameter {path!r}, expected {shapes[path]}")
    out[path] = value
  left = sorted(k for k in weights if k not in used
                and not any(p.fullmatch(k) for p in unused))
  if left:
    shape = tuple(weights[left[0]].shape)
    raise LaryError(f"checkpoint key {left[0]!r} {shape} is not used by the "
                    f"model ({len(left)} unused keys: {left[:5]})")
  return out


# ---------------------------------------------------------------------------
# Building a model from parameters.


def _dotted(path: Iterable[Any]) -> str:
  return ".".join(str(p) for p in path)


def build(model_cls: type, cfg: Any, params: Mapping[str, Any], *,
          dtype=np.float32) -> nnx.Module:
  """`model_cls(cfg, dtype=dtype)` with its parameters set from `params`.

  Args:
    model_cls: an NNX Model class following the encoder contract.
    cfg: its Config.
    params: dotted path -> array, exactly the model's parameters.
    dtype: compute dtype.

  Returns:
    The model, parameters as float32 jax arrays.
  """
  graphdef, state = _abstract(model_cls, cfg, np.dtype(dtype))
  flat = []
  for path, var in nnx.to_flat_state(state):
    key = _dotted(path)
    if key not in params:
      raise LaryError(f"converted checkpoint has no parameter {key!r}")
    value = np.asarray(params[key], np.float32)
    if value.shape != tuple(var.shape):
      raise LaryError(f"converted parameter {key!r} has shape {value.shape}, "
                      f"the model expects {tuple(var.shape)}")
    # device_put, not jnp.asarray: that compiles a copy per distinct shape.
    flat.append((path, var.replace(jax.device_put(value))))
  extra = set(params) - {_dotted(p) for p, _ in flat}
  if extra:
    raise LaryError(f"converted checkpoint has unknown parameter(s) "
                    f"{sorted(extra)[:5]}")
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def flat_params(model: nnx.Module) -> dict[str, np.ndarray]:
  """The model's parameters as dotted path -> numpy array."""
  return {_dotted(p): np.asarray(v[...])
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


# ---------------------------------------------------------------------------
# Reading sources.


def read_hf(src: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Reads a Hugging Face folder: (config.json dict, safetensors weights)."""
  cfg_path = os.path.join(src, "config.json")
  if not os.path.isfile(cfg_path):
    raise LaryError(f"{src}: not a Hugging Face folder (no config.json)")
  files = sorted(glob.glob(os.path.join(src, "*.safetensors")))
  if not files:
    raise LaryError(f"{src}: no *.safetensors files (convert .bin "
                    "checkpoints with transformers' save_pretrained first)")
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  weights = {}
  for f in files:
    try:
      weights.update(load_file(f))
    except Exception as e:  # safetensors raises its own error types
      raise LaryError(f"{f}: cannot read safetensors ({e})") from None
  with open(cfg_path) as f:
    return json.load(f), weights


# Single-file original checkpoints (torch pickles, or one safetensors file
# such as FLUX.2's ae.safetensors), read with the module's params_from_pt.
_ORIGINAL_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")


def read_safetensors(src: str) -> dict[str, np.ndarray]:
  """Reads one `.safetensors` file as a float32 numpy state dict."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  try:
    weights = load_file(src)
  except Exception as e:  # safetensors raises its own error types
    raise LaryError(f"{src}: cannot read safetensors ({e})") from None
  return {k: v.astype(np.float32) for k, v in weights.items()}


def read_pt(src: str) -> dict[str, np.ndarray]:
  """Reads an original `.pt/.pth` checkpoint as a clean numpy state dict.

  Picks the `target_encoder` (or `state_dict`/`model`) entry when present and
  strips `module.`/`backbone.` prefixes. Read without torch
  (`torch_checkpoint`), refusing what `weights_only=True` refuses; in a
  Lightning `.ckpt` the objects pickled beside the weights (hyper-parameters,
  callbacks) load as inert placeholders instead, their code never run.
  """
  obj = torch_checkpoint.load(src, opaque=src.endswith(".ckpt"))
  for key in _PT_WRAPPERS:
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
      break
  if not isinstance(obj, dict):
    raise LaryError(f"{src}: expected a state dict (a dict of tensors), "
                    f"found a {type(obj).__name__}")
  out = {}
  for k, v in obj.items():
    if not isinstance(v, np.ndarray):
      continue
    for prefix in _PT_PREFIXES:
      while k.startswith(prefix):
        k = k[len(prefix):]
    out[k] = v.astype(np.float32)
  return out


# ---------------------------------------------------------------------------
# Saving and loading converted checkpoints.


def _nest(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  tree = {}
  for path, value in flat.items():
    *parents, leaf = path.split(".")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def save(out: str, model: str, cfg: Any, params: Mapping[str, np.ndarray]
         ) -> str:
  """Writes `out/params` (orbax) and `out/config.json`; returns `out`."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  out = os.path.abspath(out)
  os.makedirs(out, exist_ok=True)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(os.path.join(out, "params"), _nest(params), force=True)
  ckpt.wait_until_finished()
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({"format": FORMAT, "model": model, "config": cfg.to_dict()}, f,
              indent=2)
  return out


def is_converted(path: str) -> bool:
  """Whether `path` is a directory written by `save`."""
  return (os.path.isdir(os.path.join(path, "params"))
          and os.path.isfile(os.path.join(path, "config.json")))


def load_converted(path: str) -> tuple[str, dict[str, Any],
                                       dict[str, np.ndarray]]:
  """Reads a `save`d directory: (model name, Config dict, flat params)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  cfg_path = os.path.join(path, "config.json")
  with open(cfg_path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT or "model" not in meta:
    raise LaryError(f"{cfg_path}: not a lary-jax encoder checkpoint "
                    f"(format {meta.get('format')!r}, expected {FORMAT!r})")
  tree = ocp.StandardCheckpointer().restore(
      os.path.join(os.path.abspath(path), "params"))
  params = {k: np.asarray(v) for k, v in _flatten(tree).items()}
  return meta["model"], meta["config"], params


def params_from_source(module: Any, src: str, *, variant: str | None = None
                       ) -> tuple[Any, dict[str, np.ndarray]]:
  """(Config, flat params) for `module` (a `contract.ModelModule`) from an HF
  folder or a .pt file."""
  if module.load_checkpoint is not None:  # a format of its own (LAMs)
    return module.load_checkpoint(src, variant=variant)
  if os.path.isdir(src):
    hf_config, weights = read_hf(src)
    cfg = module.config_from_hf(hf_config)
    return cfg, module.params_from_torch(weights, cfg)
  if os.path.isfile(src) and src.endswith(_ORIGINAL_SUFFIXES):
    if module.params_from_pt is None:
      raise LaryError(f"{src}: model {module.__name__} converts only Hugging "
                      "Face folders, not .pt checkpoints")
    weights = (read_safetensors(src) if src.endswith(".safetensors")
               else read_pt(src))
    if variant is not None:
      if variant not in module.VARIANTS:
        raise LaryError(f"variant {variant!r}: expected one of "
                        f"{sorted(module.VARIANTS)}")
      cfg = module.VARIANTS[variant]
    elif module.config_from_pt is not None:
      cfg = module.config_from_pt(weights)
    else:
      raise LaryError(f"{src}: a .pt checkpoint needs variant= (one of "
                      f"{sorted(module.VARIANTS)})")
    return cfg, module.params_from_pt(weights, cfg)
  raise LaryError(f"{src}: expected a Hugging Face folder (config.json + "
                  "*.safetensors) or a .pt/.pth/.ckpt/.safetensors file")
