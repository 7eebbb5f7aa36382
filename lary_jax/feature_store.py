"""Extracted features on disk: checksummed shards, a manifest, grain readers.

A store is one directory per (dataset, split, model):

  run.json               what is extracted and how; fixed by the first run
  shard-00003-p001.npy   the rows of shard 3 that process 1 computed,
                         [rows, *token_shape] in the storage dtype
  shard-00003-p001.json  its sidecar: size and SHA-256 of the .npy, and the
                         record index and identity of each of its rows
  manifest.json          written last, once every record has exactly one row

Each file is written under a temporary name and renamed into place, the data
before its sidecar, so a writer killed at any moment leaves whole shards and
files that `verify_shard` rejects, never a half shard that passes. Readers
take rows only from shards whose checksum matches.

`extract` writes stores from an encoder; `Writer` writes the same store from
rows computed anywhere else (PyTorch, numpy, another JAX program), so that
`classify` and `regress` probe any model's features.

Interop with upstream's one-`.npz`-per-row layout is in `upstream_npz`.
"""

from __future__ import annotations

import glob
import hashlib
import operator
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from lary_jax import atomic_io
from lary_jax.errors import LaryError

FORMAT = "lary-features/1"
MANIFEST = "manifest.json"
RUN = "run.json"
DTYPES = {"float16": np.dtype(np.float16), "float32": np.dtype(np.float32)}
# The record key that names an example, per extraction mode: a store's rows
# are matched to the prepared split's records by index and by this key.
IDENTITY_KEYS = {"video": "video_path", "image": "src_path"}
FLOAT16_MAX = float(np.finfo(np.float16).max)
_SHARD_RE = re.compile(r"shard-(\d{5})-p(\d{3})\.json")


# ------------------------------------------------------------------ files


def storage_dtype(name: str) -> np.dtype:
  """"float16" / "float32" -> numpy dtype; anything else is a LaryError."""
  if name not in DTYPES:
    raise LaryError(f"storage dtype {name!r}: expected one of {list(DTYPES)}")
  return DTYPES[name]


