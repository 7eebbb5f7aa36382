"""One function per command of `python -m lary_jax.main`.

Each takes the parsed flags and the config and calls the stages; nothing
here decodes, trains or writes data itself.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import ml_collections

from lary_jax import configs
from lary_jax.errors import LaryError

# configs/ installs as the package lary_jax.configs (see pyproject.toml).
DEFAULT_CONFIG = os.path.join(os.path.dirname(configs.__file__), "default.py")

DATASET_NAMES = ("calvin", "vlabench", "vlabench_15", "vlabench_30",
                 "agibotbeta", "robocoin", "libero", "human_1st", "robot_1st",
                 "sim", "sim_classification", "sim_regression")

Config = ml_collections.ConfigDict


def _workers(n: int) -> int | None:
  return None if n <= 0 else n


def _require(flags, *names: str) -> None:
  missing = [f"--{n}" for n in names if getattr(flags, n) in (None, "")]
  if missing:
    raise LaryError(f"{' and '.join(missing)} required")


def _tfds_dir(flags) -> str:
  return flags.tfds_dir or os.path.join(flags.workdir, "tfds")


def _prepare_options(config: Config, skip_bad_rows: bool):
  from tfds_builders import prepare  # pylint: disable=g-import-not-at-top
  c = config.prepare
  return prepare.PrepareOptions(
      frame_format=c.frame_format, jpeg_quality=c.jpeg_quality,
      num_workers=_workers(c.num_workers), skip_bad_rows=skip_bad_rows,
      allow_absolute_paths=c.allow_absolute_paths, overwrite=c.overwrite)


def simulate(flags, config: Config) -> int:
  """Renders LARY-Sim into --out."""
  from lary_jax.sim import render  # pylint: disable=g-import-not-at-top
  _require(flags, "out")
  summary = render.simulate(flags.out, tiny=flags.tiny, seed=flags.seed,
                            num_workers=_workers(config.sim.num_workers))
  print(json.dumps(summary, indent=1, default=str))
  return 0


def check(flags, config: Config) -> int:
  """Prints every bad row of --dataset; exit status 1 if there is one."""
  from tfds_builders import lary_builder  # pylint: disable=g-import-not-at-top
  from tfds_builders import metadata  # pylint: disable=g-import-not-at-top
  from tfds_builders import prepare  # pylint: disable=g-import-not-at-top
  _require(flags, "dataset", "data_dir")
  status = 0
  for spec in metadata.resolve_datasets(flags.dataset, flags.stride):
    total, bad = prepare.check(
        spec, flags.data_dir, flags.metadata_dir,
        num_workers=_workers(config.check.num_workers),
        allow_absolute_paths=config.prepare.allow_absolute_paths,
        split=flags.split)
    if bad:
      status = 1
      print(f"{spec.name}: {len(bad)} bad row(s) of {total}")
      print(lary_builder.format_report(bad, limit=len(bad)))
    else:
      print(f"{spec.name}: all {total} rows are good")
  return status


def prepare_datasets(flags, config: Config) -> int:
  """Prepares every --dataset into --tfds_dir."""
  from tfds_builders import metadata  # pylint: disable=g-import-not-at-top
  from tfds_builders import prepare  # pylint: disable=g-import-not-at-top
  _require(flags, "dataset", "data_dir")
  options = _prepare_options(config, flags.skip_bad_rows)
  for spec in metadata.resolve_datasets(flags.dataset, flags.stride):
    b = prepare.prepare(spec, flags.data_dir, _tfds_dir(flags),
                        flags.metadata_dir, options)
    _print_prepared(spec.name, b)
  return 0


def _print_prepared(name: str, builder: Any) -> None:
  splits = {s: i.num_examples for s, i in builder.info.splits.items()}
  skipped = builder.info.metadata.get("bad_rows", 0)
  note = f", {skipped} bad rows skipped (bad_rows.csv)" if skipped else ""
  print(f"{name}: {splits} in {builder.data_dir}{note}")


def run(flags, config: Config) -> int:
  """The benchmark on LARY-Sim: render it if missing, then prepare it."""
  from lary_jax.sim import render  # pylint: disable=g-import-not-at-top
  from tfds_builders import metadata  # pylint: disable=g-import-not-at-top
  from tfds_builders import prepare  # pylint: disable=g-import-not-at-top
  data_dir = flags.data_dir
  if not data_dir:
    data_dir = os.path.join(flags.workdir,
                            "lary_sim_tiny" if flags.tiny else "lary_sim")
    render.simulate(data_dir, tiny=flags.tiny, seed=flags.seed,
                    num_workers=_workers(config.sim.num_workers))
  tfds_dir = flags.tfds_dir or os.path.join(
      flags.workdir, "tfds_tiny" if flags.tiny else "tfds")
  options = _prepare_options(config, flags.skip_bad_rows)
  for spec in metadata.resolve_datasets(flags.dataset or "sim", flags.stride):
    b = prepare.prepare(spec, data_dir, tfds_dir, flags.metadata_dir, options)
    _print_prepared(spec.name, b)
  return 0


def convert(flags, config: Config) -> int:
  """Converts a checkpoint (HF folder or .pt/.pth) of --model into --out."""
  from lary_jax.encoders import convert as convert_lib  # pylint: disable=g-import-not-at-top
  _require(flags, "model", "src", "out")
  out = convert_lib.convert(flags.model, flags.src, flags.out,
                            variant=config.convert.variant or None)
  print(f"{flags.model}: converted {flags.src} -> {out}")
  return 0


COMMANDS: dict[str, Callable[[Any, Config], int]] = {
    "simulate": simulate,
    "check": check,
    "prepare": prepare_datasets,
    "run": run,
    "convert": convert,
}
