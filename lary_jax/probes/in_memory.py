"""Small splits held in memory: probe training without an input pipeline.

LARY-Sim's probes make hundreds of small steps, and per step the grain
pipeline, the host-to-device copy and the dispatch cost more than the step
itself (a `pixels` batch is 87 MB of stored tokens that the probe first
averages to a 2 x 2 grid). A split whose rows fit `budget_mb` after the
probe's own input transform (`prepare`, e.g. that token pooling) is instead
read once into arrays on the devices; an epoch is then one compiled
`lax.scan` over its steps, each gathering its global batch by the index
order the streaming pipeline reads (`pipeline.train_order`), and evaluation
runs over the held arrays in batches of the same size as the pipeline's.

  source rows -> prepare (once) -> device arrays
  order[step * B : (step + 1) * B] -> gather -> step_fn -> ... (one scan)

A command trains one run per seed on the same stores: `Store` reads and
prepares each store once for all of them, and a seed's splits (its training
rows, its held-out slice) are row ids into those arrays (`Rows`), gathered
on the device, so the held arrays exist once.

Single process only: with several processes each reads its own part of a
batch, which the streaming pipeline does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

_CHUNK = 64  # rows read and prepared at a time


def load(source: Any, keys: Sequence[str], *, budget_mb: float,
         prepare: Callable[[jax.Array], jax.Array] | None = None
         ) -> dict[str, np.ndarray] | None:
  """Every row's `keys` as host arrays, or None if they would not fit.

  Args:
    source: random-access rows (dicts holding `keys`).
    keys: what to read; `features` goes through `prepare`.
    budget_mb: the most the prepared arrays may take; <= 0 turns this off.
    prepare: a batched jax function of stored features (e.g. the probe's
      token pooling), applied once here instead of at every step.

  Returns:
    key -> [N, ...] arrays in row order, or None (several processes, an
    empty split, or over budget).
  """
  n = len(source)
  if budget_mb <= 0 or not n or jax.process_count() > 1:
    return None
  prepare_jit = jax.jit(prepare) if prepare is not None else None

  def rows(start: int) -> dict[str, np.ndarray]:
    items = [source[i] for i in range(start, min(start + _CHUNK, n))]
    out = {k: np.stack([np.asarray(item[k]) for item in items]) for k in keys}
    if prepare_jit is not None and "features" in out:
      out["features"] = np.asarray(prepare_jit(out["features"]))
    return out

  first = rows(0)
  per_row = sum(v[0].nbytes for v in first.values())
  if per_row * n > budget_mb * 2**20:
    return None
  out = {k: np.empty((n, *v.shape[1:]), v.dtype) for k, v in first.items()}
  for start in range(0, n, _CHUNK):
    chunk = first if start == 0 else rows(start)
    for k, v in chunk.items():
      out[k][start:start + len(v)] = v
  return out


class Rows:
  """The records `ids` of a source, renumbered 0..len(ids)-1."""

  def __init__(self, source: Any, ids: np.ndarray):
    self.source, self.ids = source, np.asarray(ids, np.int64)

  def __len__(self) -> int:
    return len(self.ids)

  def __getitem__(self, i: int) -> Any:
    return self.source[int(self.ids[i])]


@dataclasses.dataclass(frozen=True)
class Held:
  """A split held on the devices: its store's arrays and, where the split
  is some of the store's rows (`Rows`), their ids (None: every row)."""

  arrays: Mapping[str, jax.Array]
  ids: np.ndarray | None = None

  def rows(self, positions: np.ndarray) -> np.ndarray:
    """Store rows of the split's rows `positions`."""
    return positions if self.ids is None else self.ids[positions].astype(
        positions.dtype)


