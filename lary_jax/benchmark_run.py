"""The `run` command: the whole benchmark on one workdir, stage by stage.

  render LARY-Sim (unless --data_dir) -> prepare -> train the run's LAM
  -> extract every model -> classify + regress every model -> report

Each stage is one of the other commands (commands.py) called as a function
with the typed arguments (command_args.py) those commands build from their
flags, so `run` computes exactly what the commands would. A stage that
finished leaves `<workdir>/run/<stage>.json` (`workdir_layout.stage_marker`)
holding what it was asked to do; a rerun with the same request skips it, and
an interrupted stage resumes where its command resumes (rendering,
extraction shards, probe epochs).

With several processes (--num_processes ...) every process runs every
stage: the commands split the work over all devices; rendering, preparing
and the report are process 0's, the others wait for them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from typing import Any

import ml_collections

from lary_jax import command_args as args_lib
from lary_jax import compilation
from lary_jax import config_args
from lary_jax import mesh as mesh_lib
from lary_jax import names
from lary_jax import progress as progress_lib
from lary_jax import workdir_layout as layout
from lary_jax.encoders import convert
from lary_jax.encoders import registry
from lary_jax.errors import LaryError
from lary_jax.lams import train_lam

# The model `run` trains itself (config.run.lam_config) and then treats as
# any other model.
RUN_LAM = "run_lam"
DECODERS = ("mlp", "dit")
ACTION_MODES = ("absolute", "relative")


@dataclasses.dataclass(frozen=True)
class Model:
  """A model of the run: registry name, checkpoint, feature-store name."""

  name: str  # what `extract --model` loads
  checkpoint: str | None = None
  label: str = ""  # the folder name in features/ and results (default name)

  @property
  def store_name(self) -> str:
    return self.label or self.name


def parse_decoders(text: str) -> list[tuple[str, str]]:
  """"mlp:absolute,dit:relative" -> [("mlp", "absolute"), ...]."""
  out = []
  for item in filter(None, (t.strip() for t in text.split(","))):
    kind, _, mode = item.partition(":")
    if kind not in DECODERS or mode not in ACTION_MODES:
      raise LaryError(f"--config.run.decoders: {item!r} is not TYPE:MODE with "
                      f"TYPE in {DECODERS} and MODE in {ACTION_MODES}")
    out.append((kind, mode))
  return out


def models_in(models_dir: str) -> list[Model]:
  """Every converted checkpoint (a `convert` output) under `models_dir`."""
  if not os.path.isdir(models_dir):
    raise LaryError(f"--models_dir {models_dir}: not a directory")
  found = []
  for entry in sorted(os.listdir(models_dir)):
    path = os.path.join(models_dir, entry)
    if os.path.isdir(path) and convert.is_converted(path):
      name, _, _ = convert.load_converted(path)
      # The folder name is the model's name in features and results, and
      # extraction looks it up first: another built-in model's name would
      # load that model (e.g. `magvit2`, the LAQ, for a magvit2_encoder).
      if entry != name and entry in registry.available():
        raise LaryError(f"--models_dir {models_dir}: folder {entry!r} holds "
                        f"a {name!r} checkpoint, but {entry!r} is another "
                        f"built-in model; rename the folder (e.g. {name!r})")
      found.append(Model(name=name, checkpoint=path, label=entry))
  if not found:
    raise LaryError(f"--models_dir {models_dir}: no checkpoint written by "
                    "`convert` in it (a folder per model)")
  return found


PROBES = ("auto", "small", "protocol")


def stage_config(config: ml_collections.ConfigDict, on_sim: bool = True
                 ) -> ml_collections.ConfigDict:
  """The config the stages run with: `config.run.overrides` applied where
  the small probes are asked for (`config.run.probes`; "auto": when every
  dataset is LARY-Sim's, so that LARYBench data gets the protocol's)."""
  probes = config.run.probes
  if probes not in PROBES:
    raise LaryError(f"--config.run.probes={probes!r}: expected one of "
                    f"{PROBES}")
  out = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  if probes == "small" or (probes == "auto" and on_sim):
    for section, fields in config.run.overrides.items():
      out[section].update(fields)  # nested sections merge field by field
  out.lock()
  return out


# A stage to run: (name, request its marker records, what it does).
Job = tuple[str, Mapping[str, Any], Callable[[], Any]]


class Stages:
  """Runs named stages once each; `<workdir>/run/<name>.json` marks done."""

  def __init__(self, workdir: str, is_main: bool, barrier: Callable[[str],
                                                                      None]):
    self.workdir = workdir
    self.is_main = is_main
    self.barrier = barrier
    self.done: list[str] = []
    self.skipped: list[str] = []
    self.seconds: dict[str, float] = {}  # wall time of each stage run now
    # What each stage run now compiled (compilation.CompileStats.as_dict).
    self.compiled: dict[str, dict[str, float | int]] = {}

  def _marker(self, name: str) -> str:
    return layout.stage_marker(self.workdir, name)

  def finished(self, name: str, request: Mapping[str, Any]) -> bool:
    try:
      with open(self._marker(name)) as f:
        return json.load(f) == json.loads(json.dumps(request, default=str))
    except (OSError, ValueError):
      return False

  def run(self, name: str, request: Mapping[str, Any], fn: Callable[[], Any],
          *, main_only: bool = False) -> None:
    """Runs `fn` unless stage `name` finished with the same `request`."""
    if self.finished(name, request):
      self.skipped.append(name)
      return
    start = time.perf_counter()
    compiled = compilation.stats(this_thread=True)
    if self.is_main or not main_only:
      fn()
    self.barrier(name)
    self.seconds[name] = round(time.perf_counter() - start, 1)
    self.compiled[name] = (compilation.stats(this_thread=True)
                           - compiled).as_dict()
    if self.is_main:
      os.makedirs(os.path.dirname(self._marker(name)), exist_ok=True)
      tmp = self._marker(name) + ".tmp"
      with open(tmp, "w") as f:
        json.dump(request, f, indent=1, default=str)
      os.replace(tmp, self._marker(name))
    self.barrier(name + "/marked")
    self.done.append(name)

  def run_all(self, jobs: Sequence[Job], threads: int,
              on_done: Callable[[str], None]) -> None:
    """Runs (name, request, fn) jobs as `run` does, `threads` at a time.

    Jobs side by side must not talk to other processes (one-process runs
    only: collectives of two stages would interleave). Each job's time and
    compilations are its own; they overlap in wall time.
    """
    def job(name, request, fn):
      self.run(name, request, fn)
      on_done(name)

    if threads <= 1:
      for name, request, fn in jobs:
        job(name, request, fn)
      return
    with futures.ThreadPoolExecutor(threads) as pool:
      running = [pool.submit(job, *j) for j in jobs]
    for name, _, _ in jobs:  # job order, not the order they ended in
      for table in (self.seconds, self.compiled):
        if name in table:
          table[name] = table.pop(name)
    for future in running:  # the first failure, once every job ended
      future.result()


# A stage may keep process 0 busy for hours (rendering, preparing real
# data) while the others wait.
BARRIER_TIMEOUT_MS = 48 * 3600 * 1000


def _barrier_fn() -> Callable[[str], None]:
  """Waits for every process at a named point (no-op for one process)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return lambda name: None
  # The coordination service's barrier, not a device collective: those time
  # out while one process works alone. JAX exports no such barrier; orbax's
  # public one waits on the same service (jax.distributed's client).
  from orbax.checkpoint import multihost  # pylint: disable=g-import-not-at-top
  wait = multihost.get_barrier_sync_fn()
  return lambda name: wait(key=f"lary_run/{name}",
                           timeout_ms=BARRIER_TIMEOUT_MS)


