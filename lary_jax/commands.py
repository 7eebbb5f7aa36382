"""One function per command of `python -m lary_jax.main`.

Each takes the parsed flags and the config and calls the stages; nothing
here decodes, trains or writes data itself.
"""

from __future__ import annotations

import json
import os
import sys
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


# ------------------------------------------------------------ extraction


def _encoder_options(text: str) -> dict[str, Any]:
  """"variant=S/16,seed=0" -> {"variant": "S/16", "seed": 0}."""
  options = {}
  for item in filter(None, (t.strip() for t in text.split(","))):
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise LaryError(f"--config.extract.encoder_options: {item!r} is not "
                      "KEY=VALUE")
    value = value.strip()
    options[key.strip()] = int(value) if value.lstrip("-").isdigit() else value
  return options


def _extract_options(config: Config):
  from lary_jax import extract as extract_lib  # pylint: disable=g-import-not-at-top
  c = config.extract
  return extract_lib.Options(
      global_batch=c.global_batch, micro_batch=c.micro_batch, dtype=c.dtype,
      shard_mb=c.shard_mb, worker_count=c.worker_count,
      read_threads=c.read_threads, prefetch=c.prefetch)


def _mode(flags, spec) -> str:
  wanted = "video" if spec.kind == "classification" else "image"
  if flags.mode not in (None, wanted):
    raise LaryError(f"--mode {flags.mode}: {spec.name} is a {spec.kind} "
                    f"dataset, which is extracted in {wanted} mode")
  return wanted


def _prepared(spec, flags):
  from tfds_builders import prepare  # pylint: disable=g-import-not-at-top
  b = prepare.builder(spec, _tfds_dir(flags))
  if not b.is_prepared():
    raise LaryError(f"{spec.name} is not prepared in {_tfds_dir(flags)}; run "
                    "`prepare` first (or pass --tfds_dir)")
  return b


def _splits(flags, builder) -> list[str]:
  splits = list(builder.info.splits)
  if flags.split is None:
    return splits
  if flags.split not in splits:
    raise LaryError(f"--split {flags.split}: {builder.data_dir} has splits "
                    f"{splits}")
  return [flags.split]


def _store_dir(flags, dataset: str, split: str) -> str:
  root = flags.out or os.path.join(flags.workdir, "features")
  return os.path.join(root, dataset, split, flags.model)


def _identity_column(spec) -> str:
  return "video_path" if spec.kind == "classification" else "src_img"


def _metadata_csv(flags, spec, split: str) -> str:
  from tfds_builders import metadata  # pylint: disable=g-import-not-at-top
  if flags.csv:
    return flags.csv
  meta_dir = flags.metadata_dir or (
      flags.data_dir and os.path.join(flags.data_dir, "metadata"))
  if meta_dir and os.path.isdir(meta_dir):
    found = metadata.find_csvs(spec, meta_dir)
    if split in found:
      return found[split]
  raise LaryError(f"--export_npz appends la_path to {spec.name}'s {split} "
                  "metadata CSV: pass --csv, --metadata_dir or --data_dir")


def _export(flags, config: Config, spec, split: str, builder,
            store_dir: str) -> str:
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from lary_jax import feature_store  # pylint: disable=g-import-not-at-top
  offset = 0
  if spec.name in feature_store.NO_SPLIT:
    # One LA folder for all splits: number the rows on through the splits.
    for name in ("train", "validation", "unseen"):
      if name == split:
        break
      if name in builder.info.splits:
        offset += builder.info.splits[name].num_examples
  csv_out = feature_store.export_npz(
      store_dir, flags.la_dir or os.path.join(flags.workdir, "latent_actions"),
      _metadata_csv(flags, spec, split), dataset=spec.name,
      split=feature_store.upstream_split_name(spec.name, split),
      model=flags.model, identity_column=_identity_column(spec),
      stride=spec.stride if spec.kind == "regression" else None,
      name_offset=offset, dtype=config.extract.export_dtype,
      process_index=jax.process_index(), process_count=jax.process_count())
  multihost_utils.sync_global_devices("lary_export_written")
  return csv_out


