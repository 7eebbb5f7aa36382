"""Upstream's model and split names, and the names they have here.

Upstream's CLI (`lary extract/classify/regress --model M --split S`) names
models the way its `get_latent_action/dynamics.py` loads them and splits the
way its CSVs are named. Every such name resolves to ours here, so features,
results and the report are always filed under our canonical name.

Three upstream names are also ours with another meaning: upstream's `dinov2`
is the LAPA LAM on DINOv2 tokens, ours the raw DINOv2 backbone (upstream's
`dinov2-origin`); likewise `dinov3` and `siglip2`. They keep our meaning
unless `upstream=True` (the CLI's `--upstream_names`).
"""

from __future__ import annotations

from lary_jax.errors import LaryError

# Upstream's `--model` -> (our name, what it is). The README's table.
UPSTREAM_MODELS: dict[str, tuple[str, str]] = {
    "dinov2": ("lapa_dinov2", "LAPA-DINOv2: the LAQ on DINOv2 tokens"),
    "dinov3": ("lapa_dinov3", "LAPA-DINOv3: the LAQ on DINOv3 tokens"),
    "siglip2": ("lapa_siglip2", "LAPA-SigLIP2: the LAQ on SigLIP2 tokens"),
    "magvit2": ("magvit2", "the LAQ on Open-MAGVIT2 latents"),
    "lapa": ("lapa", "LAPA's LAQ on pixels"),
    "univla": ("univla", "UniVLA's latent action model"),
    "villa-x": ("villa_x", "villa-X's latent action model"),
    "dinov2-origin": ("dinov2", "the raw DINOv2 backbone"),
    "dinov3-origin": ("dinov3", "the raw DINOv3 backbone"),
    "siglip2-origin": ("siglip2", "the raw SigLIP2 backbone"),
    "vjepa2": ("vjepa2", "V-JEPA 2's video encoder"),
    "flux2": ("flux2", "the FLUX.2 VAE encoder"),
    "wan2-2": ("wan2_2", "the Wan2.2 VAE encoder"),
}
# Upstream names that are also ours, with another meaning.
AMBIGUOUS = frozenset(k for k, (ours, _) in UPSTREAM_MODELS.items()
                      if k != ours and k in {v for v, _ in
                                             UPSTREAM_MODELS.values()})

# Upstream's split names (CSV names, `extract --split`) -> ours; None: all.
UPSTREAM_SPLITS: dict[str, str | None] = {
    "train": "train", "seen_train": "train",
    "val": "validation", "seen_val": "validation", "validation": "validation",
    "unseen": "unseen", "all": None,
}


def model(name: str, *, upstream: bool = False) -> str:
  """Our name of model `name`, ours or upstream's.

  Args:
    name: a model name as given (`--model`, `config.run.models`, ...).
    upstream: read the names upstream and we both use (dinov2, dinov3,
      siglip2) as upstream's, i.e. the LAPA LAMs.

  Returns:
    The canonical name features and results are filed under.
  """
  if name in AMBIGUOUS and not upstream:
    return name
  return UPSTREAM_MODELS.get(name, (name, ""))[0]


def ambiguity_note(name: str) -> str | None:
  """A line for a name that means something else upstream, else None."""
  if name not in AMBIGUOUS:
    return None
  ours, what = UPSTREAM_MODELS[name]
  return (f"note: --model {name} is the raw backbone here (upstream's "
          f"{name}-origin); upstream's {name} ({what}) is {ours} here, or "
          "pass --upstream_names")


def split(name: str | None) -> str | None:
  """Our split name of `name` (ours or upstream's); None for all splits."""
  if name is None:
    return None
  if name not in UPSTREAM_SPLITS:
    raise LaryError(f"--split {name}: expected train, validation or unseen "
                    f"(or upstream's {', '.join(sorted(UPSTREAM_SPLITS))})")
  return UPSTREAM_SPLITS[name]
