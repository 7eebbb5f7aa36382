"""Nearest-code vector quantisation at inference, as UniVLA and villa-X do it."""

import jax
import jax.numpy as jnp


def quantize(z: jax.Array, codes: jax.Array) -> tuple[jax.Array, jax.Array]:
  """z [..., dim], codes [K, dim] -> (z_q [..., dim], indices [...] int32).

  Squared Euclidean distance to every code, the first nearest wins; z_q is
  upstream's straight-through value z + (code - z), i.e. the code rounded
  through z, in float32, cast back to z's dtype.
  """
  zf = z.astype(jnp.float32)
  idx = jnp.argmin(((zf[..., None, :] - codes) ** 2).sum(-1), axis=-1)
  idx = idx.astype(jnp.int32)
  return (zf + (codes[idx] - zf)).astype(z.dtype), idx
