"""One function per command of `python -m lary_jax.main`.

Each takes the parsed flags and the config and calls the stages; nothing
here decodes, trains or writes data itself.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any, Callable

import ml_collections

from lary_jax import atomic_io
from lary_jax import benchmark_run
from lary_jax import command_args
from lary_jax import extract as extract_lib
from lary_jax import feature_store
from lary_jax import hub
from lary_jax import mesh as mesh_lib
from lary_jax import report as report_lib
from lary_jax import result_keys as keys
from lary_jax import upstream_npz
from lary_jax import workdir_layout as layout
from lary_jax.command_args import ClassifyArgs
from lary_jax.command_args import ExtractArgs
from lary_jax.command_args import PrepareArgs
from lary_jax.command_args import RegressArgs
from lary_jax.command_args import ReportArgs
from lary_jax.command_args import SimulateArgs
from lary_jax.encoders import registry
from lary_jax.errors import LaryError
from lary_jax.lams import train_lam as train_lam_lib
from lary_jax.probes import classify as classify_lib
from lary_jax.probes import regress as regress_lib
from lary_jax.probes import train_classifier
from lary_jax.probes import train_regressor
from lary_jax.sim import render

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


# Commands that compute on JAX devices; the others run on the host's CPU.
DEVICE_COMMANDS = ("run", "convert", "extract", "classify", "regress",
                   "train_lam")


def _start_processes(flags, command: str):
  """Joins the multi-host run the flags describe (if any); returns jax."""
  mesh_lib.initialize_distributed(flags.coordinator_address,
                                  flags.num_processes, flags.process_id)
  mesh_lib.announce(command)
  import jax  # pylint: disable=g-import-not-at-top
  return jax


def _tfds_dir(flags) -> str:
  return flags.tfds_dir or layout.tfds_dir(flags.workdir)


def _prepare_options(config: Config, skip_bad_rows: bool):
  from tfds_builders import prepare  # pylint: disable=g-import-not-at-top
  return command_args.from_config(
      prepare.PrepareOptions, config.prepare, skip_bad_rows=skip_bad_rows,
      num_workers=_workers(config.prepare.num_workers))


def simulate(flags, config: Config) -> int:
  """Renders LARY-Sim into --out."""
  return simulate_data(command_args.from_flags(SimulateArgs, flags), config)


def simulate_data(args: SimulateArgs, config: Config) -> int:
  """`simulate` with typed arguments."""
  _require(args, "out")
  summary = render.simulate(args.out, tiny=args.tiny, seed=args.seed,
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
  return prepare_data(command_args.from_flags(PrepareArgs, flags), config)


def prepare_data(args: PrepareArgs, config: Config) -> int:
  """`prepare` with typed arguments."""
  from tfds_builders import metadata  # pylint: disable=g-import-not-at-top
  from tfds_builders import prepare  # pylint: disable=g-import-not-at-top
  _require(args, "dataset", "data_dir")
  options = _prepare_options(config, args.skip_bad_rows)
  for spec in metadata.resolve_datasets(args.dataset, args.stride):
    b = prepare.prepare(spec, args.data_dir, _tfds_dir(args),
                        args.metadata_dir, options)
    _print_prepared(spec.name, b)
  return 0


def _print_prepared(name: str, builder: Any) -> None:
  splits = {s: i.num_examples for s, i in builder.info.splits.items()}
  skipped = builder.info.metadata.get("bad_rows", 0)
  note = f", {skipped} bad rows skipped (bad_rows.csv)" if skipped else ""
  print(f"{name}: {splits} in {builder.data_dir}{note}")


def run(flags, config: Config) -> int:
  """The whole benchmark: data, the run's LAM, features, probes, report."""
  return benchmark_run.run(flags, config, STAGES)


def convert(flags, config: Config) -> int:
  """Converts a checkpoint (HF folder or .pt/.pth) of --model into --out."""
  _require(flags, "model", "src", "out")
  # One process: converting needs no other host.
  mesh_lib.announce("convert")
  out = registry.convert(flags.model, flags.src, flags.out,
                         variant=config.convert.variant or None)
  print(f"{flags.model}: converted {flags.src} -> {out}")
  return 0


# ------------------------------------------------------------ extraction


def encoder_options(text: str) -> dict[str, Any]:
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
  return command_args.from_config(extract_lib.Options, config.extract)


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