def extract(flags, config: Config) -> int:
  """Extracts --model's features of --dataset (every split, or --split)."""
  from lary_jax import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  _require(flags, "model", "dataset")
  mesh_lib.initialize_distributed(flags.coordinator_address,
                                  flags.num_processes, flags.process_id)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from lary_jax import extract as extract_lib  # pylint: disable=g-import-not-at-top
  from lary_jax.encoders import registry  # pylint: disable=g-import-not-at-top
  from tfds_builders import metadata  # pylint: disable=g-import-not-at-top
  c = config.extract
  options = _extract_options(config)
  specs = metadata.resolve_datasets(flags.dataset, flags.stride)
  jobs = []
  for spec in specs:  # check every dataset before the slow part
    builder = _prepared(spec, flags)
    jobs += [(spec, builder, _mode(flags, spec), split)
             for split in _splits(flags, builder)]
  if flags.csv and len(jobs) > 1:
    raise LaryError("--csv names one split's CSV; give one --dataset and "
                    "--split with it")
  if c.compute_dtype not in ("float32", "bfloat16"):
    raise LaryError(f"--config.extract.compute_dtype={c.compute_dtype}: "
                    "expected float32 or bfloat16")
  encoder = registry.load(flags.model, flags.checkpoint,
                          dtype=getattr(jnp, c.compute_dtype),
                          **_encoder_options(c.encoder_options))
  digest = extract_lib.checkpoint_digest(flags.checkpoint)
  for spec, builder, mode, split in jobs:
    store_dir = _store_dir(flags, spec.name, split)
    fields = dict(
        model=flags.model, checkpoint=flags.checkpoint,
        checkpoint_digest=digest, encoder_options=c.encoder_options,
        compute_dtype=c.compute_dtype, dataset=spec.name,
        tfds_name=metadata.tfds_name(spec), split=split,
        # A split prepared again (other rows or frames) is another input.
        tfds_split_bytes=builder.info.splits[split].num_bytes)
    summary = extract_lib.extract_split(
        encoder, builder.as_data_source()[split], mode=mode,
        store_dir=store_dir, fields=fields, options=options)
    if jax.process_index() == 0:
      print(f"{spec.name} {split}: {summary}")
    if flags.export_npz:
      csv_out = _export(flags, config, spec, split, builder, store_dir)
      if jax.process_index() == 0:
        print(f"{spec.name} {split}: exported .npz files, CSV {csv_out}")
  return 0


def import_features(flags, config: Config) -> int:
  """Turns upstream's .npz files + LA CSV (--csv, --la_dir) into a store."""
  from lary_jax import feature_store  # pylint: disable=g-import-not-at-top
  from tfds_builders import metadata  # pylint: disable=g-import-not-at-top
  from tfds_builders import prepare  # pylint: disable=g-import-not-at-top
  _require(flags, "model", "dataset", "split", "csv", "la_dir")
  specs = metadata.resolve_datasets(flags.dataset, flags.stride)
  if len(specs) != 1:
    raise LaryError(f"--dataset {flags.dataset} names {len(specs)} datasets; "
                    "import one at a time")
  spec = specs[0]
  mode = _mode(flags, spec)
  identity_key = "video_path" if mode == "video" else "src_path"
  identities = None
  builder = prepare.builder(spec, _tfds_dir(flags))
  if builder.is_prepared():
    # Record i takes the CSV row of its identity, so the store lines up with
    # the prepared split even where prepare left bad rows out.
    records = builder.as_data_source()[_splits(flags, builder)[0]]
    identities = [r[identity_key].decode() for r in records]
  else:
    print(f"warning: {spec.name} is not prepared in {_tfds_dir(flags)}; the "
          "CSV rows with a la_path are taken as the records, in order",
          file=sys.stderr)
  store_dir = _store_dir(flags, spec.name, flags.split)
  fields = dict(model=flags.model, checkpoint=None, checkpoint_digest=None,
                dataset=spec.name, tfds_name=metadata.tfds_name(spec),
                split=flags.split, mode=mode, identity_key=identity_key)
  manifest = feature_store.import_npz(
      flags.csv, flags.la_dir, store_dir, dataset=spec.name,
      split=feature_store.upstream_split_name(spec.name, flags.split),
      model=flags.model, identity_column=_identity_column(spec),
      fields=fields, identities=identities, dtype=config.extract.dtype,
      shard_mb=config.extract.shard_mb)
  print(f"{spec.name} {flags.split}: imported {manifest['num_rows']} rows of "
        f"{manifest['token_shape']} -> {store_dir}")
  return 0


COMMANDS: dict[str, Callable[[Any, Config], int]] = {
    "simulate": simulate,
    "check": check,
    "prepare": prepare_datasets,
    "run": run,
    "convert": convert,
    "extract": extract,
    "import": import_features,
}
