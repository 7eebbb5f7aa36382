"""Encoders by name: `load`, `available`, `register`.

A built-in model module (dinov2, dinov3, siglip2, vjepa2) loads from a
converted orbax directory or a Hugging Face folder (converted on the fly).
The baselines (`pixels`, `random_vit`, `flow`) need no files. A user's own
encoder plugs in with one call:

  encoders.register("mine", lambda path, *, dtype, **kw: encoders.make_encoder(
      "mine", MyModel(rngs=nnx.Rngs(0)), preprocess=my_preprocess))
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from lary_jax import hub
from lary_jax.encoders import baselines
from lary_jax.encoders import convert
from lary_jax.encoders import dinov2
from lary_jax.encoders import dinov3
from lary_jax.encoders import flux2_vae
from lary_jax.encoders import magvit2
from lary_jax.encoders import optical_flow
from lary_jax.encoders import sim_oracle
from lary_jax.nn import vit_layers
from lary_jax.encoders import wan_vae
from lary_jax.errors import LaryError
from lary_jax.lams import lapa
from lary_jax.lams import univla
from lary_jax.lams import villa_x
from lary_jax import names

# A missing file shows up as a LaryError when that name is loaded.
try:
  import lary_jax.encoders.siglip2 as siglip2
except ModuleNotFoundError as e:
  if e.name != "lary_jax.encoders.siglip2":
    raise
  siglip2 = None
try:
  import lary_jax.encoders.vjepa2 as vjepa2
except ModuleNotFoundError as e:
  if e.name != "lary_jax.encoders.vjepa2":
    raise
  vjepa2 = None

# name -> (model module, mode). None marks a module missing from this install.
_MODEL_MODULES: dict[str, tuple[ModuleType | None, str]] = {
    "dinov2": (dinov2, "image"),
    "dinov3": (dinov3, "image"),
    "siglip2": (siglip2, "image"),
    "vjepa2": (vjepa2, "video"),
    # Pixel tokenizers. LARY's `magvit2` row is a LAQ on these latents.
    "magvit2_encoder": (magvit2, "image"),
    "flux2": (flux2_vae, "image"),
    "wan2_2": (wan_vae, "video"),
    # Latent action models. UniVLA encodes each frame pair on its own;
    # villa-X reads a whole clip (causal attention over sliding windows),
    # so it takes the clip, as upstream's video mode feeds it.
    "univla": (univla, "pairs"),
    "villa_x": (villa_x, "video"),
    # LAPA's LAQ on pixels and on DINOv2/DINOv3/SigLIP2 tokens: one file,
    # one adapter per name (the name fixes the backbone and token grid).
    **{name: (lapa.adapter(name), "pairs") for name in lapa.REGISTRY},
}
# The shape `num_tokens` is measured on, per mode: a LARY clip has 9 frames.
EXAMPLE_SHAPE = {"image": (224, 224, 3), "video": (9, 224, 224, 3),
                 "pairs": (2, 224, 224, 3)}
# Stored frame views a prepared dataset can hold ("": the squashed frames).
FRAMES_VIEWS = ("", "vjepa2")
# What extraction feeds an encoder: decoded uint8 frames, or the robot
# states a simulator recorded with them (ground truth; `sim_oracle`).
INPUTS = ("frames", "states")


@dataclasses.dataclass(frozen=True, eq=False)
class Encoder:
  """A frozen encoder: `enc(images) -> tokens [B, N, D]`, jitted.

  `images` are [B, 224, 224, 3] (video: [B, T, 224, 224, 3]), uint8 or float
  in [0, 1]. An image encoder given [B, T, H, W, 3] encodes every frame and
  returns [B, T, N, D]. `apply(params, images)` is the same pure function
  for callers that place `params` themselves (e.g. replicated on a mesh).
  `frames_view` names the stored frames extraction feeds it: "" the 224
  squashed frames, "vjepa2" V-JEPA 2's crop of the full-resolution frames.
  `inputs` is "frames", or "states" for an encoder of the robot states
  recorded with each frame (then `example` is one frame's state, float32).
  """

  name: str
  dim: int
  num_tokens: int
  mode: str
  params: Any
  static: tuple[Any, ...]  # hashable (graphdef, preprocess, select, ...)
  frames_view: str = ""
  inputs: str = "frames"
  example: jax.ShapeDtypeStruct = jax.ShapeDtypeStruct((224, 224, 3),
                                                       jnp.uint8)

  def apply(self, params: Any, images: jax.Array) -> jax.Array:
    return _encode(*self.static, params, images)

  def __call__(self, images: jax.Array) -> jax.Array:
    return _encode_jit(*self.static, self.params, images)


def _encode(graphdef, preprocess, select_tokens, mode, name, frame_rank,
            params, images):
  """preprocess -> model -> select_tokens; image models fold [B, T] frames.

  `frame_rank` is the rank of a batch of one mode's examples ([B, H, W, 3]
  for image mode), so [B, T, ...] is a batch of clips.
  """
  if images.ndim == frame_rank + 1 and mode == "image":
    b, t = images.shape[:2]
    tokens = _encode(graphdef, preprocess, select_tokens, mode, name,
                     frame_rank, params,
                     images.reshape(b * t, *images.shape[2:]))
    return tokens.reshape(b, t, *tokens.shape[1:])
  if images.ndim != frame_rank:
    raise LaryError(f"encoder {name!r} ({mode}) got input of shape "
                    f"{images.shape}")
  result = nnx.merge(graphdef, params)(preprocess(images))
  tokens, out = result if isinstance(result, tuple) else (result, {})
  return tokens if select_tokens is None else select_tokens(tokens, out)


# Module level with a static model structure, so that encoders built twice
# from the same architecture share compilations.
_encode_jit = jax.jit(_encode, static_argnums=(0, 1, 2, 3, 4, 5))


def make_encoder(name: str, model: nnx.Module, *,
                 preprocess: Callable[[jax.Array], jax.Array] | None = None,
                 select_tokens: Callable[[jax.Array, dict], jax.Array]
                 | None = None,
                 mode: str = "image", frames_view: str = "",
                 inputs: str = "frames",
                 example: jax.ShapeDtypeStruct | None = None) -> Encoder:
  """Wraps an NNX model with the encoder contract into an `Encoder`.

  Args:
    name: registry name.
    model: `model(x) -> (tokens, out)` or `model(x) -> tokens`.
    preprocess: images -> model input; default uint8 -> [0, 1] float32.
    select_tokens: (tokens, out) -> [B, N, D]; default the tokens.
    mode: "image" or "video".
    frames_view: the stored frames the model reads ("": squashed 224,
      "vjepa2": V-JEPA 2's view; see `Encoder`).
    inputs: "frames", or "states" (see `Encoder`).
    example: one example's input (default: a uint8 224 frame, clip or pair
      of frames as `mode` says); for an image-mode state encoder, one
      frame's state vector.

  Returns:
    The Encoder, with `dim` and `num_tokens` measured on `example`.
  """
  if mode not in EXAMPLE_SHAPE:
    raise LaryError(f"encoder {name!r}: mode={mode!r}, expected one of "
                    f"{sorted(EXAMPLE_SHAPE)}")
  if frames_view not in FRAMES_VIEWS:
    raise LaryError(f"encoder {name!r}: frames_view={frames_view!r}, "
                    f"expected one of {FRAMES_VIEWS}")
  if inputs not in INPUTS:
    raise LaryError(f"encoder {name!r}: inputs={inputs!r}, expected one of "
                    f"{INPUTS}")
  if example is None:
    example = jax.ShapeDtypeStruct(EXAMPLE_SHAPE[mode], jnp.uint8)
  graphdef, params = nnx.split(model)
  static = (graphdef, preprocess or vit_layers.to_unit_float, select_tokens,
            mode, name, len(example.shape) + 1)
  batch = jax.ShapeDtypeStruct((1, *example.shape), example.dtype)
  shape = jax.eval_shape(functools.partial(_encode, *static), params,
                         batch).shape
  return Encoder(name=name, dim=shape[-1], num_tokens=shape[-2], mode=mode,
                 params=params, static=static, frames_view=frames_view,
                 inputs=inputs, example=example)


class Factory(Protocol):

  def __call__(self, path: str | None, *, dtype: Any, **options: Any
               ) -> Encoder:
    ...


def model_module(name: str) -> ModuleType:
  """The model module registered as `name` (dinov2, dinov3, ...)."""
  if name not in _MODEL_MODULES:
    raise LaryError(f"unknown model {name!r}; models with checkpoints: "
                    f"{sorted(_MODEL_MODULES)}")
  module, _ = _MODEL_MODULES[name]
  if module is None:
    raise LaryError(f"encoder {name!r}: module lary_jax.encoders.{name} is "
                    "not installed")
  return module


def _checkpoint_factory(name: str) -> Factory:
  """Loads model module `name` from an orbax dir or an HF folder."""

  def factory(path, *, dtype=jnp.float32, **options):
    module = model_module(name)
    # Config fields a module lets the caller set at load time.
    load_opts = {k: options.pop(k) for k in getattr(module, "LOAD_OPTIONS", ())
                 if k in options}
    if path is None:
      raise LaryError(f"encoder {name!r} needs a checkpoint: a Hugging Face "
                      "folder or a directory written by `convert`")
    path = hub.resolve(path)
    if convert.is_converted(path):
      saved, cfg_dict, params = convert.load_converted(path)
      if saved != name:
        raise LaryError(f"{path}: holds a {saved!r} checkpoint, not {name!r}")
      cfg = module.Config.from_dict(cfg_dict)
    else:
      cfg, params = convert.params_from_source(module, path, **options)
    if load_opts:
      cfg = module.load_options(cfg, **load_opts)
    model = convert.build(module.Model, cfg, params, dtype=dtype)
    return make_encoder(name, model, preprocess=module.preprocess,
                        select_tokens=module.select_tokens,
                        mode=_MODEL_MODULES[name][1],
                        frames_view=getattr(module, "FRAMES_VIEW", ""))

  return factory


_FACTORIES: dict[str, Factory] = {
    **{name: _checkpoint_factory(name) for name in _MODEL_MODULES},
    "pixels": baselines.pixels_encoder,
    "random_vit": baselines.random_vit_encoder,
    # Positive controls: classical optical flow, and LARY-Sim's recorded
    # robot states (not pixels).
    "flow": optical_flow.flow_encoder,
    "sim_oracle": sim_oracle.sim_oracle_encoder,
}
# Built-in encoders that need no checkpoint.
_WEIGHT_FREE = ("pixels", "random_vit", "flow", "sim_oracle")
# LAPA loads its own way (a feature variant also builds its backbone).
_FACTORIES.update({name: lapa.encoder_factory(name) for name in lapa.REGISTRY})


def available() -> list[str]:
  """Registered encoder names, sorted."""
  return sorted(_FACTORIES)


def register(name: str, factory: Factory) -> None:
  """Registers `factory(path, *, dtype, **options) -> Encoder` as `name`."""
  if name in _MODEL_MODULES or name in _WEIGHT_FREE:
    raise LaryError(f"encoder name {name!r} is built in; pick another")
  _FACTORIES[name] = factory


def unregister(name: str) -> None:
  """Removes a name `register` added (built-in names stay)."""
  if name in _MODEL_MODULES or name in _WEIGHT_FREE:
    raise LaryError(f"encoder name {name!r} is built in; it stays")
  _FACTORIES.pop(name, None)


def load(name: str, path: str | None = None, *, dtype=jnp.float32,
         **options: Any) -> Encoder:
  """Builds encoder `name`.

  Args:
    name: one of `available()`, or upstream's name of one (`names.py`;
      upstream's dinov2/dinov3/siglip2 keep our meaning, the backbones).
    path: a converted orbax directory, a Hugging Face folder or original
      checkpoint file, or (built-in models) a Hugging Face hub id such as
      `facebook/dinov2-large`, fetched into the HF cache (`hub.resolve`);
      None for the baselines.
    dtype: compute dtype (parameters stay float32).
    **options: passed to the factory (e.g. `variant="B/16", seed=1` for
      random_vit, `patch=16` for pixels).

  Returns:
    The Encoder.
  """
  name = names.model(name)  # upstream's villa-x, wan2-2, ... are ours
  if name not in _FACTORIES:
    raise LaryError(f"unknown encoder {name!r}; available: {available()}")
  return _FACTORIES[name](path, dtype=dtype, **options)
