"""Frozen visual encoders in Flax NNX: one model family a file, by name.

  from lary_jax import encoders
  enc = encoders.load("dinov2", "/ckpt/dinov2-large")  # HF folder or orbax
  tokens = enc(images)  # [B, 224, 224, 3] uint8 or [0, 1] -> [B, N, D]

Three layers live here. At the bottom, `convert` (the weights library: name
tables, `apply_table`, readers, orbax save/load; it knows no model by name)
and `config_dict`. Beside the LAMs, the model families (`dinov2`, `dinov3`,
`siglip2`, `vjepa2`, `magvit2`, `flux2_vae`, `wan_vae`), the baselines and
controls (`baselines`, `optical_flow`, `sim_oracle`), the `Encoder` contract
they all return (`contract`) and the families by name (`families`). On top,
the catalogue `registry`, which maps every encoder, LAM, baseline and control
name to its model and checkpoint reader. `load`, `available`, `register`,
`make_encoder` and `Encoder` here are the catalogue's, looked up on first use
so that importing a model file never loads the catalogue.
"""

_CATALOGUE = ("Encoder", "available", "load", "make_encoder", "register")


def __getattr__(name: str):
  if name in _CATALOGUE:
    # why: the catalogue sits above the model files; load it on first use.
    from lary_jax.encoders import registry  # pylint: disable=g-import-not-at-top
    return getattr(registry, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_CATALOGUE))
