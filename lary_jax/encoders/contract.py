"""The encoder contract: an NNX model wrapped as a jitted `Encoder`.

Every encoder, whatever family, reaches extraction as an `Encoder` made by
`make_encoder`: images (or robot states) in, tokens [B, N, D] out, with the
token count and width measured once on an example input. The model files,
the baselines and the LAMs build theirs here; the catalogue
(`encoders.registry`) finds them by name.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import nnx

from lary_jax import xla_options
from lary_jax.errors import LaryError
from lary_jax.nn import vit_layers

# The shape `num_tokens` is measured on, per mode: a LARY clip has 9 frames.
EXAMPLE_SHAPE = {"image": (224, 224, 3), "video": (9, 224, 224, 3),
                 "pairs": (2, 224, 224, 3)}
# Stored frame views a prepared dataset can hold ("": the squashed frames).
FRAMES_VIEWS = ("", "vjepa2")
# What extraction feeds an encoder: decoded uint8 frames, or the robot
# states a simulator recorded with them (ground truth; `sim_oracle`).
INPUTS = ("frames", "states")


@runtime_checkable
class ModelModule(Protocol):
  """What a model family's file (dinov2.py, univla.py, ...) provides to the
  catalogue and the weights library. A family without a hook says so:
  None, `()` or "" (no optional hooks found by `hasattr`)."""

  Config: Any  # a DictConfig dataclass
  Model: Any  # the nnx.Module, built as Model(cfg, dtype=..., rngs=...)
  VARIANTS: Mapping[str, Any]  # named configs, for files without one
  LOAD_OPTIONS: tuple[str, ...]  # config settings load_options sets
  FRAMES_VIEW: str  # the prepared frames it reads ("": the squashed 224)
  XLA_PROFILE: str  # how its forward compiles (`xla_options.PROFILES`)
  preprocess: Callable[..., Any]  # uint8 frames -> model input
  select_tokens: Callable[..., Any]  # model output -> tokens [B, N, D]
  params_from_torch: Callable[..., Any]  # HF names -> params
  load_options: Callable[..., Any] | None  # (cfg, **LOAD_OPTIONS) -> cfg
  config_from_hf: Callable[..., Any] | None  # HF config.json -> Config
  config_from_pt: Callable[..., Any] | None  # a .pt state dict -> Config
  params_from_pt: Callable[..., Any] | None  # .pt names -> params
  load_checkpoint: Callable[..., Any] | None  # a format of its own (LAMs)


@dataclasses.dataclass(frozen=True, eq=False)
class Encoder:
  """A frozen encoder: `enc(images) -> tokens [B, N, D]`, jitted.

  `images` are [B, 224, 224, 3] (video: [B, T, 224, 224, 3]), uint8 or float
  in [0, 1]. An image encoder given [B, T, H, W, 3] encodes every frame and
  returns [B, T, N, D]. `apply(params, images)` is the same pure function
  for callers that place `params` themselves (e.g. replicated on a mesh).
  `frames_view` names the stored frames extraction feeds it: "" the 224
  squashed frames, "vjepa2" V-JEPA 2's crop of the full-resolution frames.
  `xla_profile` selects the XLA options its forward compiles with
  (`xla_options`: "" XLA's defaults, "convolutional" for the pixel
  tokenizers). `inputs` is "frames", or "states" for an encoder of the
  robot states
  recorded with each frame (then `example` is one frame's state, float32).
  """

  name: str
  dim: int
  num_tokens: int
  mode: str
  params: Any
  static: tuple[Any, ...]  # hashable (graphdef, preprocess, select, ...)
  frames_view: str = ""
  xla_profile: str = xla_options.DEFAULT
  inputs: str = "frames"
  example: jax.ShapeDtypeStruct = jax.ShapeDtypeStruct((224, 224, 3),
                                                       jnp.uint8)

  def apply(self, params: Any, images: jax.Array) -> jax.Array:
    return _encode(*self.static, params, images)

  def __call__(self, images: jax.Array) -> jax.Array:
    return _encode_jit(jax.default_backend(), self.xla_profile)(
        *self.static, self.params, images)


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


@functools.cache
def _encode_jit(platform: str, profile: str) -> Callable[..., jax.Array]:
  """`_encode` jitted for `platform` and XLA `profile`, static in the model
  structure, so that encoders built twice from the same architecture share
  compilations."""
  return jax.jit(_encode, static_argnums=(0, 1, 2, 3, 4, 5),
                 compiler_options=xla_options.encoder_forward(platform,
                                                              profile))


def make_encoder(name: str, model: nnx.Module, *,
                 preprocess: Callable[[jax.Array], jax.Array] | None = None,
                 select_tokens: Callable[[jax.Array, dict], jax.Array]
                 | None = None,
                 mode: str = "image", frames_view: str = "",
                 xla_profile: str = xla_options.DEFAULT,
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
    xla_profile: how the forward compiles (`xla_options.PROFILES`).
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
  if xla_profile not in xla_options.PROFILES:
    raise LaryError(f"encoder {name!r}: xla_profile={xla_profile!r}, "
                    f"expected one of {xla_options.PROFILES}")
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
                 xla_profile=xla_profile, inputs=inputs, example=example)
