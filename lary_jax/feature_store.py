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

The second half of the module is interop with upstream LARYBench: one `.npz`
per row (key `tokens`) in upstream's latent-action (LA) directory layout,
plus its metadata CSV with a `la_path` column (`export_npz`, `import_npz`).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from lary_jax.errors import LaryError

FORMAT = "lary-features/1"
MANIFEST = "manifest.json"
RUN = "run.json"
DTYPES = {"float16": np.dtype(np.float16), "float32": np.dtype(np.float32)}
FLOAT16_MAX = float(np.finfo(np.float16).max)
_SHARD_RE = re.compile(r"shard-(\d{5})-p(\d{3})\.json")


# ------------------------------------------------------------------ files


def storage_dtype(name: str) -> np.dtype:
  """"float16" / "float32" -> numpy dtype; anything else is a LaryError."""
  if name not in DTYPES:
    raise LaryError(f"storage dtype {name!r}: expected one of {list(DTYPES)}")
  return DTYPES[name]


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (temporary file, fsync, rename)."""
  _write_atomic(path, json.dumps(obj, indent=1).encode())


def read_json(path: str) -> dict[str, Any] | None:
  """The JSON object in `path`, or None if it is missing or unreadable."""
  try:
    with open(path, "rb") as f:
      obj = json.loads(f.read())
  except (OSError, ValueError):
    return None
  return obj if isinstance(obj, dict) else None


def _write_atomic(path: str, data: bytes) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


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
  write_json(os.path.join(store_dir, stem + ".json"), sidecar)
  return sidecar


def verify_shard(store_dir: str, stem: str) -> tuple[dict | None, str]:
  """Checks a shard against its sidecar.

  Returns:
    (sidecar, "") for a whole shard; (None, why) when the sidecar is missing
    or unreadable, or the data's size, checksum or header disagree with it.
  """
  sidecar = read_json(os.path.join(store_dir, stem + ".json"))
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
  if sha256_file(path) != sidecar["sha256"]:
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
    sidecar = read_json(os.path.join(store_dir, stem + ".json"))
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
  write_json(os.path.join(store_dir, MANIFEST), manifest)
  return manifest


def read_manifest(store_dir: str) -> dict[str, Any]:
  """The manifest of a complete store; LaryError if there is none."""
  manifest = read_json(os.path.join(store_dir, MANIFEST))
  if manifest is None:
    raise LaryError(f"{store_dir} holds no complete feature store (no "
                    f"readable {MANIFEST}); run `extract` (it resumes)")
  if manifest.get("format") != FORMAT:
    raise LaryError(f"{store_dir}/{MANIFEST}: format "
                    f"{manifest.get('format')!r}, expected {FORMAT!r}")
  return manifest


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

  def _array(self, k: int) -> np.ndarray:
    if k not in self._arrays:
      shard = self.manifest["shards"][k]
      path = os.path.join(self.store_dir, shard["file"])
      if self.verify and (not os.path.exists(path)
                          or sha256_file(path) != shard["sha256"]):
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
    return np.array(self._array(int(self._shard[i]))[self._row[i]])

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
      out[np.asarray(shard["index"], np.int64)] = self._array(k)
    return out


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


# ----------------------------------------------------- upstream LA layout

# Upstream's LA directory layout (lary/path_resolver.py): these datasets put a
# stride folder between the dataset and the split ...
STRIDE_DIRS = {"calvin": "stride_5", "vlabench": "stride_5",
               "vlabench_15": "stride_15", "vlabench_30": "stride_30",
               "agibotbeta": "stride_45", "robocoin": "stride_10"}
# ... and these have no split folder at all: {LA_ROOT}/{dataset}/{model}/.
NO_SPLIT = ("human_1st", "robot_1st", "libero")
# Datasets whose upstream splits are seen_train / seen_val / unseen.
_SEEN_SPLITS = ("agibotbeta", "robocoin")
LA_PATH = "la_path"


def upstream_split_name(dataset: str, split: str) -> str:
  """Our split name -> upstream's (e.g. validation -> val or seen_val)."""
  names = {"train": "train", "validation": "val", "unseen": "unseen"}
  if split not in names:
    raise LaryError(f"split {split!r}: expected one of {list(names)}")
  if dataset in _SEEN_SPLITS and split != "unseen":
    return "seen_" + names[split]
  return names[split]


def la_dir(la_root: str, dataset: str, split: str, model: str) -> str:
  """Upstream's folder of one (dataset, upstream split, model)'s `.npz`s."""
  if dataset in NO_SPLIT:
    return os.path.join(la_root, dataset, model)
  if dataset in STRIDE_DIRS:
    return os.path.join(la_root, dataset, STRIDE_DIRS[dataset], split, model)
  return os.path.join(la_root, dataset, split, model)


def la_csv_name(dataset: str, split: str, model: str,
                stride: int | None) -> str:
  """Upstream's name of an extraction CSV (`val_la_calvin_5_dinov2.csv`)."""
  middle = dataset if stride is None else f"{dataset}_{stride}"
  return f"{split}_la_{middle}_{model}.csv"