# Models that only LARY-Sim can feed: recorded states, and a LAM whose
# config trains it on LARY-Sim. Left out (with a line) on other datasets.
SIM_ONLY = ("sim_oracle", RUN_LAM)


def plan_models(flags: Any, config: ml_collections.ConfigDict,
                on_sim: bool = True) -> list[Model]:
  """The models of the run: config.run.models plus --models_dir's (without
  SIM_ONLY's unless every dataset is LARY-Sim)."""
  models = []
  for name in filter(None, (t.strip() for t in config.run.models.split(","))):
    name = names.model(name)  # upstream's names too
    if name in SIM_ONLY and not on_sim:
      print(f"run: {name} left out: it needs LARY-Sim (config.run.models)",
            file=sys.stderr)
      continue
    models.append(Model(name=name))
  if flags.models_dir:
    models += models_in(flags.models_dir)
  labels = [m.store_name for m in models]
  if len(set(labels)) != len(labels):
    raise LaryError(f"run: two models would share a results folder: {labels}")
  return models


@dataclasses.dataclass
class _Run:
  """What every stage of one `run` invocation shares."""

  flags: Any
  cfg: ml_collections.ConfigDict
  commands: Mapping[str, Callable[[Any, Any], int]]  # commands.STAGES
  stages: Stages
  bar: Any  # the stage progress bar
  base: dict[str, str]  # data_dir, tfds_dir and workdir of every stage
  datasets: str

  def start(self, label: str) -> None:
    self.bar.set_postfix_str(label)

  def processes(self) -> dict[str, Any]:
    """The multi-host flags every device stage joins with."""
    return {f.name: getattr(self.flags, f.name)
            for f in dataclasses.fields(args_lib.ProcessArgs)}