def _store_dir(flags, dataset: str, split: str,
               model: str | None = None) -> str:
  root = flags.out or layout.features_root(flags.workdir)
  return layout.features_dir(root, dataset, split, model or flags.model)


def _store_digest(store_dir: str, digest: str | None,
                  files_digest: Callable[[], str | None]) -> str | None:
  """The `checkpoint_digest` to give a store: `digest` (the weights'), or,
  for a store an older lary-jax began from the same checkpoint files, the
  digest of those files it recorded (`files_digest()`), so that it resumes."""
  found = atomic_io.read_json(os.path.join(store_dir, feature_store.RUN))
  old = (found or {}).get("checkpoint_digest")
  if digest and old not in (None, digest) and old == files_digest():
    return old
  return digest


def extract(flags, config: Config) -> int:
  """Extracts --model's features of --dataset (every split, or --split)."""
  return extract_features(command_args.from_flags(ExtractArgs, flags),
                          config)


def extract_features(args: ExtractArgs, config: Config) -> int:
  """`extract` with typed arguments (features filed under `store_name`)."""
  _require(args, "model", "dataset")
  jax = _start_processes(args, "extract")
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from tfds_builders import metadata  # pylint: disable=g-import-not-at-top
  c = config.extract
  options = _extract_options(config)
  specs = metadata.resolve_datasets(args.dataset, args.stride)
  jobs = []
  for spec in specs:  # check every dataset before the slow part
    builder = _prepared(spec, args)
    jobs += [(spec, builder, _mode(args, spec), split)
             for split in _splits(args, builder)]
  if args.csv and len(jobs) > 1:
    raise LaryError("--csv names one split's CSV; give one --dataset and "
                    "--split with it")
  if c.compute_dtype not in ("float32", "bfloat16"):
    raise LaryError(f"--config.extract.compute_dtype={c.compute_dtype}: "
                    "expected float32 or bfloat16")
  # A hub id is fetched (or found in the HF cache) once, here; the store
  # records the id as given and the digest of the weights it named.
  checkpoint = hub.resolve(args.checkpoint) if args.checkpoint else None
  encoder = registry.load(args.model, checkpoint,
                          dtype=getattr(jnp, c.compute_dtype),
                          **encoder_options(c.encoder_options))
  for spec, builder, mode, _ in jobs:  # before the first store is started
    extract_lib.check_frame_keys(
        extract_lib.frame_keys(encoder, mode, c.frames),
        builder.info.features.keys(), spec.name)
  digest = (extract_lib.weights_digest(encoder.params) if checkpoint
            else None)
  # Only stores begun by an older lary-jax need the files hashed: at most
  # once, however many splits there are.
  old_digest = functools.cache(lambda: extract_lib.files_digest(checkpoint))
  for spec, builder, mode, split in jobs:
    store_dir = _store_dir(args, spec.name, split, args.store_name)
    fields = dict(
        model=args.store_name, checkpoint=args.checkpoint,
        checkpoint_digest=_store_digest(store_dir, digest, old_digest),
        encoder_options=c.encoder_options,
        compute_dtype=c.compute_dtype, dataset=spec.name,
        tfds_name=metadata.tfds_name(spec), split=split,
        # A split prepared again (other rows or frames) is another input.
        tfds_split_bytes=builder.info.splits[split].num_bytes)
    summary = extract_lib.extract_split(
        encoder, builder.as_data_source()[split], mode=mode,
        store_dir=store_dir, fields=fields, options=options)
    if jax.process_index() == 0:
      print(f"{spec.name} {split}: {summary}")
    if args.export_npz:
      csv_out = upstream_npz.export_split(
          store_dir,
          args.la_dir or layout.latent_actions_dir(args.workdir),
          spec, split, model=args.store_name,
          split_sizes={s: i.num_examples
                       for s, i in builder.info.splits.items()},
          csv_path=args.csv, metadata_dir=args.metadata_dir,
          data_dir=args.data_dir, dtype=c.export_dtype)
      if jax.process_index() == 0:
        print(f"{spec.name} {split}: exported .npz files, CSV {csv_out}")
  return 0


