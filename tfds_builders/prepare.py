"""The `check` and `prepare` stages: a LARYBench DATA_DIR -> TFDS datasets."""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil

from absl import logging
import tensorflow_datasets as tfds

from lary_jax.errors import LaryError
import tfds_builders  # pylint: disable=unused-import  (registers builders)
from tfds_builders import lary_builder
from tfds_builders import loaders
from tfds_builders import metadata


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  """Options of `prepare` (config section `prepare`)."""

  frame_format: str = "png"
  jpeg_quality: int = 95
  num_workers: int | None = None  # None: one per core
  skip_bad_rows: bool = False
  allow_absolute_paths: bool = False
  overwrite: bool = False
  vjepa2_view: bool = False
  png_level: int = 6

  @property
  def frames(self) -> loaders.FrameOptions:
    return loaders.FrameOptions(self.frame_format, self.jpeg_quality,
                                self.vjepa2_view, self.png_level)


def check(spec: metadata.DatasetSpec, data_dir: str,
          metadata_dir: str | None = None, *, num_workers: int | None = None,
          allow_absolute_paths: bool = False, split: str | None = None
          ) -> tuple[int, list[metadata.BadRow]]:
  """Finds every bad row of `spec`'s CSVs (or of one `split`) without
  writing anything.

  Returns:
    (number of rows read, bad rows in CSV order).
  """
  _require_dir(data_dir, "--data_dir")
  metadata_dir = metadata_dir or os.path.join(data_dir, "metadata")
  rows_by_split, problems = {}, []
  for name, rows, split_problems in metadata.iter_splits(
      spec, metadata_dir, data_dir, allow_absolute=allow_absolute_paths):
    if split in (None, name):
      rows_by_split[name] = rows
      problems += split_problems
  if split is not None and split not in rows_by_split:
    raise LaryError(f"{spec.name} has no {split} split in {metadata_dir}; "
                    f"it has {sorted(metadata.find_csvs(spec, metadata_dir))}")
  total = sum(map(len, rows_by_split.values())) + sum(
      p.line > 1 for p in problems)
  bad = lary_builder.find_bad_rows(spec, rows_by_split, problems, num_workers)
  return total, bad


def builder(spec: metadata.DatasetSpec, tfds_dir: str,
            **kwargs) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `spec` in `tfds_dir` (prepared or not)."""
  return tfds.builder(metadata.tfds_name(spec), data_dir=tfds_dir,
                      file_format="array_record", **kwargs)


def prepare(spec: metadata.DatasetSpec, data_dir: str, tfds_dir: str,
            metadata_dir: str | None = None,
            options: PrepareOptions = PrepareOptions()
            ) -> tfds.core.DatasetBuilder:
  """Prepares `spec` into `tfds_dir`; a finished dataset is reused as is.

  Raises:
    LaryError: bad rows (unless `options.skip_bad_rows`), or a finished
      dataset that was prepared with other frame options (format, quality
      or `vjepa2_view`).
  """
  _require_dir(data_dir, "--data_dir")
  kwargs = dict(metadata_dir=metadata_dir, frame_options=options.frames,
                num_workers=options.num_workers,
                skip_bad_rows=options.skip_bad_rows,
                allow_absolute_paths=options.allow_absolute_paths)
  b = builder(spec, tfds_dir, **kwargs)
  if b.is_prepared() and options.overwrite:
    shutil.rmtree(os.fspath(b.data_dir))
    b = builder(spec, tfds_dir, **kwargs)
  if b.is_prepared():
    meta = b.info.metadata
    found = meta.get("frame_format")
    if found == "jpeg":
      found += f" (quality {meta.get('jpeg_quality')})"
    wanted = options.frame_format
    if wanted == "jpeg":
      wanted += f" (quality {options.jpeg_quality})"
    if found != wanted:
      raise LaryError(
          f"{b.data_dir} was prepared with frame_format={found}, not "
          f"{wanted}; use another --tfds_dir or "
          "--config.prepare.overwrite=True")
    # Datasets prepared before the option existed have no view.
    found_view = bool(meta.get("vjepa2_view", False))
    if found_view != options.vjepa2_view:
      raise LaryError(
          f"{b.data_dir} was prepared with vjepa2_view={found_view}, not "
          f"{options.vjepa2_view}; pass --config.prepare.vjepa2_view="
          f"{found_view} to use it as it is, or "
          "--config.prepare.overwrite=True to prepare it again (or use "
          "another --tfds_dir)")
    logging.info("%s is already prepared in %s", spec.name, b.data_dir)
    return b
  _remove_stale_incomplete(os.fspath(b.data_dir))
  # Our own per-split bar (lary_builder) replaces TFDS's nested ones.
  tfds.disable_progress_bar()
  b.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=data_dir))
  return b


def _remove_stale_incomplete(data_dir: str) -> None:
  """Deletes what an interrupted `prepare` of this dataset left behind."""
  parent = os.path.dirname(data_dir)
  for path in glob.glob(os.path.join(parent, "incomplete.*")):
    shutil.rmtree(path, ignore_errors=True)


def _require_dir(path: str, flag: str) -> None:
  if not path or not os.path.isdir(path):
    raise LaryError(f"{flag} {path!r} is not a directory; expected a "
                    "LARYBench DATA_DIR (or a LARY-Sim folder)")