def cast_rows(rows: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
  """Casts to the storage dtype, refusing values float16 cannot hold."""
  if dtype == np.float16:
    peak = np.abs(rows.astype(np.float32)).max(initial=0.0)
    if not np.isfinite(peak) or peak > FLOAT16_MAX:
      raise LaryError(f"{what}: features reach {peak:.4g}, beyond float16's "
                      f"{FLOAT16_MAX:g}; store float32 "
                      "(--config.extract.dtype=float32, Writer(dtype=...))")
  return rows.astype(dtype)


class _HashingFile:
  """A write-only file object that hashes what passes through it."""

  def __init__(self, f):
    self._f = f
    self.sha256 = hashlib.sha256()
    self.size = 0

  def write(self, data) -> int:
    data = memoryview(data).cast("B")
    self.sha256.update(data)
    self.size += len(data)
    return self._f.write(data)


def shard_stem(shard: int, process: int) -> str:
  return f"shard-{shard:05d}-p{process:03d}"


def write_shard(store_dir: str, shard: int, process: int,
                features: np.ndarray, index: np.ndarray,
                identity: Sequence[str]) -> dict[str, Any]:
  """Writes one shard (data, then sidecar), each atomically.

  Args:
    store_dir: the store directory.
    shard: shard number.
    process: the process that computed the rows.
    features: [rows, *token_shape].
    index: [rows] record index of each row.
    identity: the record identity (`src_path` / `video_path`) of each row.

  Returns:
    The sidecar.
  """
  if not len(features) == len(index) == len(identity):
    raise ValueError("features, index and identity differ in length")
  stem = shard_stem(shard, process)
  path = os.path.join(store_dir, stem + ".npy")
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    hashing = _HashingFile(f)
    np.lib.format.write_array(hashing, np.ascontiguousarray(features),
                              allow_pickle=False)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  sidecar = {
      "file": stem + ".npy", "shard": shard, "process": process,
      "bytes": hashing.size, "sha256": hashing.sha256.hexdigest(),
      "shape": list(features.shape), "dtype": features.dtype.name,
      "index": [int(i) for i in index], "identity": list(identity),
  }
  atomic_io.write_json(os.path.join(store_dir, stem + ".json"), sidecar)
  return sidecar


def verify_shard(store_dir: str, stem: str) -> tuple[dict | None, str]:
  """Checks a shard against its sidecar.

  Returns:
    (sidecar, "") for a whole shard; (None, why) when the sidecar is missing
    or unreadable, or the data's size, checksum or header disagree with it.
  """
  sidecar = atomic_io.read_json(os.path.join(store_dir, stem + ".json"))
  if sidecar is None:
    return None, "no readable sidecar"
  try:
    rows = sidecar["shape"][0]
    if not rows == len(sidecar["index"]) == len(sidecar["identity"]):
      return None, "sidecar rows disagree"
    path = os.path.join(store_dir, sidecar["file"])
    size = os.path.getsize(path)
  except (KeyError, TypeError, IndexError):
    return None, "malformed sidecar"
  except OSError:
    return None, "no data file"
  if size != sidecar["bytes"]:
    return None, f"{size} bytes, sidecar says {sidecar['bytes']} (truncated?)"
  if atomic_io.sha256_file(path) != sidecar["sha256"]:
    return None, "checksum mismatch (corrupt)"
  return sidecar, ""


def remove_shard(store_dir: str, stem: str) -> None:
  """Deletes a shard's files, the sidecar first (so it is never whole)."""
  for ext in (".json", ".npy"):
    try:
      os.remove(os.path.join(store_dir, stem + ext))
    except FileNotFoundError:
      pass


def remove_temporaries(store_dir: str, process: int | None = None) -> None:
  """Deletes files a killed writer (of `process`, or any) left half-written."""
  who = "*" if process is None else f"{process:03d}"
  for path in glob.glob(os.path.join(store_dir, f"shard-*-p{who}.*.tmp")):
    os.remove(path)


def sidecar_stems(store_dir: str) -> list[str]:
  return sorted(name[:-5] for name in os.listdir(store_dir)
                if _SHARD_RE.fullmatch(name))


# --------------------------------------------------------------- manifest


def write_manifest(store_dir: str, fields: Mapping[str, Any],
                   num_rows: int, stems: Sequence[str] | None = None
                   ) -> dict[str, Any]:
  """Joins the sidecars into `manifest.json`, which marks the store complete.

  Args:
    store_dir: the store directory.
    fields: what describes the store (model, checkpoint digest, dataset,
      split, token_shape, dtype, identity_key, ...).
    num_rows: records of the split; each must have exactly one row.
    stems: the shards to take (default every sidecar in the directory).

  Returns:
    The manifest.
  """
  shards, owner = [], np.full(num_rows, -1, np.int64)
  identities: list[str | None] = [None] * num_rows
  for k, stem in enumerate(stems if stems is not None
                           else sidecar_stems(store_dir)):
    sidecar = atomic_io.read_json(os.path.join(store_dir, stem + ".json"))
    if sidecar is None:
      raise LaryError(f"{store_dir}: sidecar of {stem} is unreadable")
    index = np.asarray(sidecar["index"], np.int64)
    if index.size and (index.min() < 0 or index.max() >= num_rows):
      raise LaryError(f"{store_dir}/{stem}: record index outside "
                      f"[0, {num_rows})")
    twice = index[owner[index] >= 0]
    if twice.size or len(np.unique(index)) != index.size:
      raise LaryError(f"{store_dir}/{stem}: record {twice[:1]} has two rows")
    owner[index] = k
    for i, name in zip(sidecar["index"], sidecar["identity"]):
      identities[i] = name
    shards.append({key: sidecar[key] for key in (
        "file", "shard", "process", "bytes", "sha256", "shape", "index")})
  missing = np.flatnonzero(owner < 0)
  if missing.size:
    raise LaryError(f"{store_dir}: {missing.size} of {num_rows} records have "
                    f"no features (first: {missing[:5].tolist()})")
  manifest = {**fields, "format": FORMAT, "num_rows": num_rows,
              "identities": identities, "shards": shards}
  atomic_io.write_json(os.path.join(store_dir, MANIFEST), manifest)
  return manifest


def read_manifest(store_dir: str) -> dict[str, Any]:
  """The manifest of a complete store; LaryError if there is none."""
  manifest = atomic_io.read_json(os.path.join(store_dir, MANIFEST))
  if manifest is None:
    raise LaryError(f"{store_dir} holds no complete feature store (no "
                    f"readable {MANIFEST}); run `extract` (it resumes)")
  if manifest.get("format") != FORMAT:
    raise LaryError(f"{store_dir}/{MANIFEST}: format "
                    f"{manifest.get('format')!r}, expected {FORMAT!r}")
  return manifest


# ------------------------------------------- a store from your own rows


class Writer:
  """Writes a store from features computed outside lary-jax.

  The store is the one `extract` writes (same files, checks and manifest),
  so `classify`/`regress` read it unchanged when it sits where they look:
  `<workdir>/features/DATASET/SPLIT/MODEL` (`workdir_layout.features_dir`).
  Row i holds the features of record i of the prepared split (`records`,
  e.g. `builder.as_data_source()[split]`) and carries that record's identity
  (`src_path` of a pair, `video_path` of a clip), which the probes check.

  Rows go into shards of `rows_per_shard` consecutive records; a shard is
  written (atomically, with its checksum) once all its rows are given. An
  interrupted run resumes: a new Writer on the same folder keeps every whole
  shard, and `todo` lists the record ranges still to compute; rows given for
  a finished shard are skipped. `close` writes the manifest once every
  record has its row. One process writes a store.

      with feature_store.Writer(store, records, mode="image", model="mine",
                                dataset="calvin", split="validation") as w:
        for rows in w.todo:
          w.write(rows.start, my_features(rows))  # [len(rows), *shape]
  """

  def __init__(self, store_dir: str, records: Any, *, mode: str, model: str,
               dataset: str, split: str, dtype: str = "float16",
               rows_per_shard: int = 256,
               fields: Mapping[str, Any] | None = None):
    """Opens (or resumes) the store.

    Args:
      store_dir: the store's folder (created).
      records: the split's records, random access, in record order.
      mode: "image" (features of each (src, tgt) pair; regression datasets)
        or "video" (of each 9-frame clip; classification datasets).
      model: the model's name, as `--model` names it to the probes.
      dataset: the dataset name (`calvin`, `human_1st`, ...).
      split: `train`, `validation` or `unseen`.
      dtype: storage dtype, "float16" or "float32".
      rows_per_shard: records per shard: the unit of resumption, held in
        memory until complete.
      fields: more descriptive fields for run.json and the manifest.
    """
    if mode not in IDENTITY_KEYS:
      raise LaryError(f"mode {mode!r}: expected one of {list(IDENTITY_KEYS)}")
    if not isinstance(rows_per_shard, int) or rows_per_shard < 1:
      raise LaryError(f"rows_per_shard={rows_per_shard!r}: expected a "
                      "positive integer")
    self.store_dir = store_dir
    self.records = records
    self.num_rows = len(records)
    if not self.num_rows:
      raise LaryError(f"{dataset} {split}: the split has no records")
    self._dtype = storage_dtype(dtype)
    self._rows_per_shard = rows_per_shard
    self._layout = {
        **(fields or {}), "model": model, "checkpoint": None,
        "checkpoint_digest": None, "dataset": dataset, "split": split,
        "format": FORMAT, "mode": mode, "identity_key": IDENTITY_KEYS[mode],
        "dtype": self._dtype.name, "num_rows": self.num_rows,
        "rows_per_shard": rows_per_shard, "writer": "feature_store.Writer"}
    os.makedirs(store_dir, exist_ok=True)
    found = atomic_io.read_json(os.path.join(store_dir, RUN))
    if found is not None:
      shape = found.get("token_shape")
      diff = sorted(k for k in set(found) | set(self._layout)
                    if k != "token_shape"
                    and found.get(k) != self._layout.get(k))
      if diff:
        raise LaryError(
            f"{store_dir} was started with other settings ({', '.join(diff)}"
            f": {[found.get(k) for k in diff]} then, "
            f"{[self._layout.get(k) for k in diff]} now); use those, or "
            "remove the folder")
      self._layout["token_shape"] = shape
    remove_temporaries(store_dir)
    self._done = set()
    for shard in range(self.num_shards):
      stem = shard_stem(shard, 0)
      if verify_shard(store_dir, stem)[0] is not None:
        self._done.add(shard)
      else:
        remove_shard(store_dir, stem)
    manifest = os.path.join(store_dir, MANIFEST)
    if len(self._done) < self.num_shards and os.path.exists(manifest):
      os.remove(manifest)  # no longer complete until the shards are redone
    self._buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  @property
  def num_shards(self) -> int:
    return -(-self.num_rows // self._rows_per_shard)

  def _rows(self, shard: int) -> range:
    start = shard * self._rows_per_shard
    return range(start, min(start + self._rows_per_shard, self.num_rows))

  @property
  def todo(self) -> list[range]:
    """The record ranges (one per unfinished shard) still to write."""
    return [self._rows(k) for k in range(self.num_shards)
            if k not in self._done]

  def write(self, start: int, features: Any,
            identities: Sequence[str] | None = None) -> None:
    """Gives the features of records `start`, `start + 1`, ...

    Args:
      start: the record index of the first row.
      features: [rows, *token_shape], numeric (numpy, or anything
        `np.asarray` takes, e.g. a CPU torch tensor); every row the same
        shape, the same in every call.
      identities: optional: the identities the rows were computed from,
        checked against the records' (a guard against misaligned rows).
    """
    try:
      start = operator.index(start)
    except TypeError:
      raise LaryError(f"{self.store_dir}: start={start!r} is not a record "
                      "index") from None
    rows = np.asarray(features)
    if rows.ndim < 1 or rows.dtype.kind not in "fiub":
      raise LaryError(f"{self.store_dir}: features must be a numeric array "
                      f"[rows, ...], got {rows.dtype} of shape {rows.shape}")
    end = start + len(rows)
    if not 0 <= start <= end <= self.num_rows:
      raise LaryError(f"{self.store_dir}: rows {start}..{end - 1} are outside"
                      f" the split's records 0..{self.num_rows - 1}")
    shape = list(rows.shape[1:])
    if self._layout.get("token_shape") is None:
      self._layout["token_shape"] = shape
      atomic_io.write_json(os.path.join(self.store_dir, RUN), self._layout)
    elif self._layout["token_shape"] != shape:
      raise LaryError(f"{self.store_dir}: rows of shape {shape}, but the "
                      f"store holds {self._layout['token_shape']}")
    if identities is not None:
      if len(identities) != len(rows):
        raise LaryError(f"{self.store_dir}: {len(identities)} identities for "
                        f"{len(rows)} rows")
      for i, name in zip(range(start, end), identities):
        if _text(name) != self._identity(i):
          raise LaryError(f"{self.store_dir}: row {i} was computed from "
                          f"{_text(name)!r}, but record {i} is "
                          f"{self._identity(i)!r}")
    rows = cast_rows(rows, self._dtype, f"{self.store_dir} rows {start}.."
                     f"{end - 1}")
    for shard in range(start // self._rows_per_shard,
                       -(-end // self._rows_per_shard)):
      if shard in self._done:
        continue  # written by an earlier run
      span = self._rows(shard)
      lo, hi = max(start, span.start), min(end, span.stop)
      data, given = self._buffers.setdefault(shard, (
          np.empty((len(span), *shape), self._dtype),
          np.zeros(len(span), bool)))
      if given[lo - span.start:hi - span.start].any():
        raise LaryError(f"{self.store_dir}: a row of {lo}..{hi - 1} is given "
                        "twice")
      data[lo - span.start:hi - span.start] = rows[lo - start:hi - start]
      given[lo - span.start:hi - span.start] = True
      if given.all():
        write_shard(self.store_dir, shard, 0, data, np.asarray(span),
                    [self._identity(i) for i in span])
        self._done.add(shard)
        del self._buffers[shard]

  def _identity(self, i: int) -> str:
    return _text(self.records[i][self._layout["identity_key"]])

  def close(self) -> dict[str, Any]:
    """Writes the manifest; LaryError if a record has no row yet."""
    missing = self.todo
    if missing:
      first = missing[0]
      raise LaryError(
          f"{self.store_dir}: {sum(len(r) for r in missing)} of "
          f"{self.num_rows} records have no features yet (first unfinished "
          f"shard: records {first.start}..{first.stop - 1}); write them and "
          "close again")
    return write_manifest(self.store_dir, self._layout, self.num_rows,
                          [shard_stem(k, 0) for k in range(self.num_shards)])

  def __enter__(self) -> Writer:
    return self

  def __exit__(self, kind, value, traceback) -> None:
    if kind is None:
      self.close()


# ---------------------------------------------------------------- readers


class FeatureSource:
  """Random-access rows of a complete store (a grain data source).

  `source[i]` is `{"features": [*token_shape], "index": i}` for record i of
  the split. A shard's checksum is checked the first time this process
  touches it; a mismatch raises instead of returning the rows.
  """

  def __init__(self, store_dir: str, *, verify: bool = True):
    self.store_dir = store_dir
    self.manifest = read_manifest(store_dir)
    self.verify = verify
    n = self.manifest["num_rows"]
    self._shard = np.full(n, -1, np.int64)
    self._row = np.zeros(n, np.int64)
    for k, shard in enumerate(self.manifest["shards"]):
      index = np.asarray(shard["index"], np.int64)
      self._shard[index] = k
      self._row[index] = np.arange(index.size)
    if (self._shard < 0).any():
      raise LaryError(f"{store_dir}/{MANIFEST} misses rows")
    self._arrays: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return len(self._shard)

  def __getstate__(self):  # memory maps stay in the process that made them
    return {**self.__dict__, "_arrays": {}}

  @property
  def token_shape(self) -> tuple[int, ...]:
    return tuple(self.manifest["token_shape"])

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(self.manifest["dtype"])

  @property
  def identities(self) -> list[str]:
    return self.manifest["identities"]

  def shard_rows(self, k: int) -> np.ndarray:
    """The rows of the manifest's k-th shard, memory-mapped and checked."""
    if k not in self._arrays:
      shard = self.manifest["shards"][k]
      path = os.path.join(self.store_dir, shard["file"])
      if self.verify and (not os.path.exists(path)
                          or atomic_io.sha256_file(path) != shard["sha256"]):
        raise LaryError(f"{path}: missing, or its checksum differs from the "
                        "manifest; rerun `extract` to redo that shard")
      array = np.load(path, mmap_mode="r", allow_pickle=False)
      if list(array.shape) != shard["shape"]:
        raise LaryError(f"{path}: shape {array.shape}, manifest says "
                        f"{shard['shape']}")
      self._arrays[k] = array
    return self._arrays[k]

  def features(self, i: int) -> np.ndarray:
    """Record i's features, [*token_shape], in the storage dtype."""
    return np.array(self.shard_rows(int(self._shard[i]))[self._row[i]])

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f"record {i} outside [0, {len(self)})")
    return {"features": self.features(i), "index": np.int64(i)}

  def _getitems(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    return [self[i] for i in indices]

  def read_all(self) -> np.ndarray:
    """Every row in record order, [num_rows, *token_shape]."""
    out = np.empty((len(self), *self.token_shape), self.dtype)
    for k, shard in enumerate(self.manifest["shards"]):
      out[np.asarray(shard["index"], np.int64)] = self.shard_rows(k)
    return out


def check_identities(features: FeatureSource, records: Any) -> None:
  """Raises a LaryError unless record i is the row features were made of."""
  if len(records) != len(features):
    raise LaryError(f"{features.store_dir}: {len(features)} feature rows "
                    f"for {len(records)} records; extract again")
  key = features.manifest["identity_key"]
  for i in range(len(records)):
    identity = _text(records[i][key])
    if identity != features.identities[i]:
      raise LaryError(
          f"record {i} is {identity!r} but {features.store_dir} holds the "
          f"features of {features.identities[i]!r}; the dataset was "
          "prepared again since extraction: extract again")


class JoinedSource:
  """Features joined with the dataset's records (labels, actions, ...).

  `source[i]` is record i's chosen `keys` plus `features` and `index`. The
  record's identity must be the one the features were extracted from.
  """

  def __init__(self, features: FeatureSource, records: Any,
               keys: Sequence[str]):
    if len(records) != len(features):
      raise LaryError(f"{features.store_dir}: {len(features)} feature rows "
                      f"for {len(records)} records; extract again")
    self.features = features
    self.records = records
    self.keys = tuple(keys)
    self._identity_key = features.manifest["identity_key"]

  def __len__(self) -> int:
    return len(self.features)

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    record = self.records[i]
    identity = _text(record[self._identity_key])
    if identity != self.features.identities[i]:
      raise LaryError(
          f"record {i} is {identity!r} but {self.features.store_dir} holds "
          f"the features of {self.features.identities[i]!r}; the dataset was "
          "prepared again since extraction: extract again")
    missing = [k for k in self.keys if k not in record]
    if missing:
      raise LaryError(f"record {i} has no key(s) {missing} (keys: "
                      f"{sorted(record)})")
    return {**{k: record[k] for k in self.keys},
            **self.features[i]}

  def _getitems(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [self[i] for i in indices]


def dataset(store_dir: str, records: Any = None, keys: Sequence[str] = (),
            *, verify: bool = True) -> grain.MapDataset:
  """A grain MapDataset over a store, joined with `records` if given.

  Args:
    store_dir: a complete store.
    records: the split's random-access records (e.g.
      `builder.as_data_source()[split]`), in the order extraction read them.
    keys: record keys to carry next to `features` (e.g. ("label",)).
    verify: check each shard's checksum on first use.

  Returns:
    MapDataset of dicts with `features`, `index` and `keys`.
  """
  features = FeatureSource(store_dir, verify=verify)
  if records is None:
    return grain.MapDataset.source(features)
  return grain.MapDataset.source(JoinedSource(features, records, keys))


def _text(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)