def import_features(flags, config: Config) -> int:
  """Turns upstream's .npz files + LA CSV (--csv, --la_dir) into a store."""
  from tfds_builders import metadata  # pylint: disable=g-import-not-at-top
  from tfds_builders import prepare  # pylint: disable=g-import-not-at-top
  _require(flags, "model", "dataset", "split", "csv", "la_dir")
  specs = metadata.resolve_datasets(flags.dataset, flags.stride)
  if len(specs) != 1:
    raise LaryError(f"--dataset {flags.dataset} names {len(specs)} datasets; "
                    "import one at a time")
  spec = specs[0]
  mode = _mode(flags, spec)
  identity_key = feature_store.IDENTITY_KEYS[mode]
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
  manifest = upstream_npz.import_npz(
      flags.csv, flags.la_dir, store_dir, dataset=spec.name,
      split=upstream_npz.upstream_split_name(spec.name, flags.split),
      model=flags.model,
      identity_column=upstream_npz.identity_column(spec.kind),
      fields=fields, identities=identities, dtype=config.extract.dtype,
      shard_mb=config.extract.shard_mb)
  print(f"{spec.name} {flags.split}: imported {manifest['num_rows']} rows of "
        f"{manifest['token_shape']} -> {store_dir}")
  return 0


# -------------------------------------------------------------- the probes


def _seeds(args: command_args.ProbeArgs, default: int | None = None
           ) -> list[int]:
  """--seeds, else --seed, else `default` (when given) or --seed's 0."""
  seed = args.seed
  if default is not None and not args.seed_given:
    seed = default
  text = args.seeds if args.seeds else str(seed)
  try:
    seeds = [int(t) for t in text.split(",") if t.strip()]
  except ValueError:
    raise LaryError(f"--seeds {text!r}: expected integers, e.g. 0,1,2") from None
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise LaryError(f"--seeds {text!r}: expected distinct non-negative "
                    "integers")
  return seeds


def _feature_stores(flags, spec, builder) -> dict[str, str]:
  stores = {}
  for split in builder.info.splits:
    store_dir = _store_dir(flags, spec.name, split)
    if os.path.exists(os.path.join(store_dir, feature_store.MANIFEST)):
      stores[split] = store_dir
    elif os.path.isdir(store_dir):
      raise LaryError(f"{store_dir} is an unfinished extraction; rerun "
                      f"`extract --model {flags.model} --dataset {spec.name}` "
                      "to finish it")
  for split in (keys.TRAIN, keys.VALIDATION):
    if split not in stores:
      raise LaryError(
          f"no {flags.model} features of {spec.name} {split} in "
          f"{_store_dir(flags, spec.name, split)}; run `python -m "
          f"lary_jax.main extract --model {flags.model} --dataset "
          f"{spec.name}` first")
  return stores


def probe_specs(names: str, stride: int | None, command: str) -> list:
  """The datasets `command` ("classify" or "regress") probes of --dataset.

  A name that stands for several datasets (`sim`: both LARY-Sim halves)
  gives the ones that fit the command; a single dataset that does not fit
  is refused, naming the datasets that do.
  """
  from tfds_builders import metadata  # pylint: disable=g-import-not-at-top
  fits = _classifies if command == "classify" else _regresses
  specs = []
  for name in (n.strip() for n in names.split(",") if n.strip()):
    group = metadata.resolve_datasets(name, stride)
    if len(group) > 1:
      group = [s for s in group if fits(s)]
    for spec in group:
      if not fits(spec):
        takes = ", ".join(s.name for s in metadata.DATASETS.values()
                          if fits(s))
        why = (f"is a {spec.kind} dataset" if command == "classify" else
               "has no numeric action chunks")
        raise LaryError(f"--dataset {spec.name} {why}; {command} takes "
                        f"{takes}")
    specs += group
  if not specs:
    raise LaryError(f"--dataset {names!r}: no dataset for {command}")
  return specs


def _classifies(spec) -> bool:
  # LIBERO's pairs carry a direction label: classified from pair features.
  return spec.kind == "classification" or spec.label_action


def _regresses(spec) -> bool:
  return spec.kind == "regression" and not spec.label_action


def classify(flags, config: Config) -> int:
  """Trains and evaluates the attentive probes on stored features."""
  return classify_features(command_args.from_flags(ClassifyArgs, flags),
                           config)


