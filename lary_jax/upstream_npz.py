"""Interop with upstream LARYBench's features: one `.npz` per row.

Upstream stores each row's tokens as `latent_action_{i:08d}.npz` (key
`tokens`) in its latent-action (LA) directory layout, and lists them in a
copy of the split's metadata CSV with a `la_path` column. `export_split` /
`export_npz` write a feature store that way; `import_npz` reads such files
back into a store.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np

from lary_jax import atomic_io
from lary_jax import feature_store as fs
from lary_jax import result_keys as keys
from lary_jax.errors import LaryError

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
  names = {keys.TRAIN: "train", keys.VALIDATION: "val",
           keys.UNSEEN: "unseen"}
  if split not in names:
    raise LaryError(f"split {split!r}: expected one of {list(names)}")
  if dataset in _SEEN_SPLITS and split != keys.UNSEEN:
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
  atomic_io.write_atomic(path, buffer.getvalue())


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
  source = fs.FeatureSource(store_dir)
  out_dir = la_dir(la_root, dataset, split, model)
  os.makedirs(out_dir, exist_ok=True)
  rel_dir = os.path.relpath(out_dir, la_root).replace(os.sep, "/")
  names = [f"latent_action_{name_offset + i:08d}.npz"
           for i in range(len(source))]
  out_dtype = np.dtype(dtype)
  for k, shard in enumerate(source.manifest["shards"]):
    if shard["process"] % process_count != process_index:
      continue
    rows = source.shard_rows(k)
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
    atomic_io.write_atomic(csv_out, text.getvalue().encode())
  return csv_out


def identity_column(kind: str) -> str:
  """The metadata CSV column naming a record of a dataset of `kind`."""
  return "video_path" if kind == "classification" else "src_img"


def metadata_csv(spec: Any, split: str, *, csv_path: str | None = None,
                 metadata_dir: str | None = None,
                 data_dir: str | None = None) -> str:
  """The metadata CSV of our `split` of `spec`, which the LA CSV copies.

  Args:
    spec: the dataset (`tfds_builders.metadata.DatasetSpec`).
    split: our split name.
    csv_path: the CSV itself; wins over the folders.
    metadata_dir: the folder of upstream's metadata CSVs.
    data_dir: the DATA_DIR, whose `metadata/` is used without
      `metadata_dir`.

  Returns:
    The CSV's path.
  """
  # Only export needs upstream's CSV names; the builders package loads TFDS.
  from tfds_builders import metadata  # pylint: disable=g-import-not-at-top
  if csv_path:
    return csv_path
  meta_dir = metadata_dir or (data_dir and os.path.join(data_dir, "metadata"))
  if meta_dir and os.path.isdir(meta_dir):
    found = metadata.find_csvs(spec, meta_dir)
    if split in found:
      return found[split]
  raise LaryError(f"--export_npz appends la_path to {spec.name}'s {split} "
                  "metadata CSV: pass --csv, --metadata_dir or --data_dir")


def export_split(store_dir: str, la_root: str, spec: Any, split: str, *,
                 model: str, split_sizes: Mapping[str, int],
                 csv_path: str | None = None,
                 metadata_dir: str | None = None, data_dir: str | None = None,
                 dtype: str = "float32") -> str:
  """Exports one extracted split in upstream's layout; every process calls it.

  Args:
    store_dir: the split's complete store.
    la_root: upstream's LARY_LA_DIR to write into.
    spec: the dataset (`tfds_builders.metadata.DatasetSpec`).
    split: our split name (train, validation, unseen).
    model: the model folder name.
    split_sizes: records of every prepared split; datasets without a split
      folder number their files on through train, validation, unseen.
    csv_path: the split's metadata CSV (else found, see `metadata_csv`).
    metadata_dir: where to find it.
    data_dir: likewise, in its `metadata/`.
    dtype: dtype of `tokens` in the files.

  Returns:
    The path of the LA CSV.
  """
  offset = 0
  if spec.name in NO_SPLIT:
    for name in (keys.TRAIN, keys.VALIDATION, keys.UNSEEN):
      if name == split:
        break
      offset += split_sizes.get(name, 0)
  csv_out = export_npz(
      store_dir, la_root,
      metadata_csv(spec, split, csv_path=csv_path, metadata_dir=metadata_dir,
                   data_dir=data_dir),
      dataset=spec.name, split=upstream_split_name(spec.name, split),
      model=model, identity_column=identity_column(spec.kind),
      stride=spec.stride if spec.kind == "regression" else None,
      name_offset=offset, dtype=dtype, process_index=jax.process_index(),
      process_count=jax.process_count())
  multihost_utils.sync_global_devices("lary_export_written")
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


def _chosen_rows(csv_path: str, header: Sequence[str],
                 rows: Sequence[Sequence[str]], identity_column: str,
                 identities: Sequence[str] | None
                 ) -> tuple[list[int], Sequence[str]]:
  """The CSV rows that become records, in record order, and their identities."""
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
  return chosen, identities


def _write_token_shards(csv_path: str, la_root: str, store_dir: str,
                        rows: Sequence[Sequence[str]], path_at: int,
                        chosen: Sequence[int], identities: Sequence[str], *,
                        dataset: str, split: str, model: str,
                        out_dtype: np.dtype, shard_mb: float
                        ) -> tuple[int, ...]:
  """Reads each chosen row's tokens into shards; returns the token shape."""
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
    buffer.append(fs.cast_rows(tokens, out_dtype, f"{where}: {path}"))
    if len(buffer) == rows_per_shard or i == len(chosen) - 1:
      end = start + len(buffer)
      fs.write_shard(store_dir, shard, 0, np.stack(buffer),
                  np.arange(start, end), identities[start:end])
      shard, start, buffer = shard + 1, end, []
  return shape


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
    fields: what describes the store (see `feature_store.write_manifest`).
    identities: the prepared split's record identities in record order;
      record i takes its CSV row by identity. None: the CSV rows that have a
      `la_path`, in order, are the records.
    dtype: storage dtype.
    shard_mb: about how many MiB one shard holds.

  Returns:
    The manifest.
  """
  if os.path.exists(os.path.join(store_dir, fs.MANIFEST)):
    raise LaryError(f"{store_dir} already holds a complete store; remove it "
                    "or import into another --out")
  header, rows = read_csv(csv_path)
  chosen, identities = _chosen_rows(csv_path, header, rows, identity_column,
                                    identities)
  out_dtype = fs.storage_dtype(dtype)
  os.makedirs(store_dir, exist_ok=True)
  # Leftovers of an interrupted import.
  for stem in fs.sidecar_stems(store_dir):
    fs.remove_shard(store_dir, stem)
  fs.remove_temporaries(store_dir)
  shape = _write_token_shards(
      csv_path, la_root, store_dir, rows, header.index(LA_PATH), chosen,
      identities, dataset=dataset, split=split, model=model,
      out_dtype=out_dtype, shard_mb=shard_mb)
  fields = {**fields, "token_shape": list(shape), "dtype": out_dtype.name,
            "source": {"csv": os.path.abspath(csv_path),
                       "csv_sha256": atomic_io.sha256_file(csv_path),
                       "la_root": os.path.abspath(la_root)}}
  atomic_io.write_json(os.path.join(store_dir, fs.RUN), fields)
  return fs.write_manifest(store_dir, fields, len(chosen))