def _data_stage(r: _Run) -> None:
  """Renders LARY-Sim when no --data_dir was given, then prepares."""
  r.start("data")
  flags, cfg = r.flags, r.cfg
  render = args_lib.SimulateArgs(out=r.base["data_dir"], tiny=flags.tiny,
                                 seed=flags.seed)
  prepare = args_lib.PrepareArgs(
      dataset=r.datasets, **r.base, stride=flags.stride,
      metadata_dir=flags.metadata_dir, skip_bad_rows=flags.skip_bad_rows)

  def data():
    if not flags.data_dir:
      r.commands["simulate"](render, cfg)
    r.commands["prepare"](prepare, cfg)
  r.stages.run("data", dict(datasets=r.datasets, tiny=flags.tiny,
                            seed=flags.seed, **r.base,
                            prepare=cfg.prepare.to_dict()), data,
               main_only=True)
  r.bar.update()


def _lam_stage(r: _Run, models: list[Model]) -> list[Model]:
  """Trains the run's LAM; returns the models with it in RUN_LAM's place."""
  r.start("train LAM")
  lam_config = config_args.read(r.cfg.run.lam_config,
                                "--config.run.lam_config")
  # Where `train_lam --config <lam_config>` would write: the same model.
  lam_dir = train_lam.workdir_of(r.base["workdir"], lam_config.lam)
  r.stages.run("train_lam", dict(config=lam_config.to_dict(), **r.base),
               lambda: train_lam.train_for_run(
                   lam_config, workdir=lam_dir,
                   tfds_dir=r.base["tfds_dir"]))
  models = [dataclasses.replace(m, name=lam_config.lam.model,
                                checkpoint=train_lam.checkpoint_dir(lam_dir),
                                label=m.store_name)
            if m.name == RUN_LAM else m for m in models]
  r.bar.update()
  return models


def _extract_stages(r: _Run, models: list[Model]) -> None:
  """Extracts every model's features of every dataset."""
  for m in models:
    r.start(f"extract {m.store_name}")
    a = args_lib.ExtractArgs(
        **r.processes(), model=_loaded_name(m), checkpoint=m.checkpoint,
        dataset=r.datasets, split=None, mode=None, out=None, **r.base,
        metadata_dir=r.flags.metadata_dir, stride=r.flags.stride,
        export_npz=False, la_dir=r.flags.la_dir, csv=None,
        label=m.store_name)
    cfg_m = _with_encoder_options(r.cfg, m)
    r.stages.run(f"extract_{m.store_name}",
                 dict(model=m, extract=cfg_m.extract.to_dict(), **r.base),
                 lambda a=a, cfg_m=cfg_m: r.commands["extract"](a, cfg_m))
    r.bar.update()