def classify_features(args: ClassifyArgs, config: Config) -> int:
  """`classify` with typed arguments."""
  _require(args, "model", "dataset")
  jax = _start_processes(args, "classify")
  from tfds_builders import metadata  # pylint: disable=g-import-not-at-top
  c = config.classify
  options = command_args.from_config(
      train_classifier.Options, c,
      heads=tuple(tuple(float(v) for v in h) for h in c.heads))
  shape = classify_lib.ProbeShape(**c.probe.to_dict())
  seeds = _seeds(args)
  for spec in probe_specs(args.dataset, args.stride, "classify"):
    builder = _prepared(spec, args)
    stores = _feature_stores(args, spec, builder)
    out_dir = layout.classify_dir(args.workdir, spec.name, args.model)
    summary = classify_lib.classify(
        builder, stores, out_dir, seeds=seeds, holdout=c.holdout, shape=shape,
        options=options, dim=args.dim, classes=args.classes,
        fields={"model": args.model, "dataset": spec.name},
        source_video=functools.partial(metadata.source_video, spec))
    if jax.process_index() == 0:
      print(classify_lib.describe(summary, out_dir))
  return 0


def regress(flags, config: Config) -> int:
  """Trains and evaluates an action decoder on stored pair features."""
  return regress_features(command_args.from_flags(RegressArgs, flags),
                          config)


def regress_features(args: RegressArgs, config: Config) -> int:
  """`regress` with typed arguments."""
  _require(args, "model", "dataset")
  jax = _start_processes(args, "regress")
  c = config.regress
  options = command_args.from_config(train_regressor.Options, c)
  if args.model_type == "mlp":
    shape = dict(hidden=c.mlp_hidden, blocks=c.mlp_blocks)
    factory = regress_lib.mlp(**shape)
  else:
    shape = dict(hidden=c.dit_hidden, depth=c.dit_depth,
                 num_heads=c.dit_heads, clip_sample=c.dit_clip_sample)
    factory = regress_lib.dit(**shape)
  seeds = _seeds(args, default=42)  # upstream's regression seed
  for spec in probe_specs(args.dataset, args.stride, "regress"):
    builder = _prepared(spec, args)
    stores = _feature_stores(args, spec, builder)
    out_dir = layout.regress_dir(args.workdir, spec.name, args.model,
                                 args.model_type, args.action_mode)
    summary = regress_lib.regress(
        builder, spec, stores, out_dir, decoder_factory=factory,
        model_type=args.model_type, action_mode=args.action_mode,
        seeds=seeds, holdout=c.holdout, options=options,
        fields={"model": args.model, "dataset": spec.name},
        decoder_shape=shape)
    if jax.process_index() == 0:
      print(regress_lib.describe(summary, out_dir))
  return 0


def train_lam(flags, config: Config) -> int:
  """Trains a latent action model on prepared datasets' frame pairs."""
  if "lam" not in config:
    raise LaryError("train_lam needs a LAM config: --config=lam/lapa_sim "
                    "(or lam/lapa, or your own .py file with a `lam` section)")
  jax = _start_processes(flags, "train_lam")
  c = config.lam
  pairs, inputs = train_lam_lib.prepared_pairs(
      flags.dataset or c.dataset, _tfds_dir(flags), flags.split or c.split,
      stride=flags.stride, clip_gaps=c.clip_gaps)
  summary = train_lam_lib.train_from_config(
      c, pairs, train_lam_lib.workdir_of(flags.workdir, c), inputs=inputs,
      seed=flags.seed if flags["seed"].present else None)
  if jax.process_index() == 0:
    print(train_lam_lib.describe(summary))
  return 0


def report(flags, config: Config) -> int:
  """Writes <workdir>/report.md and report.html from every result there."""
  return write_report(command_args.from_flags(ReportArgs, flags), config)


def write_report(args: ReportArgs, config: Config) -> int:  # pylint: disable=unused-argument
  """`report` with typed arguments (the config is not read)."""
  md_path, html_path = report_lib.write(args.workdir,
                                        published=args.published)
  print(f"report: {md_path} and {html_path}")
  return 0


COMMANDS: dict[str, Callable[[Any, Config], int]] = {
    "simulate": simulate,
    "check": check,
    "prepare": prepare_datasets,
    "run": run,
    "convert": convert,
    "extract": extract,
    "import": import_features,
    "classify": classify,
    "regress": regress,
    "report": report,
    "train_lam": train_lam,
}

# What `run` (benchmark_run.py) calls, with the arguments it builds.
STAGES: dict[str, Callable[[Any, Config], int]] = {
    "simulate": simulate_data,
    "prepare": prepare_data,
    "extract": extract_features,
    "classify": classify_features,
    "regress": regress_features,
    "report": write_report,
}
