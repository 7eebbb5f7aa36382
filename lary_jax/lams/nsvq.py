"""NSVQ: noise-substitution vector quantisation, as LAPA's LAQ uses it.

Upstream (`laq_model/nsvq.py`, after Vali & Bäckström 2022) quantises the
*difference* of two frames' encodings: each frame's tokens go through
`project_in` (D -> quant_dim), a small strided CNN on the token grid
(`code_seq_len` cells out), and the first frame's codes are subtracted from
the second's. Training replaces the quantisation error by a random vector of
the same norm, `z + |z - c| / |r| * r`, which passes gradients to both the
encoder and the codebook without a commitment loss. `project_out`
(quant_dim -> D) maps the result back.

One upstream detail is kept on purpose: before `project_out` the [B * n, q]
codes are reshaped to [B, q, n] and transposed, which interleaves the codes
of one example instead of splitting them (a released checkpoint was trained
with this layout). `unscramble=False` is not offered: it would not be LAPA.

Dead codes are re-seeded with `replace_unused_codes` on upstream's schedule
(`replacement_due`); usage is counted as upstream counts it (`count_usage`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lary_jax.errors import LaryError
from lary_jax.nn import laq_layers

EPS = 1e-12
DISCARD_THRESHOLD = 0.1

# code_seq_len -> convolutions of upstream's cnn_encoder, each
# (kernel, stride, padding); a ReLU sits between two convolutions.
CNN_LAYERS: dict[int, tuple[tuple[tuple[int, int], int, int], ...]] = {
    1: (((3, 3), 2, 1), ((4, 4), 1, 0)),
    2: (((3, 3), 2, 1), ((3, 4), 1, 0)),
    4: (((3, 3), 2, 1), ((3, 3), 1, 0)),
    16: (((3, 3), 2, 1), ((3, 3), 2, 1)),
    49: (((3, 3), 2, 1),),
    64: (((2, 2), 2, 1),),
    256: (((3, 3), 2, 1),),
}


class NSVQ(nnx.Module):
  """project_in -> CNN over the token grid -> codes; codebook; project_out.

  Attribute names follow upstream (`codebooks`, `project_in`, `project_out`,
  `cnn_encoder`); `cnn_encoder` holds only the convolutions (upstream's
  Sequential indices 0 and 2).
  """

  def __init__(self, dim: int, num_embeddings: int, embedding_dim: int, *,
               grid: int, code_seq_len: int, dtype=jnp.float32,
               rngs: nnx.Rngs):
    if code_seq_len not in CNN_LAYERS:
      raise LaryError(f"NSVQ: code_seq_len={code_seq_len}, expected one of "
                      f"{sorted(CNN_LAYERS)}")
    self.grid, self.code_seq_len = grid, code_seq_len
    self.embedding_dim = embedding_dim
    self.codebooks = nnx.Param(jax.random.normal(
        rngs.params(), (num_embeddings, embedding_dim), jnp.float32))
    self.project_in = laq_layers.linear(dim, embedding_dim, dtype=dtype,
                                        rngs=rngs)
    self.project_out = laq_layers.linear(embedding_dim, dim, dtype=dtype,
                                         rngs=rngs)
    self.cnn_encoder = nnx.List([
        laq_layers.conv(embedding_dim, embedding_dim, k, strides=s,
                        padding=p, dtype=dtype, rngs=rngs)
        for k, s, p in CNN_LAYERS[code_seq_len]])
    out = _conv_out(grid, CNN_LAYERS[code_seq_len])
    if out[0] * out[1] != code_seq_len:
      raise LaryError(f"NSVQ: a {grid}x{grid} token grid gives {out[0]}x"
                      f"{out[1]} codes, not code_seq_len={code_seq_len}")

  def encode(self, tokens: jax.Array) -> jax.Array:
    """Tokens [B, grid * grid, D] -> codes [B * code_seq_len, quant_dim]."""
    b = tokens.shape[0]
    x = self.project_in(tokens).reshape(b, self.grid, self.grid, -1)
    for i, layer in enumerate(self.cnn_encoder):
      x = layer(jax.nn.relu(x) if i else x)
    return x.reshape(-1, self.embedding_dim)

  def decode(self, codes: jax.Array, batch: int) -> jax.Array:
    """Codes [B * n, q] -> [B, n, D], with upstream's interleaving reshape."""
    x = codes.reshape(batch, self.embedding_dim, -1).transpose(0, 2, 1)
    return self.project_out(x)

  def nearest(self, z: jax.Array) -> jax.Array:
    """Index of the nearest codebook entry for each row of z [M, q]."""
    cb = self.codebooks[...]
    dist = (jnp.sum(z**2, axis=1, keepdims=True) - 2 * z @ cb.T
            + jnp.sum(cb**2, axis=1)[None])
    return jnp.argmin(dist, axis=1)

  def __call__(self, first: jax.Array, last: jax.Array, *,
               noise: jax.Array | None, mode: str = "nsvq"
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Quantises the change from `first` to `last`.

    Args:
      first, last: encoder tokens [B, grid * grid, D] of the two frames.
      noise: standard normal [B * code_seq_len, quant_dim] (mode "nsvq").
      mode: "nsvq" (training, and upstream's extraction): z plus a random
        vector as long as the quantisation error; "quantized": the nearest
        codes (upstream's `inference`); "continuous": z itself.

    Returns:
      (tokens [B, code_seq_len, D], {"indices" int32 [B, code_seq_len],
      "perplexity" scalar, "z" [B * n, q] the unquantised difference}).
    """
    b = first.shape[0]
    z = self.encode(last) - self.encode(first)
    z = z.astype(jnp.float32)
    idx = self.nearest(jax.lax.stop_gradient(z))
    hard = self.codebooks[...][idx]
    if mode == "nsvq":
      if noise is None:
        raise LaryError("NSVQ mode 'nsvq' needs a noise array (or a key)")
      res = jnp.sqrt(jnp.sum(jnp.square(z - hard), axis=1, keepdims=True))
      rnorm = jnp.sqrt(jnp.sum(jnp.square(noise), axis=1, keepdims=True))
      q = z + (res / rnorm + EPS) * noise
    elif mode == "quantized":
      q = hard
    elif mode == "continuous":
      q = z
    else:
      raise LaryError(f"NSVQ mode {mode!r}: expected nsvq, quantized or "
                      "continuous")
    tokens = self.decode(q, b)
    stats = {"indices": idx.reshape(b, -1).astype(jnp.int32),
             "perplexity": perplexity(idx, self.codebooks.shape[0]),
             "z": z}
    return tokens, stats


def _conv_out(n: int, layers) -> tuple[int, int]:
  h = w = n
  for (kh, kw), s, p in layers:
    h = (h + 2 * p - kh) // s + 1
    w = (w + 2 * p - kw) // s + 1
  return h, w


def perplexity(indices: jax.Array, num_codes: int) -> jax.Array:
  """exp(entropy) of the code histogram of `indices` (upstream's formula)."""
  probs = jnp.mean(jax.nn.one_hot(indices.reshape(-1), num_codes), axis=0)
  return jnp.exp(-jnp.sum(probs * jnp.log(probs + EPS)))


def count_usage(usage: jax.Array, indices: jax.Array) -> jax.Array:
  """Adds one step's code usage to `usage` [K] (int32), as upstream counts.

  Upstream increments `codebooks_used[indices] += 1` with repeated indices,
  which adds 1 per *step* to every code used at least once in the batch.
  """
  used = jnp.zeros(usage.shape, jnp.bool_).at[indices.reshape(-1)].set(True)
  return usage + used.astype(usage.dtype)


def replacement_due(step: int) -> bool:
  """Whether upstream re-seeds dead codes after training step `step`.

  Every 10 steps below 100, every 100 below 1000, every 500 below 5000,
  never at step 0 nor from step 5000 on.
  """
  return step != 0 and ((step % 10 == 0 and step < 100)
                        or (step % 100 == 0 and step < 1000)
                        or (step % 500 == 0 and step < 5000))


def replace_unused_codes(codebook: jax.Array, usage: jax.Array,
                         key: jax.Array, *, num_batches: int,
                         threshold: float = DISCARD_THRESHOLD,
                         noise_scale: float = EPS
                         ) -> tuple[jax.Array, jax.Array]:
  """Re-seeds dead codebook entries from live ones (upstream's NSVQ rule).

  A code is dead when `usage / num_batches < threshold`. Upstream calls this
  with `num_batches` = the batch size (not a number of batches), right after
  the forward pass of a step where `replacement_due(step)`, and then resets
  the usage counts to zero. Dead codes become copies of live ones (plus
  1e-12 noise, which vanishes in float32): the i-th dead code (in index
  order) takes the i-th live code, or, when there are fewer live codes than
  dead ones, a random draw without replacement from the live codes repeated
  enough times. With no live code at all every code gets 1e-12 noise (and
  counts as replaced, as upstream reports it).

  Args:
    codebook: [K, q] float32.
    usage: [K] steps each code was used in since the last reset.
    key: PRNG key.
    num_batches: the divisor of `usage` (upstream: the batch size).
    threshold: upstream's `discarding_threshold`, 0.1.
    noise_scale: std of the noise added to the copies (upstream: 1e-12).
      Copies of one live code that stay equal in float32 tie in every
      nearest-code search, so the first wins and the rest die again; a
      visible scale (e.g. 1e-2) lets the copies split its inputs.

  Returns:
    (new codebook [K, q], number of replaced codes). Pure and jittable;
    reset `usage` to zeros afterwards.
  """
  k = codebook.shape[0]
  live = usage.astype(jnp.float32) / num_batches >= threshold
  n_live = jnp.sum(live)
  n_dead = k - n_live
  # Live indices in order, then dead ones (argsort of a stable key).
  live_idx = jnp.argsort(~live, stable=True)
  dead_rank = jnp.cumsum(~live) - 1  # i for the i-th dead code
  # Upstream repeats the live codes int(dead / live) + 1 times and shuffles.
  reps = (n_dead / jnp.maximum(n_live, 1)).astype(jnp.int32) + 1
  pool = jnp.arange(k * (k + 1))
  valid = pool < n_live * reps
  kperm, knoise = jax.random.split(key)
  prio = jnp.where(valid, jax.random.uniform(kperm, pool.shape), 2.0)
  shuffled = pool[jnp.argsort(prio)][:k] % jnp.maximum(n_live, 1)
  src_rank = jnp.where(n_live < n_dead, shuffled[dead_rank], dead_rank)
  source = codebook[live_idx[jnp.clip(src_rank, 0, k - 1)]]
  noise = noise_scale * jax.random.normal(knoise, codebook.shape,
                                         codebook.dtype)
  replaced = jnp.where((~live)[:, None], source + noise, codebook)
  out = jnp.where(n_live == 0, codebook + noise, replaced)
  return out, n_dead