def _probe_jobs(r: _Run, models: list[Model], specs: list[Any],
                decoders: list[tuple[str, str]], seeds: str) -> list[Job]:
  """(stage name, request, fn) of every probe stage: classification
  datasets (and LIBERO's labelled pairs) get the attentive probe,
  regression datasets every decoder of config.run.decoders."""
  cfg, flags = r.cfg, r.flags
  jobs = []
  for m in models:
    for spec in specs:
      # Where the features are: as `classify --out` of the run's flags.
      probe = dict(**r.processes(), model=m.store_name, dataset=spec.name,
                   seeds=seeds, seed=flags.seed,
                   seed_given=flags["seed"].present, out=flags.out,
                   workdir=r.base["workdir"], tfds_dir=r.base["tfds_dir"],
                   stride=flags.stride)
      if spec.kind == "classification" or spec.label_action:
        a = args_lib.ClassifyArgs(**probe, dim=None, classes=None)
        jobs.append((f"classify_{spec.name}_{m.store_name}",
                     dict(seeds=seeds, classify=cfg.classify.to_dict(),
                          **r.base),
                     lambda a=a: r.commands["classify"](a, cfg)))
      elif not spec.label_action:
        for kind, mode in decoders:
          a = args_lib.RegressArgs(**probe, model_type=kind,
                                   action_mode=mode)
          jobs.append((f"regress_{spec.name}_{m.store_name}_{kind}_{mode}",
                       dict(seeds=seeds, regress=cfg.regress.to_dict(),
                            **r.base),
                       lambda a=a: r.commands["regress"](a, cfg)))
  return jobs


def _probe_stages(r: _Run, jobs: Sequence[Job], threads: int) -> None:
  """Every probe stage, `threads` at a time."""
  r.start("probes")

  def done(name):
    r.bar.set_postfix_str(name)
    r.bar.update()

  r.stages.run_all(jobs, threads, done)


def probe_threads(cfg: ml_collections.ConfigDict, process_count: int,
                  backend: str) -> int:
  """How many probe stages run side by side (config.run.probe_threads; 0:
  2 on a one-process CPU run, whose small probes keep one core busy, else
  1). Several processes always take one: their collectives must not
  interleave."""
  if process_count > 1:
    return 1
  threads = cfg.run.probe_threads
  if threads < 0:
    raise LaryError(f"--config.run.probe_threads={threads}: expected 0 "
                    "(automatic) or a number of stages")
  if threads == 0:
    return 2 if backend == "cpu" else 1
  return threads


def _report_stage(r: _Run) -> None:
  """Writes the report of every result in the workdir."""
  r.start("report")
  a = args_lib.ReportArgs(workdir=r.base["workdir"],
                          published=r.flags.published)
  r.stages.run("report",
               dict(time=_results_stamp(r.base["workdir"]), **r.base),
               lambda: r.commands["report"](a, r.cfg), main_only=True)
  r.bar.update()


