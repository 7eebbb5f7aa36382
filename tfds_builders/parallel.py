"""Decoding and resizing rows in a pool of worker processes.

Preparing a million rows is bound by image/video decoding, so rows are loaded
by `num_workers` processes while the caller (the TFDS writer, or `check`)
consumes results in CSV order.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Iterable, Iterator

from tfds_builders import loaders
from tfds_builders import metadata

_worker_state: tuple[metadata.DatasetSpec, loaders.FrameOptions] | None = None


def _init_worker(spec: metadata.DatasetSpec,
                 options: loaders.FrameOptions) -> None:
  global _worker_state
  _worker_state = (spec, options)
  # One decode per core: numpy/BLAS threads would only fight the processes.
  os.environ.setdefault("OMP_NUM_THREADS", "1")


def _load(row: metadata.Row):
  spec, options = _worker_state
  return row, loaders.load_example(spec, row, options)


def default_workers() -> int:
  return os.cpu_count() or 1


def load_rows(spec: metadata.DatasetSpec, rows: Iterable[metadata.Row],
              options: loaders.FrameOptions, num_workers: int | None = None,
              chunksize: int = 8
              ) -> Iterator[tuple[metadata.Row, loaders.Example
                                  | metadata.BadRow]]:
  """Yields (row, example or BadRow) for every row, in input order.

  Args:
    spec: the dataset the rows belong to.
    rows: rows from `metadata.read_split`.
    options: frame storage options.
    num_workers: processes; 0 or 1 loads in this process (no pool).
    chunksize: rows handed to a worker at a time.
  """
  num_workers = default_workers() if num_workers is None else num_workers
  if num_workers <= 1:
    for row in rows:
      yield row, loaders.load_example(spec, row, options)
    return
  # "spawn": the parent may hold JAX or TFDS threads, which fork would copy.
  ctx = multiprocessing.get_context("spawn")
  with ctx.Pool(num_workers, initializer=_init_worker,
                initargs=(spec, options)) as pool:
    yield from pool.imap(_load, rows, chunksize=chunksize)
