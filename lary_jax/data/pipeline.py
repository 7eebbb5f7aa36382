"""grain pipelines: a random-access split -> per-process batches -> arrays.

One chain, top to bottom:

  global order of record positions (shuffled / class-balanced / padded)
  -> the process's rows of every global batch
  -> read records (+ `index`, `_mask`) -> decode / targets -> numeric keys
  -> batch of global_batch // process_count -> iterator -> global jax.Array

The global order is built before any process split, so the examples in each
global batch do not depend on how many processes or devices read them:
process p reads rows [p * L, (p + 1) * L) of every global batch of size
B = L * process_count, and only those.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import flags
import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lary_jax.data import images
from lary_jax.data import normalize
from lary_jax.errors import LaryError

Record = dict[str, Any]
# Keys that every batch carries: the record's position in its split (to join
# with example identities later) and False on evaluation padding.
INDEX_KEY = "index"
MASK_KEY = "_mask"


# ------------------------------------------------------------------ transforms


def _decode(data: bytes, *, record: Record, key: str,
            image_size: int) -> np.ndarray:
  try:
    image = images.decode_image(data)
  except Exception as e:  # pylint: disable=broad-except
    raise LaryError(
        f"record {record.get(INDEX_KEY)}: cannot decode image in key {key!r} "
        f"({e})") from e
  if image.shape != (image_size, image_size, 3):
    raise LaryError(
        f"record {record.get(INDEX_KEY)}: image in key {key!r} has shape "
        f"{image.shape}, expected ({image_size}, {image_size}, 3)")
  return image


class DecodedFrames:
  """Encoded frame bytes -> the decoded array, kept for the whole process.

  Every decode transform with a `cache_mb` reads and fills this one store,
  so a frame decoded once (by a LAM reading a small dataset for hundreds of
  steps, or by the first model `run` extracts) is not decoded again by the
  next: each model of a run reads the same prepared frames. A kept array is
  read-only and equal to a fresh decode; the store grows only while it
  holds fewer bytes than the caller's `cache_mb`.
  """

  def __init__(self):
    self._frames: dict[bytes, np.ndarray] = {}
    self._bytes = 0
    self._lock = threading.Lock()  # grain reads with a pool of threads

  def get(self, data: bytes, decode: Callable[[], np.ndarray],
          cache_mb: float) -> np.ndarray:
    """The decoded `data`: kept, or `decode()` (kept if it fits)."""
    image = self._frames.get(data)
    if image is not None:
      return image
    image = decode()
    with self._lock:
      if (data not in self._frames
          and self._bytes + image.nbytes <= cache_mb * 2**20):
        image.flags.writeable = False
        self._frames[data] = image
        self._bytes += image.nbytes
    return image

  def clear(self) -> None:
    """Forgets every frame (frees the memory)."""
    with self._lock:
      self._frames.clear()
      self._bytes = 0

  @property
  def nbytes(self) -> int:
    return self._bytes


DECODED_FRAMES = DecodedFrames()


def _decode_kept(data: bytes, *, record: Record, key: str, image_size: int,
                 cache_mb: float) -> np.ndarray:
  decode = functools.partial(_decode, data, record=record, key=key,
                             image_size=image_size)
  if cache_mb <= 0:
    return decode()
  image = DECODED_FRAMES.get(data, decode, cache_mb)
  if image.shape != (image_size, image_size, 3):
    return decode()  # kept for another size: the error a decode gives
  return image


@dataclasses.dataclass(frozen=True)
class DecodeFrames(grain.transforms.Map):
  """Decodes a clip's encoded frames into uint8 [num_frames, S, S, 3].

  The frames are read from `key` and written to `out_key` (default: `key`).
  With `cache_mb` > 0 decoded frames are kept in `DECODED_FRAMES`.
  """

  key: str = "frames"
  num_frames: int = 9
  image_size: int = 224
  out_key: str = ""
  cache_mb: float = 0.0

  def map(self, record: Record) -> Record:
    encoded = record[self.key]
    if len(encoded) != self.num_frames:
      raise LaryError(
          f"record {record.get(INDEX_KEY)}: key {self.key!r} holds "
          f"{len(encoded)} frames, expected {self.num_frames}")
    frames = np.stack([
        _decode_kept(data, record=record, key=self.key,
                     image_size=self.image_size, cache_mb=self.cache_mb)
        for data in encoded
    ])  # [T, S, S, 3]
    return {**record, self.out_key or self.key: frames}


@dataclasses.dataclass(frozen=True)
class DecodePair(grain.transforms.Map):
  """Decodes a (source, target) image pair into uint8 [2, S, S, 3].

  With `cache_mb` > 0 decoded frames are kept in `DECODED_FRAMES`: a small
  dataset read for hundreds of steps (a LAM on LARY-Sim, whose clips share
  frames between pairs) then decodes every frame once instead of at every
  step. Same arrays either way.
  """

  src_key: str = "src_image"
  tgt_key: str = "tgt_image"
  out_key: str = "images"
  image_size: int = 224
  cache_mb: float = 0.0

  def map(self, record: Record) -> Record:
    pair = np.stack([
        _decode_kept(record[k], record=record, key=k,
                     image_size=self.image_size, cache_mb=self.cache_mb)
        for k in (self.src_key, self.tgt_key)
    ])  # [2, S, S, 3]
    out = {k: v for k, v in record.items()
           if k not in (self.src_key, self.tgt_key)}
    out[self.out_key] = pair
    return out


@dataclasses.dataclass(frozen=True)
class StackArrays(grain.transforms.Map):
  """Stacks numeric record keys (e.g. a pair's two states) into `out_key`.

  One key is taken as it is ([T, S] per-frame states of a clip); several
  are stacked along a new first axis ([2, S] for a pair).
  """

  keys: tuple[str, ...]
  out_key: str

  def map(self, record: Record) -> Record:
    arrays = [np.asarray(record[k], np.float32) for k in self.keys]
    out = {k: v for k, v in record.items() if k not in self.keys}
    out[self.out_key] = arrays[0] if len(arrays) == 1 else np.stack(arrays)
    return out


@dataclasses.dataclass(frozen=True)
class ActionTarget(grain.transforms.Map):
  """Makes the regression target from a record's action chunk.

  Writes `action` float32 [steps, D], normalised with the stats of the
  record's group (its robot_type), and `action_raw`, the same target before
  normalisation. steps is the chunk length, or 1 when `relative`.
  """

  stats: normalize.ActionStats
  relative: bool = False
  key: str = "action"
  group_key: str = "robot_type"

  def map(self, record: Record) -> Record:
    action = np.asarray(record[self.key], np.float32)
    if action.ndim != 2 or action.shape[1] != self.stats.dim:
      raise LaryError(
          f"record {record.get(INDEX_KEY)}: key {self.key!r} has shape "
          f"{action.shape}, expected [steps, {self.stats.dim}]")
    if self.relative:
      action = normalize.relative_target(action)  # [1, D]
    mean, std = self.stats.lookup(record.get(self.group_key, b""))
    return {
        **record,
        "action": normalize.normalize(action, mean, std),
        "action_raw": action,
    }


@dataclasses.dataclass(frozen=True)
class SelectKeys(grain.transforms.Map):
  """Keeps the numeric keys a batch needs (always `index` and `_mask`)."""

  keys: tuple[str, ...]

  def map(self, record: Record) -> Record:
    out = {}
    for key in (*self.keys, INDEX_KEY, MASK_KEY):
      if key not in record:
        raise LaryError(
            f"record {record.get(INDEX_KEY)} has no key {key!r} (keys: "
            f"{sorted(record)})")
      value = np.asarray(record[key])
      if value.dtype.kind not in "biuf":
        raise LaryError(
            f"record {record.get(INDEX_KEY)}: key {key!r} holds {value.dtype} "
            "data; only numeric keys can go into a batch")
      out[key] = value
    return out


# -------------------------------------------------------------- index orders


class _EpochOrder(grain.MapDataset):
  """An endless (or num_epochs long) record order drawn one epoch at a time.

  Position i of epoch e is a pure function of (seed, e, i), so the order is
  random-access and a checkpoint needs nothing but the iterator position.
  Each epoch is drawn at once with numpy and kept while it is read: grain's
  per-element shuffle cost ~70 us an index, seconds for a probe's
  thousands of steps.
  """

  def __init__(self, size: int, seed: int, num_epochs: int | None):
    super().__init__()
    self._size = size
    self._seed = seed
    self._length = (sys.maxsize if num_epochs is None
                    else size * num_epochs)
    self._cached: tuple[int, np.ndarray] | None = None

  def __len__(self) -> int:
    return self._length

  def _draw(self, rng: np.random.Generator) -> np.ndarray:
    raise NotImplementedError

  def _epoch(self, epoch: int) -> np.ndarray:
    cached = self._cached
    if cached is not None and cached[0] == epoch:
      return cached[1]
    draws = self._draw(np.random.default_rng([self._seed, epoch]))
    self._cached = (epoch, draws)
    return draws

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, i = divmod(index, self._size)
    return int(self._epoch(epoch)[i])


class _ShuffledOrder(_EpochOrder):
  """Every record once an epoch, in a new random order each epoch."""

  def __str__(self) -> str:
    return f"_ShuffledOrder(records={self._size})"

  def _draw(self, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(self._size)


class _BalancedOrder(_EpochOrder):
  """Class-balanced draws with replacement: uniform class, uniform member.

  An epoch is len(labels) draws, like a weighted sampler with replacement.
  """

  def __init__(self, labels: np.ndarray, seed: int, num_epochs: int | None):
    labels = np.asarray(labels)
    super().__init__(len(labels), seed, num_epochs)
    _, class_of, counts = np.unique(
        labels, return_inverse=True, return_counts=True)
    self._members = np.argsort(class_of, kind="stable")  # grouped by class
    self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    self._counts = counts

  def __str__(self) -> str:
    return f"_BalancedOrder(classes={len(self._counts)})"

  def _draw(self, rng: np.random.Generator) -> np.ndarray:
    cls = rng.integers(0, len(self._counts), self._size)
    member = rng.integers(0, self._counts[cls])
    return self._members[self._starts[cls] + member]


class _ProcessRows(grain.MapDataset):
  """The rows of every global batch that one process reads.

  Local position k of process p is global position
  (k // L) * B + p * L + k % L, with L = B // process_count.
  """

  def __init__(self, parent: grain.MapDataset, global_batch: int,
               process_index: int, process_count: int):
    super().__init__(parent)
    self._global_batch = global_batch
    self._local_batch = global_batch // process_count
    self._offset = process_index * self._local_batch

  def __len__(self) -> int:
    return len(self._parent) // self._global_batch * self._local_batch

  def __str__(self) -> str:
    return f"_ProcessRows(offset={self._offset}, rows={self._local_batch})"

  def _global(self, k: int) -> int:
    step, row = divmod(k, self._local_batch)
    return step * self._global_batch + self._offset + row

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._global(index)]

  def _getitems(self, indices: Sequence[int]):
    # grain's batched read path: one source read for a whole batch.
    return self._parent._getitems([self._global(k) for k in indices])


class _ReadRecords(grain.MapDataset):
  """Reads the records an order names, adding `index` and `_mask`.

  An order value v >= len(source) is evaluation padding: a copy of record
  v % len(source) with `_mask` False.
  """

  def __init__(self, order: grain.MapDataset, source: grain.MapDataset):
    super().__init__([order, source])
    self._order = order
    self._source = source
    self._size = len(source)

  def __len__(self) -> int:
    return len(self._order)

  def __str__(self) -> str:
    return "_ReadRecords"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._getitems([index])[0]

  def _getitems(self, indices: Sequence[int]):
    order = self._order._getitems(indices)
    positions = [v % self._size for v in order]
    records = self._source._getitems(positions)
    out = []
    for v, i, record in zip(order, positions, records):
      if not isinstance(record, Mapping):
        raise LaryError(
            f"record {i} is a {type(record).__name__}, expected a dict")
      out.append({**record, INDEX_KEY: np.int64(i),
                  MASK_KEY: np.bool_(v < self._size)})
    return out


# ------------------------------------------------------------------ datasets


def _as_map_dataset(source: Any) -> grain.MapDataset:
  if isinstance(source, grain.MapDataset):
    return source
  return grain.MapDataset.source(source)


def _process(process_index: int | None,
             process_count: int | None) -> tuple[int, int]:
  if process_count is None:
    process_count = jax.process_count()
  if process_index is None:
    process_index = jax.process_index()
  if not 0 <= process_index < process_count:
    raise LaryError(
        f"process_index {process_index} is outside [0, {process_count})")
  return process_index, process_count


def _check_batch(global_batch: int, process_count: int) -> None:
  if global_batch <= 0 or global_batch % process_count:
    raise LaryError(
        f"global batch {global_batch} must be a positive multiple of the "
        f"process count {process_count}")


def _finish(order: grain.MapDataset, source: grain.MapDataset,
            transforms: Sequence[grain.transforms.Map], keys: Sequence[str],
            global_batch: int, process_index: int,
            process_count: int) -> grain.MapDataset:
  ds = _ProcessRows(order, global_batch, process_index, process_count)
  ds = _ReadRecords(ds, source)
  for transform in transforms:
    ds = ds.map(transform)
  ds = ds.map(SelectKeys(tuple(keys)))
  return ds.batch(global_batch // process_count, drop_remainder=True)


def train_dataset(
    source: Any,
    transforms: Sequence[grain.transforms.Map],
    keys: Sequence[str],
    *,
    global_batch: int,
    seed: int,
    num_epochs: int | None = None,
    labels: np.ndarray | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
  """Training batches of this process, shuffled anew every epoch.

  Global batches run across epoch boundaries (shuffle, then repeat, then
  batch); a last global batch that is not full is dropped.

  Args:
    source: random-access records (a TFDS ArrayRecord data source, a
      Sequence of dicts, or a grain MapDataset).
    transforms: grain Map transforms applied to each record, in order.
    keys: the numeric keys to batch (besides `index` and `_mask`).
    global_batch: examples per step over all processes.
    seed: order seed.
    num_epochs: passes over the data; None repeats forever.
    labels: [N] class of every record. When given, records are drawn with
      replacement with probability proportional to 1 / size of their class.
    process_index: this process (default `jax.process_index()`).
    process_count: processes (default `jax.process_count()`).

  Returns:
    A MapDataset of local batches of global_batch // process_count rows.
  """
  process_index, process_count = _process(process_index, process_count)
  _check_batch(global_batch, process_count)
  source = _as_map_dataset(source)
  order = train_order(len(source), seed=seed, num_epochs=num_epochs,
                      labels=labels)
  return _finish(order, source, transforms, keys, global_batch, process_index,
                 process_count)


def train_order(num_records: int, *, seed: int, num_epochs: int | None = None,
                labels: np.ndarray | None = None) -> grain.MapDataset:
  """The record index at each global position of `train_dataset`'s stream.

  Position p of the stream (step p // B, row p % B of its global batch) reads
  record `train_order(...)[p]`: a reshuffle each epoch, or class-balanced
  draws with replacement when `labels` are given.
  """
  if seed < 0:
    raise LaryError(f"seed {seed}: expected a non-negative integer")
  if not num_records:
    raise LaryError("the training split has no records")
  if labels is None:
    return _ShuffledOrder(num_records, seed, num_epochs)
  if len(labels) != num_records:
    raise LaryError(
        f"{len(labels)} labels for {num_records} records: expected one "
        "label per record")
  return _BalancedOrder(labels, seed, num_epochs)


def eval_steps(num_examples: int, global_batch: int) -> int:
  """Steps that cover `num_examples` once, the last batch padded."""
  return math.ceil(num_examples / global_batch)


def eval_dataset(
    source: Any,
    transforms: Sequence[grain.transforms.Map],
    keys: Sequence[str],
    *,
    global_batch: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
  """Evaluation batches of this process: every record exactly once, in order.

  The split is padded to a multiple of global_batch with copies of its first
  records flagged `_mask` False, so nothing is dropped and every process runs
  the same `eval_steps(len(source), global_batch)` steps.

  Args:
    source: random-access records, as for `train_dataset`.
    transforms: grain Map transforms applied to each record, in order.
    keys: the numeric keys to batch (besides `index` and `_mask`).
    global_batch: examples per step over all processes.
    process_index: this process (default `jax.process_index()`).
    process_count: processes (default `jax.process_count()`).

  Returns:
    A MapDataset of local batches of global_batch // process_count rows.
  """
  process_index, process_count = _process(process_index, process_count)
  _check_batch(global_batch, process_count)
  source = _as_map_dataset(source)
  if not len(source):
    raise LaryError("the evaluation split has no records")
  padded = eval_steps(len(source), global_batch) * global_batch
  order = grain.MapDataset.range(padded)
  return _finish(order, source, transforms, keys, global_batch, process_index,
                 process_count)


def make_iterator(
    dataset: grain.MapDataset,
    *,
    worker_count: int = 0,
    read_threads: int = 4,
    prefetch: int = 8,
) -> grain.DatasetIterator:
  """Returns a checkpointable iterator over a dataset's batches.

  `get_state()` / `set_state()` (or `grain.checkpoint.CheckpointSave` /
  `CheckpointRestore` in an orbax CheckpointManager) resume it exactly.

  Args:
    dataset: batches from `train_dataset` or `eval_dataset`.
    worker_count: worker processes that read and decode; 0 reads in this
      process.
    read_threads: threads reading and decoding batches in each process.
    prefetch: batches buffered ahead by those threads.
  """
  ds = dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=read_threads,
                        prefetch_buffer_size=prefetch))
  if worker_count > 0:
    # grain's worker start-up reads its absl flags; outside an absl app
    # (notebooks, pytest) nothing parsed them, so take their defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(ds)


# ------------------------------------------------------------------- devices


def to_device(local_batch: Mapping[str, np.ndarray], mesh: Mesh,
              axis: str = "data") -> dict[str, jax.Array]:
  """Assembles each process's local batch into global arrays.

  Rows are split over `axis` of the mesh; dtypes are kept, so images cross
  to the device as uint8 (a quarter of float32's bytes).

  Args:
    local_batch: this process's rows, [L, ...] per key.
    mesh: the device mesh (see `lary_jax.mesh.make_mesh`).
    axis: the mesh axis the batch is split over.

  Returns:
    key -> [L * process_count, ...] global array.
  """
  sharding = NamedSharding(mesh, P(axis))
  return {
      key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
      for key, value in local_batch.items()
  }


@jax.jit
def images_to_float(images: jax.Array) -> jax.Array:
  """uint8 images -> float32 in [0, 1], on the device they live on."""
  return images.astype(jnp.float32) / 255.0