def resolve_la_path(la_root: str, value: str, *, dataset: str, split: str,
                    model: str) -> str:
  """Resolves a CSV `la_path` as upstream does, refusing to leave la_root.

  A bare file name lives in `la_dir(...)`; a relative path with folders is
  relative to la_root; an absolute path must lie inside la_root.
  """
  value = value.replace("\\", "/")
  if os.path.isabs(value):
    path = value
  elif "/" in value:
    path = os.path.join(la_root, value)
  else:
    path = os.path.join(la_dir(la_root, dataset, split, model), value)
  root = os.path.realpath(la_root)
  real = os.path.realpath(path)
  if os.path.commonpath([root, real]) != root:
    raise LaryError(f"la_path {value!r} leads to {real}, outside the LA root "
                    f"{root}")
  return real


def read_csv(path: str) -> tuple[list[str], list[list[str]]]:
  """(header, rows) of a CSV; LaryError naming the file if unreadable."""
  try:
    with open(path, newline="", encoding="utf-8") as f:
      lines = [line for line in csv.reader(f) if line]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise LaryError(f"cannot read {path}: {e}") from None
  if not lines:
    raise LaryError(f"{path} is empty; expected a header line")
  header = [c.strip() for c in lines[0]]
  for n, row in enumerate(lines[1:], start=2):
    if len(row) != len(header):
      raise LaryError(f"{path}:{n}: {len(row)} fields, the header has "
                      f"{len(header)}")
  return header, lines[1:]


def match_rows(csv_identities: Sequence[str], identities: Sequence[str],
               csv_name: str) -> list[int]:
  """For each record, the CSV row it came from (by identity, in order).

  Records keep their CSV's order but may skip rows (bad rows left out by
  `prepare --skip_bad_rows`), and a path may appear on several rows; each
  record takes the first unused CSV row with its identity.
  """
  rows_of: dict[str, list[int]] = {}
  for n, name in enumerate(csv_identities):
    rows_of.setdefault(name, []).append(n)
  used = {name: 0 for name in rows_of}
  out = []
  for i, name in enumerate(identities):
    rows = rows_of.get(name, [])
    if used.get(name, 0) >= len(rows):
      raise LaryError(f"{csv_name} has no (further) row for record {i} "
                      f"({name!r})")
    out.append(rows[used[name]])
    used[name] += 1
  return out


def _save_npz(path: str, tokens: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, tokens=tokens)
  _write_atomic(path, buffer.getvalue())


def export_npz(store_dir: str, la_root: str, csv_in: str, *,
               dataset: str, split: str, model: str, identity_column: str,
               stride: int | None = None, name_offset: int = 0,
               dtype: str = "float32", process_index: int = 0,
               process_count: int = 1) -> str:
  """Writes a store in upstream's layout: `.npz` files and an LA CSV.

  Record i goes to `la_dir(...)/latent_action_{name_offset + i:08d}.npz`
  (key `tokens`, [*token_shape]); the CSV is `csv_in` with `la_path` (the
  file's path relative to la_root) appended, or overwritten if present, and
  left empty on rows that have no record. Process p writes the files of the
  shards that process p computed; process 0 writes the CSV.

  Args:
    store_dir: a complete store.
    la_root: upstream's LARY_LA_DIR.
    csv_in: the split's metadata CSV (upstream's schema).
    dataset: our dataset name (its LA folder).
    split: upstream's split name (`upstream_split_name`).
    model: the model folder name.
    identity_column: the CSV column holding the record identity (`src_img`
      or `video_path`).
    stride: action stride, part of image-mode CSV names.
    name_offset: added to record numbers in file names (datasets without a
      split folder number all their splits in one sequence).
    dtype: dtype of `tokens` in the files.
    process_index: this process.
    process_count: processes sharing the export.

  Returns:
    The path of the CSV.
  """
  source = FeatureSource(store_dir)
  out_dir = la_dir(la_root, dataset, split, model)
  os.makedirs(out_dir, exist_ok=True)
  rel_dir = os.path.relpath(out_dir, la_root).replace(os.sep, "/")
  names = [f"latent_action_{name_offset + i:08d}.npz"
           for i in range(len(source))]
  out_dtype = np.dtype(dtype)
  for k, shard in enumerate(source.manifest["shards"]):
    if shard["process"] % process_count != process_index:
      continue
    rows = source._array(k)  # pylint: disable=protected-access
    for row, i in enumerate(shard["index"]):
      _save_npz(os.path.join(out_dir, names[i]), rows[row].astype(out_dtype))
  csv_out = os.path.join(la_root, la_csv_name(dataset, split, model, stride))
  if process_index == 0:
    header, rows = read_csv(csv_in)
    if identity_column not in header:
      raise LaryError(f"{csv_in} has no column {identity_column!r}")
    column = header.index(identity_column)
    matched = match_rows([r[column].strip() for r in rows], source.identities,
                         csv_in)
    la_paths = [""] * len(rows)
    for i, n in enumerate(matched):
      la_paths[n] = f"{rel_dir}/{names[i]}"
    if LA_PATH in header:
      at = header.index(LA_PATH)
      rows = [r[:at] + r[at + 1:] for r in rows]
      header = header[:at] + header[at + 1:]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header + [LA_PATH])
    writer.writerows(r + [p] for r, p in zip(rows, la_paths))
    _write_atomic(csv_out, text.getvalue().encode())
  return csv_out