def run(flags: Any, config: ml_collections.ConfigDict,
        commands: Mapping[str, Callable[[Any, Any], int]]) -> int:
  """Runs every stage of the benchmark (see the module docstring)."""
  from tfds_builders import metadata  # pylint: disable=g-import-not-at-top
  mesh_lib.initialize_distributed(flags.coordinator_address,
                                  flags.num_processes, flags.process_id)
  mesh_lib.announce("run")
  import jax  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  is_main = jax.process_index() == 0
  workdir = flags.workdir
  stages = Stages(workdir, is_main, _barrier_fn())
  data_dir = flags.data_dir or layout.sim_data_dir(workdir, flags.tiny)
  tfds_dir = flags.tfds_dir or layout.tfds_dir(workdir, flags.tiny)
  datasets = flags.dataset or "sim"
  specs = metadata.resolve_datasets(datasets, flags.stride)
  on_sim = all(metadata.is_sim(s) for s in specs)
  cfg = stage_config(config, on_sim=on_sim)
  models = plan_models(flags, cfg, on_sim)
  decoders = parse_decoders(cfg.run.decoders)
  seeds = flags.seeds or cfg.run.seeds
  base = dict(data_dir=data_dir, tfds_dir=tfds_dir, workdir=workdir)

  r = _Run(flags, cfg, commands, stages, None, base, datasets)
  jobs = _probe_jobs(r, models, specs, decoders, seeds)
  todo = ["data"] + [f"extract {m.store_name}" for m in models]
  todo += [name for name, _, _ in jobs] + ["report"]
  if any(m.name == RUN_LAM for m in models):
    todo.insert(1, "train LAM")
  r.bar = progress_lib.bar(len(todo), desc="run", unit="stage", show=is_main,
                           position=0)
  _data_stage(r)
  if any(m.name == RUN_LAM for m in models):
    models = _lam_stage(r, models)
  _extract_stages(r, models)
  threads = probe_threads(cfg, jax.process_count(), jax.default_backend())
  _probe_stages(r, jobs, threads)
  _report_stage(r)
  r.bar.close()
  if is_main:
    _write_timings(workdir, stages.seconds, stages.compiled,
                   wall_s=time.perf_counter() - start, probe_threads=threads)
    print(f"run: {len(stages.done)} stage(s) run, {len(stages.skipped)} "
          f"already done; report: {layout.report_files(workdir)[1]}")
  return 0


def _loaded_name(model: Model) -> str:
  """The registry name `extract` loads for a model of the run.

  Its features are filed under its store name; a store name that is itself
  a registered model is that model.
  """
  if model.store_name in registry.available():
    return model.store_name
  return model.name


def _with_encoder_options(cfg: ml_collections.ConfigDict, model: Model
                          ) -> ml_collections.ConfigDict:
  """cfg with extract.encoder_options = config.run.encoder_options of the
  model's results name (e.g. run_lam), else of its registry name."""
  options = cfg.run.encoder_options.get(model.store_name,
                                        cfg.run.encoder_options.get(model.name))
  if options is None:
    return cfg
  out = ml_collections.ConfigDict(copy.deepcopy(cfg.to_dict()))
  out.extract.encoder_options = options
  out.lock()
  return out


def _write_timings(workdir: str, seconds: Mapping[str, float],
                   compiled: Mapping[str, Mapping[str, float | int]],
                   wall_s: float, probe_threads: int) -> None:
  """Adds this invocation's stage times to `<workdir>/run_timings.json`.

  `compiled`: each stage's compilations (count, cache hits, seconds), whose
  `compile_s` is part of the stage's wall time. `total_s` is the wall time
  of the invocation: with `probe_threads` > 1 the probe stages overlap, and
  their times add up to more.
  """
  if not seconds:
    return
  path = layout.run_timings_file(workdir)
  try:
    with open(path) as f:
      runs = json.load(f)
  except (OSError, ValueError):
    runs = []
  runs.append({"finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "total_s": round(wall_s, 1),
               "probe_threads": probe_threads,
               "stages_s": dict(seconds),
               "compile": {k: dict(v) for k, v in compiled.items()}})
  with open(path + ".tmp", "w") as f:
    json.dump(runs, f, indent=1)
  os.replace(path + ".tmp", path)
  print("run: stage times " + ", ".join(
      f"{k} {v:.0f} s ({compiled[k]['compile_s']:.0f} s compiling)"
      for k, v in seconds.items()))


def _results_stamp(workdir: str) -> list[str]:
  """The results.json files the report reads, with their sizes and times."""
  out = []
  for task in (layout.CLASSIFY, layout.REGRESS):
    root = layout.probe_root(workdir, task)
    for dirpath, _, files in sorted(os.walk(root)):
      if layout.RESULTS in files:
        p = layout.results_file(dirpath)
        st = os.stat(p)
        out.append(f"{os.path.relpath(p, workdir)}:{st.st_size}:"
                   f"{int(st.st_mtime)}")
  return sorted(out)
