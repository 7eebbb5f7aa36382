"""The catalogue: every encoder, LAM, baseline and control by name.

`load`, `available`, `register`, `convert`. A built-in model module (dinov2,
dinov3, siglip2, vjepa2, ...; `families`) loads from a converted orbax
directory or a Hugging Face folder (converted on the fly); the LAMs (LAPA's
LAQs, UniVLA, villa-X) from upstream's checkpoints or a converted directory.
The baselines (`pixels`, `random_vit`) and controls (`flow`, `sim_oracle`)
need no files. A user's own encoder plugs in with one call:

  encoders.register("mine", lambda path, *, dtype, **kw: encoders.make_encoder(
      "mine", MyModel(rngs=nnx.Rngs(0)), preprocess=my_preprocess))

This module sits above the encoder families and the LAMs (it imports them,
they never import it); the `Encoder` contract lives below them in
`contract`, and is re-exported here.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Protocol

import jax.numpy as jnp

from lary_jax import hub
from lary_jax import names
from lary_jax.encoders import baselines
from lary_jax.encoders import contract
from lary_jax.encoders import convert as convert_lib
from lary_jax.encoders import families
from lary_jax.encoders import optical_flow
from lary_jax.encoders import sim_oracle
from lary_jax.encoders.contract import EXAMPLE_SHAPE  # re-exported
from lary_jax.encoders.contract import Encoder  # re-exported
from lary_jax.encoders.contract import make_encoder  # re-exported
from lary_jax.errors import LaryError
from lary_jax.lams import lapa
from lary_jax.lams import univla
from lary_jax.lams import villa_x

# name -> (model module, mode). None marks a module missing from this install.
_MODEL_MODULES: dict[str, tuple[ModuleType | None, str]] = {
    **families.MODEL_MODULES,
    # Latent action models. UniVLA encodes each frame pair on its own;
    # villa-X reads a whole clip (causal attention over sliding windows),
    # so it takes the clip, as upstream's video mode feeds it.
    "univla": (univla, "pairs"),
    "villa_x": (villa_x, "video"),
    # LAPA's LAQ on pixels and on DINOv2/DINOv3/SigLIP2 tokens: one file;
    # the name fixes the backbone and token grid (`lapa.REGISTRY`).
    **{name: (lapa, "pairs") for name in lapa.REGISTRY},
}


class Factory(Protocol):

  def __call__(self, path: str | None, *, dtype: Any, **options: Any
               ) -> Encoder:
    ...


def model_module(name: str) -> ModuleType:
  """The model module registered as `name` (dinov2, dinov3, ...)."""
  return families.model_module(name, _MODEL_MODULES)


def _checkpoint_factory(name: str) -> Factory:
  """Loads model module `name` from an orbax dir or an HF folder."""

  def factory(path, *, dtype=jnp.float32, **options):
    module = model_module(name)
    # Config fields a module lets the caller set at load time.
    load_opts = {k: options.pop(k) for k in module.LOAD_OPTIONS
                 if k in options}
    if path is None:
      raise LaryError(f"encoder {name!r} needs a checkpoint: a Hugging Face "
                      "folder or a directory written by `convert`")
    path = hub.resolve(path)
    if convert_lib.is_converted(path):
      saved, cfg_dict, params = convert_lib.load_converted(path)
      if saved != name:
        raise LaryError(f"{path}: holds a {saved!r} checkpoint, not {name!r}")
      cfg = module.Config.from_dict(cfg_dict)
    else:
      cfg, params = convert_lib.params_from_source(module, path,
                                                   **options)
    if load_opts:
      cfg = module.load_options(cfg, **load_opts)
    model = convert_lib.build(module.Model, cfg, params, dtype=dtype)
    return contract.make_encoder(
        name, model, preprocess=module.preprocess,
        select_tokens=module.select_tokens, mode=_MODEL_MODULES[name][1],
        frames_view=module.FRAMES_VIEW, xla_profile=module.XLA_PROFILE)

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


def convert(model: str, src: str, out: str, *, variant: str | None = None
            ) -> str:
  """Converts a checkpoint of encoder `model` into an orbax directory.

  Args:
    model: registry name, e.g. "dinov2".
    src: a Hugging Face folder or an original .pt/.pth file, or a hub id
      of one (`facebook/dinov2-large`; see `hub.resolve`).
    out: output directory (created; `out/params` is overwritten).
    variant: Config preset for .pt files that carry no config.

  Returns:
    The absolute output directory, loadable with `load(model, out)`.
  """
  module = model_module(model)
  src = hub.resolve(src)
  if model in lapa.REGISTRY:  # writes more than one model
    # (a feature LAQ and the backbone its checkpoint embeds: lams/lapa.py)
    return lapa.convert_checkpoint(model, src, out, variant=variant)
  cfg, params = convert_lib.params_from_source(module, src, variant=variant)
  return convert_lib.save(out, model, cfg, params)
