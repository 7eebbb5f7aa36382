"""The encoder model files by name: dinov2, dinov3, siglip2, vjepa2, ...

One entry per family of frozen encoders with a checkpoint (a model file
with `Config`, `Model`, `preprocess`, `select_tokens` and a weight table),
and the input each reads. The catalogue (`encoders.registry`) adds the LAMs
and the weight-free baselines; a LAM that runs one of these encoders as its
frozen backbone (`lams/lapa.py`, `lams/embedded.py`) finds it here.
"""

from __future__ import annotations

from types import ModuleType

from lary_jax.encoders import dinov2
from lary_jax.encoders import dinov3
from lary_jax.encoders import flux2_vae
from lary_jax.encoders import magvit2
from lary_jax.encoders import wan_vae
from lary_jax.errors import LaryError

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
MODEL_MODULES: dict[str, tuple[ModuleType | None, str]] = {
    "dinov2": (dinov2, "image"),
    "dinov3": (dinov3, "image"),
    "siglip2": (siglip2, "image"),
    "vjepa2": (vjepa2, "video"),
    # Pixel tokenizers. LARY's `magvit2` row is a LAQ on these latents.
    "magvit2_encoder": (magvit2, "image"),
    "flux2": (flux2_vae, "image"),
    "wan2_2": (wan_vae, "video"),
}


def model_module(name: str,
                 modules: dict[str, tuple[ModuleType | None, str]]
                 = MODEL_MODULES) -> ModuleType:
  """The model module registered as `name` in `modules` (dinov2, ...)."""
  if name not in modules:
    raise LaryError(f"unknown model {name!r}; models with checkpoints: "
                    f"{sorted(modules)}")
  module, _ = modules[name]
  if module is None:
    raise LaryError(f"encoder {name!r}: module lary_jax.encoders.{name} is "
                    "not installed")
  return module