class Store:
  """Sources read and prepared once, held on the devices for every run of
  a command (one per seed), while they fit `budget_mb` together."""

  def __init__(self, budget_mb: float,
               prepare: Callable[[jax.Array], jax.Array] | None = None):
    self._budget, self._prepare = budget_mb, prepare
    self._held: dict[int, tuple[Any, dict[str, jax.Array]]] = {}
    self._refused = False

  def hold(self, splits: Mapping[str, tuple[Any, Sequence[str]]],
           mesh: Mesh) -> dict[str, Held] | None:
    """split name -> `Held`, for (source, keys) each; None where they do
    not fit together (or were dropped): the streaming pipeline then runs.
    """
    if self._refused:
      return None
    bases = {}  # id(base source) -> (base, keys), in order of first use
    for source, keys in splits.values():
      base = source.source if isinstance(source, Rows) else source
      _, seen = bases.get(id(base), (base, ()))
      bases[id(base)] = base, tuple(dict.fromkeys((*seen, *keys)))
    budget = self._budget - sum(
        a.nbytes for _, arrays in self._held.values()
        for a in arrays.values()) / 2**20
    for key, (base, keys) in bases.items():
      held = self._held.get(key)
      if held is not None and set(keys) <= set(held[1]):
        continue
      arrays = load(base, keys, budget_mb=budget, prepare=self._prepare)
      if arrays is None:
        self.drop()
        return None
      budget -= sum(a.nbytes for a in arrays.values()) / 2**20
      self._held[key] = base, to_devices(arrays, mesh)
    out = {}
    for name, (source, _) in splits.items():
      if isinstance(source, Rows):
        out[name] = Held(self._held[id(source.source)][1], source.ids)
      else:
        out[name] = Held(self._held[id(source)][1])
    return out

  def drop(self) -> None:
    """Frees the held arrays; later `hold`s stream."""
    self._held.clear()
    self._refused = True


def epoch_indices(order: Any, first_step: int, steps: int,
                  global_batch: int) -> np.ndarray:
  """[steps, B] record ids of global batches first_step ... + steps - 1."""
  start = first_step * global_batch
  ids = [order[p] for p in range(start, start + steps * global_batch)]
  return np.asarray(ids, np.int32).reshape(steps, global_batch)


def to_devices(arrays: Mapping[str, np.ndarray], mesh: Mesh
               ) -> dict[str, jax.Array]:
  """A copy of every array on every device of the mesh."""
  replicated = NamedSharding(mesh, P())
  return {k: jax.device_put(v, replicated) for k, v in arrays.items()}


def make_epoch(step_fn: Callable[..., tuple[Any, ...]], keys: Sequence[str],
               mesh: Mesh, compiler_options: dict[str, Any] | None = None,
               state_shardings: tuple[Any, Any] | None = None
               ) -> Callable[..., tuple[Any, ...]]:
  """Jitted `epoch(params, opt_state, first_step, data, ids)`.

  Runs `step_fn(params, opt_state, step, *batch) -> (params, opt_state,
  *outs)` for each row of `ids` [steps, B], with `batch` the rows `ids[s]`
  of `data[k]` for k in `keys`, split over the `data` mesh axis as the
  streaming pipeline's batches are. Returns (params, opt_state, outs), each
  out stacked over the steps. `state_shardings` pins (params, opt_state) to
  the shardings they come in with (e.g. FSDP-sharded leaves).
  """
  batch_sharding = NamedSharding(mesh, P("data"))

  def epoch(params, opt_state, first_step, data, ids):
    def body(carry, xs):
      step, rows = xs
      batch = [jax.lax.with_sharding_constraint(data[k][rows], batch_sharding)
               for k in keys]
      params, opt_state, *outs = step_fn(*carry, step, *batch)
      return (params, opt_state), tuple(outs)

    steps = first_step + jnp.arange(ids.shape[0], dtype=jnp.int32)
    (params, opt_state), outs = jax.lax.scan(body, (params, opt_state),
                                             (steps, ids))
    return params, opt_state, outs

  shardings = {}
  if state_shardings is not None:
    replicated = NamedSharding(mesh, P())
    shardings = dict(
        in_shardings=(*state_shardings, replicated, replicated, replicated),
        out_shardings=(*state_shardings, replicated))
  return jax.jit(epoch, donate_argnums=(0, 1),
                 compiler_options=compiler_options, **shardings)


def predict(fn: Callable[[int, jax.Array], jax.Array], held: Held,
            eval_batch: int, mesh: Mesh, axis: int = 0) -> np.ndarray:
  """`fn(k, batch)` over every row of a held split's features once, in
  batches of `eval_batch`.

  Batch k holds rows [k * eval_batch, (k + 1) * eval_batch); the last is
  padded with row 0 and the padding dropped, so every call has one shape.
  `axis` is the batch axis of fn's output.
  """
  features = held.arrays["features"]
  n = features.shape[0] if held.ids is None else len(held.ids)
  sharding = NamedSharding(mesh, P("data"))
  out = []
  for k, start in enumerate(range(0, n, eval_batch)):
    rows = np.arange(start, start + eval_batch)
    rows = held.rows(np.where(rows < n, rows, 0))
    batch = jax.device_put(features[rows], sharding)
    out.append(np.asarray(fn(k, batch)))
  return np.concatenate(out, axis=axis).take(np.arange(n), axis=axis)