def _load_tokens(path: str, where: str) -> np.ndarray:
  try:
    with np.load(path, allow_pickle=False) as npz:
      if "tokens" not in npz.files:
        raise LaryError(f"{where}: {path} has no key 'tokens' (keys: "
                        f"{npz.files})")
      tokens = npz["tokens"]
  except LaryError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise LaryError(f"{where}: cannot read {path} as an .npz of numeric "
                    f"arrays ({type(e).__name__}: {e})") from None
  if tokens.dtype.kind not in "fiu":
    raise LaryError(f"{where}: {path} key 'tokens' holds {tokens.dtype} data")
  return tokens


def cast_rows(rows: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
  """Casts to the storage dtype, refusing values float16 cannot hold."""
  if dtype == np.float16:
    peak = np.abs(rows.astype(np.float32)).max(initial=0.0)
    if not np.isfinite(peak) or peak > FLOAT16_MAX:
      raise LaryError(f"{what}: features reach {peak:.4g}, beyond float16's "
                      f"{FLOAT16_MAX:g}; use --config.extract.dtype=float32")
  return rows.astype(dtype)


def import_npz(csv_path: str, la_root: str, store_dir: str, *,
               dataset: str, split: str, model: str, identity_column: str,
               fields: Mapping[str, Any], identities: Sequence[str] | None,
               dtype: str = "float16", shard_mb: float = 256.0
               ) -> dict[str, Any]:
  """Turns upstream's `.npz` files and LA CSV into a complete store.

  Args:
    csv_path: upstream's extraction CSV (a `la_path` column).
    la_root: upstream's LARY_LA_DIR; no `la_path` may lead outside it.
    store_dir: the new store.
    dataset: our dataset name.
    split: upstream's split name (resolves bare `la_path` file names).
    model: the model folder name (likewise).
    identity_column: `src_img` or `video_path`.
    fields: what describes the store (see `write_manifest`).
    identities: the prepared split's record identities in record order;
      record i takes its CSV row by identity. None: the CSV rows that have a
      `la_path`, in order, are the records.
    dtype: storage dtype.
    shard_mb: about how many MiB one shard holds.

  Returns:
    The manifest.
  """
  if os.path.exists(os.path.join(store_dir, MANIFEST)):
    raise LaryError(f"{store_dir} already holds a complete store; remove it "
                    "or import into another --out")
  header, rows = read_csv(csv_path)
  for column in (identity_column, LA_PATH):
    if column not in header:
      raise LaryError(f"{csv_path} has no column {column!r}")
  ident_at, path_at = header.index(identity_column), header.index(LA_PATH)
  if identities is None:
    chosen = [n for n, r in enumerate(rows) if r[path_at].strip()]
    identities = [rows[n][ident_at].strip() for n in chosen]
  else:
    chosen = match_rows([r[ident_at].strip() for r in rows], identities,
                        csv_path)
  if not chosen:
    raise LaryError(f"{csv_path}: no row has a la_path")
  out_dtype = storage_dtype(dtype)
  os.makedirs(store_dir, exist_ok=True)
  for stem in sidecar_stems(store_dir):  # leftovers of an interrupted import
    remove_shard(store_dir, stem)
  remove_temporaries(store_dir)

  shape, rows_per_shard = None, 1
  buffer: list[np.ndarray] = []
  shard, start = 0, 0
  for i, n in enumerate(chosen):
    where = f"{csv_path}:{n + 2}"
    value = rows[n][path_at].strip()
    if not value:
      raise LaryError(f"{where}: empty la_path for record {i} "
                      f"({identities[i]!r})")
    try:
      path = resolve_la_path(la_root, value, dataset=dataset, split=split,
                             model=model)
    except LaryError as e:
      raise LaryError(f"{where}: {e}") from None
    tokens = _load_tokens(path, where)
    if shape is None:
      shape = tokens.shape
      row_bytes = max(1, int(np.prod(shape)) * out_dtype.itemsize)
      rows_per_shard = max(1, int(shard_mb * 2**20) // row_bytes)
    elif tokens.shape != shape:
      raise LaryError(f"{where}: {path} holds tokens of shape "
                      f"{tokens.shape}, earlier rows {shape}")
    buffer.append(cast_rows(tokens, out_dtype, f"{where}: {path}"))
    if len(buffer) == rows_per_shard or i == len(chosen) - 1:
      end = start + len(buffer)
      write_shard(store_dir, shard, 0, np.stack(buffer),
                  np.arange(start, end), identities[start:end])
      shard, start, buffer = shard + 1, end, []
  fields = {**fields, "token_shape": list(shape), "dtype": out_dtype.name,
            "source": {"csv": os.path.abspath(csv_path),
                       "csv_sha256": sha256_file(csv_path),
                       "la_root": os.path.abspath(la_root)}}
  write_json(os.path.join(store_dir, RUN), fields)
  return write_manifest(store_dir, fields, len(chosen))
