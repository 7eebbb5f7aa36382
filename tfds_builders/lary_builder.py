"""What the LARY builders share: reading CSVs, the worker pool, bad rows.

Preparing a dataset happens in three steps:
1. every split's CSV is read and checked as text, and every file it names is
   looked up (cheap: no decoding). Any problem stops `prepare` here, before a
   byte is written, unless `skip_bad_rows`.
2. the rows are decoded, resized and encoded by a worker pool and written by
   TFDS into its `incomplete.*` directory; rows whose files turn out to be
   unreadable or malformed are collected.
3. if step 2 found bad rows, `prepare` raises (TFDS then deletes the
   incomplete directory) unless `skip_bad_rows`, in which case the list is
   written beside the data as `bad_rows.csv`. Only then does TFDS rename the
   directory into place, so a half-written dataset is never taken for a
   finished one.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Iterator

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from lary_jax import progress as progress_lib
from lary_jax.errors import LaryError
from tfds_builders import loaders
from tfds_builders import metadata
from tfds_builders import parallel

_MAX_REPORTED = 50


class LaryConfig(tfds.core.BuilderConfig):
  """A builder config bound to one `metadata.DatasetSpec`."""

  def __init__(self, spec: metadata.DatasetSpec):
    super().__init__(name=spec.config, description=(
        f"{spec.name}: {spec.kind} rows from {spec.csv_stem}_metadata_*.csv"))
    self.spec = spec


def format_report(bad_rows: list[metadata.BadRow], limit: int = _MAX_REPORTED
                  ) -> str:
  """One line per bad row (CSV:line: path: reason), at most `limit` lines."""
  lines = [str(b) for b in bad_rows[:limit]]
  if len(bad_rows) > limit:
    lines.append(f"... and {len(bad_rows) - limit} more")
  return "\n".join(lines)


def bad_rows_csv(bad_rows: list[metadata.BadRow]) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["csv", "line", "path", "reason"])
  for b in bad_rows:
    writer.writerow([b.csv, b.line, b.path, b.reason])
  return out.getvalue()


def class_names(rows_by_split: dict[str, list[metadata.Row]]) -> list[str]:
  """Sorted class names of the train split (all splits if it has no CSV)."""
  splits = ["train"] if "train" in rows_by_split else list(rows_by_split)
  return sorted({r.fields["action"] for s in splits for r in rows_by_split[s]})


def unknown_classes(rows: list[metadata.Row], names: list[str]
                    ) -> list[metadata.BadRow]:
  known = set(names)
  return [r.bad(f"class {r.fields['action']!r} does not occur in the train "
                "split", "action")
          for r in rows if r.fields["action"] not in known]


def find_bad_rows(spec: metadata.DatasetSpec,
                  rows_by_split: dict[str, list[metadata.Row]],
                  problems: list[metadata.BadRow],
                  num_workers: int | None = None) -> list[metadata.BadRow]:
  """Every bad row: `problems` found in the CSV text, plus every row whose
  files fail to load, plus classes missing from train; in CSV order."""
  bad = list(problems)
  for rows in rows_by_split.values():
    bad += [result for _, result in parallel.load_rows(
        spec, rows, loaders.FrameOptions(), num_workers)
            if isinstance(result, metadata.BadRow)]
  if spec.kind == "classification" or spec.label_action:
    names = class_names(rows_by_split)
    for rows in rows_by_split.values():
      bad += unknown_classes(rows, names)
  return sorted(bad, key=lambda b: (b.csv, b.line))


def missing_files(rows: list[metadata.Row]) -> list[metadata.BadRow]:
  """Rows naming a file that does not exist (stat calls only)."""
  bad = []
  for row in rows:
    for column, path in row.paths.items():
      if not os.path.isfile(path):
        bad.append(row.bad(f"missing file ({column} -> {path})", column))
        break
  return bad


class LaryBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of `lary_classification` and `lary_regression` (not registered)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point `manual_dir` (DownloadConfig(manual_dir=...), or `--data_dir` of
  `python -m lary_jax.main prepare`) at a LARYBench DATA_DIR (the folder with
  classification/ and regression/), or at a LARY-Sim folder rendered by
  `python -m lary_jax.main simulate`. Metadata CSVs are read from
  `metadata_dir` (default: <DATA_DIR>/metadata).
  """

  def __init__(self, *, metadata_dir: str | None = None,
               frame_options: loaders.FrameOptions | None = None,
               num_workers: int | None = None, skip_bad_rows: bool = False,
               allow_absolute_paths: bool = False, **kwargs: Any):
    self._metadata_dir = metadata_dir
    self._frame_options = frame_options or loaders.FrameOptions()
    self._num_workers = num_workers
    self._skip_bad_rows = skip_bad_rows
    self._allow_absolute = allow_absolute_paths
    self._bad_rows: list[metadata.BadRow] = []
    self._rows: dict[str, list[metadata.Row]] = {}
    self._data_root = ""
    super().__init__(**kwargs)

  @property
  def spec(self) -> metadata.DatasetSpec:
    return self.builder_config.spec

  def _with_vjepa2_view(self, key: str) -> bool:
    """Whether the features include V-JEPA 2's view (`key` names one).

    TFDS takes `info.features` from `_info()` even for a prepared dataset,
    so a reader built with default options must learn from the prepared
    `features.json` that the records hold the view.
    """
    if self._frame_options.vjepa2_view:
      return True
    data_dir = getattr(self, "_data_dir", None)  # set before `info` is built
    return bool(data_dir) and key in prepared_features(os.fspath(data_dir))

  def _dataset_info(self, features: dict[str, Any]) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.builder_config.description,
        features=tfds.features.FeaturesDict(features),
        homepage="https://github.com/meituan-longcat/LARYBench",
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # records keep CSV order, as upstream's CSVs
    )

  # Step 1: read and check the CSVs.
  def _split_generators(self, dl_manager):
    self._data_root = os.fspath(dl_manager.manual_dir)
    metadata_dir = self._metadata_dir or os.path.join(self._data_root,
                                                      "metadata")
    bad: list[metadata.BadRow] = []
    text_problems: list[metadata.BadRow] = []
    for split, rows, problems in metadata.iter_splits(
        self.spec, metadata_dir, self._data_root,
        allow_absolute=self._allow_absolute):
      text_problems += problems
      bad += problems + missing_files(rows)
      self._rows[split] = rows
    if "label" in self.info.features:
      names = class_names(self._rows)
      if not names:
        raise LaryError(f"{self.spec.name}: no usable rows to take class "
                        "names from")
      self.info.features["label"].names = names
      for rows in self._rows.values():
        bad += unknown_classes(rows, names)
    self._bad_rows = bad
    if bad and not self._skip_bad_rows:
      raise LaryError(self._refusal(find_bad_rows(
          self.spec, self._rows, text_problems, self._num_workers),
                                    "before writing anything"))
    skip = {(b.csv, b.line) for b in bad}
    for split, rows in self._rows.items():
      self._rows[split] = [r for r in rows if (r.csv, r.line) not in skip]
    return {split: self._generate_examples(split)
            for split, rows in self._rows.items() if rows}

  # Step 2: decode in a worker pool; TFDS writes what we yield.
  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    results = parallel.load_rows(self.spec, self._rows[split],
                                 self._frame_options, self._num_workers)
    bar = progress_lib.bar(len(self._rows[split]), unit="row",
                           desc=f"prepare {self.spec.name} {split}")
    kept = []
    for row, example in results:
      bar.update()
      if isinstance(example, metadata.BadRow):
        self._bad_rows.append(example)
        continue
      kept.append(row)
      if "label" in self.info.features:
        example["label"] = row.fields["action"]
      yield row.line, example
    bar.close()
    self._rows[split] = kept

  # Step 3: refuse, or record what was skipped, before TFDS commits.
  def _download_and_prepare(self, dl_manager, download_config):
    super()._download_and_prepare(dl_manager, download_config)
    if self._bad_rows and not self._skip_bad_rows:
      raise LaryError(self._refusal(self._bad_rows, "while decoding"))
    meta = self.info.metadata
    meta["frame_format"] = self._frame_options.frame_format
    meta["jpeg_quality"] = self._frame_options.jpeg_quality
    meta["vjepa2_view"] = self._frame_options.vjepa2_view
    meta["bad_rows"] = len(self._bad_rows)
    meta["rows"] = {s: len(r) for s, r in self._rows.items()}
    if self._bad_rows:
      path = os.path.join(os.fspath(self.data_dir), "bad_rows.csv")
      with open(path, "w") as f:
        f.write(bad_rows_csv(self._bad_rows))
      logging.warning("%s: skipped %d bad rows, listed in bad_rows.csv",
                      self.spec.name, len(self._bad_rows))
    if "label" in self.info.features:
      # Class-balanced sampling needs every label; reading them from the
      # records would decode every clip (or pair), so they travel as metadata
      # (record order).
      names = self.info.features["label"].names
      index = {name: i for i, name in enumerate(names)}
      meta["labels"] = {split: [index[r.fields["action"]] for r in rows]
                        for split, rows in self._rows.items()}
    self._finish_metadata(meta)

  def _finish_metadata(self, meta: tfds.core.MetadataDict) -> None:
    """Adds builder-specific metadata once every split is written."""

  def _refusal(self, bad: list[metadata.BadRow], when: str) -> str:
    return (f"{self.spec.name}: {len(bad)} bad row(s) found {when}; fix them, "
            "or pass --skip_bad_rows to leave them out:\n" + format_report(bad))


def prepared_features(data_dir: str) -> set[str]:
  """Top-level feature names in a prepared dataset's `features.json`."""
  try:
    with open(os.path.join(data_dir, "features.json")) as f:
      saved = json.load(f)
  except FileNotFoundError:
    return set()
  except (OSError, ValueError) as e:
    raise LaryError(f"{data_dir}/features.json is unreadable ({e}); prepare "
                    "the dataset again (--config.prepare.overwrite=True)"
                    ) from None
  return set(saved.get("featuresDict", {}).get("features", {}))


def frames_feature(count: int | None = None) -> tfds.features.Tensor:
  """Encoded PNG/JPEG bytes; decoded in the grain pipeline (no TensorFlow)."""
  shape = () if count is None else (count,)
  return tfds.features.Tensor(shape=shape, dtype=np.object_)
