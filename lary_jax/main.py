"""lary-jax: the LARY benchmark in JAX.

    lary COMMAND [--flags] [--config=NAME] [--config.SECTION.FIELD=VALUE]
    python -m lary_jax COMMAND ...        (the same; also python -m
                                           lary_jax.main)

`lary --help` lists the commands, `lary COMMAND --help` one command's flags.
A `LaryError` (bad input, a bad flag or config) is printed as one line, and
so is a full disk.
Every command keeps compiled XLA programs in JAX's persistent compilation
cache (lary_jax/compilation.py; --compilation_cache_dir DIR, off with
--nocompilation_cache).
"""

from __future__ import annotations

import errno
import importlib
import os
import re
import sys
import textwrap
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections

from lary_jax import commands
from lary_jax import compilation
from lary_jax import config_args
from lary_jax import mesh
from lary_jax import names
from lary_jax.errors import LaryError

flags.DEFINE_string("dataset", None, "Dataset(s), comma-separated: "
                    + ", ".join(commands.DATASET_NAMES))
flags.DEFINE_alias("datasets", "dataset")
flags.DEFINE_string("models_dir", None, "run: a folder of `convert` outputs "
                    "(one folder per model), each added to the run.")
flags.DEFINE_string("split", None, "train, validation or unseen (upstream's "
                    "val, seen_train, seen_val and all are read as ours).")
flags.DEFINE_integer("stride", None, "Action chunk stride (vlabench: 5/15/30).")
flags.DEFINE_string("model", None, "Encoder or latent action model; "
                    "upstream's names (villa-x, wan2-2, dinov2-origin, ...) "
                    "are read as ours (README: upstream's names).")
flags.DEFINE_string("data_dir", None, "LARYBench DATA_DIR root.")
flags.DEFINE_string("metadata_dir", None,
                    "Folder of upstream metadata CSVs (default "
                    "<data_dir>/metadata).")
flags.DEFINE_string("tfds_dir", None, "Where prepared TFDS datasets go "
                    "(default <workdir>/tfds).")
flags.DEFINE_string("workdir", "lary_workdir", "Where a run writes.")
flags.DEFINE_list("plugins", [], "Python modules to import before the "
                  "command runs, e.g. one that registers your encoder with "
                  "lary_jax.encoders.register (colab/evaluate_your_encoder"
                  ".ipynb); the current folder is searched first.")
flags.DEFINE_string("out", None, "simulate: output DATA_DIR; convert: output "
                    "checkpoint directory; extract/import: feature store root "
                    "(default <workdir>/features).")
flags.DEFINE_string("src", None, "convert: HF folder (config.json + "
                    "*.safetensors), original .pt/.pth checkpoint, or a "
                    "Hugging Face hub id of one (org/name[/file]).")
flags.DEFINE_bool("tiny", False, "simulate/run: the tiny LARY-Sim.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_bool("skip_bad_rows", False,
                  "prepare: leave bad rows out (listed in bad_rows.csv).")
flags.DEFINE_string("checkpoint", None, "extract: encoder checkpoint (a "
                    "`convert` output, an HF folder or file, or a hub id "
                    "such as facebook/dinov2-large); none for baselines.")
flags.DEFINE_enum("mode", None, ["image", "video"],
                  "extract: image (src, tgt pairs; regression datasets) or "
                  "video (9 frames; classification); default from --dataset.")
flags.DEFINE_bool("export_npz", False, "extract: also write upstream's layout "
                  "(.npz per row + CSV with la_path) into --la_dir.")
flags.DEFINE_string("la_dir", None, "Upstream's latent-action root "
                    "(LARY_LA_DIR); extract default <workdir>/latent_actions.")
flags.DEFINE_string("csv", None, "import: upstream's LA CSV (with la_path); "
                    "extract --export_npz: the metadata CSV to append to.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of "
                    "process 0 (none on Cloud TPU: detected).")
flags.DEFINE_integer("num_processes", None, "Multi-host: processes in the run.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
flags.DEFINE_integer("dim", None, "classify: feature width (default: the "
                     "store's; checked if given).")
flags.DEFINE_integer("classes", None, "classify: number of classes (default: "
                     "the dataset's; checked if given).")
flags.DEFINE_enum("model_type", "mlp", ["mlp", "dit"],
                  "regress: the action decoder.")
flags.DEFINE_alias("model-type", "model_type")
flags.DEFINE_enum("action_mode", "absolute", ["absolute", "relative"],
                  "regress: the whole chunk, or its last minus first step.")
flags.DEFINE_alias("action-mode", "action_mode")
flags.DEFINE_string("seeds", None, "classify: comma-separated seeds, one run "
                    "each, with mean and std over them (default --seed).")
flags.DEFINE_bool("compilation_cache", True, "Keep compiled XLA programs "
                  "on disk and reuse them in later runs (JAX's persistent "
                  "compilation cache); --nocompilation_cache turns it off.")
flags.DEFINE_string("compilation_cache_dir", None, "Where the compilation "
                    "cache lives (default JAX_COMPILATION_CACHE_DIR, else "
                    "$XDG_CACHE_HOME/lary_jax/jax_cache or "
                    "~/.cache/lary_jax/jax_cache). Several processes may "
                    "share it.")
flags.DEFINE_string("published", None, "report: CSV of published numbers "
                    "(task,dataset,model,metric,value[,split][,decoder]; "
                    "lary_jax/report/__init__.py) shown beside ours.")
flags.DEFINE_bool("upstream_names", False, "Read --model dinov2/dinov3/"
                  "siglip2 as upstream does (the LAPA LAMs lapa_dinov2, ...), "
                  "not as the raw backbones they name here.")
flags.DEFINE_string("gpus", None, "Upstream's flag, refused: every command "
                    "uses every device JAX sees; choose GPUs with "
                    "CUDA_VISIBLE_DEVICES.")


# Flags every command reads.
_COMMON = ("workdir", "plugins", "compilation_cache",
           "compilation_cache_dir")
_MULTI_HOST = ("coordinator_address", "num_processes", "process_id")

# command -> (arguments, what it does, the flags it reads besides _COMMON).
COMMAND_HELP: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "simulate": (
        "--out DIR [--tiny] [--seed N]",
        "render LARY-Sim, a small LARY-format DATA_DIR with metadata CSVs",
        ("out", "tiny", "seed")),
    "check": (
        "--dataset D --data_dir DIR [--metadata_dir DIR]",
        "list every bad row of a dataset's metadata CSVs (CSV, line, path, "
        "reason); exit 1 if any",
        ("dataset", "data_dir", "metadata_dir", "stride", "split")),
    "prepare": (
        "--dataset D --data_dir DIR [--tfds_dir DIR] [--skip_bad_rows]",
        "build the TFDS datasets of --dataset from --data_dir into --tfds_dir",
        ("dataset", "data_dir", "metadata_dir", "stride", "tfds_dir",
         "skip_bad_rows")),
    "run": (
        "[--tiny] [--models_dir DIR] [--datasets D --data_dir DIR]",
        "the whole benchmark: render LARY-Sim if missing (or read --data_dir), "
        "prepare, train a small LAM, extract every model, classify + regress, "
        "report; redoes nothing that finished",
        ("tiny", "models_dir", "dataset", "data_dir", "metadata_dir",
         "tfds_dir", "stride", "seed", "seeds", *_MULTI_HOST)),
    "convert": (
        "--model M --src PATH --out DIR",
        "turn an HF folder (config + safetensors), an original .pt/.pth or a "
        "hub id of one into an orbax checkpoint",
        ("model", "src", "out", "upstream_names")),
    "extract": (
        "--model M [--checkpoint PATH] --dataset D [--split S]",
        "encode a prepared dataset (every split, or --split) on every device "
        "into feature stores <out or workdir/features>/DATASET/SPLIT/MODEL; "
        "resumes a killed run",
        ("model", "checkpoint", "dataset", "split", "stride", "mode", "out",
         "tfds_dir", "export_npz", "la_dir", "csv", "data_dir",
         "metadata_dir", "upstream_names", *_MULTI_HOST)),
    "import": (
        "--model M --dataset D --split S --csv LA.csv --la_dir DIR",
        "turn upstream's .npz latent actions and LA CSV into a feature store",
        ("model", "dataset", "split", "stride", "csv", "la_dir", "out",
         "tfds_dir", "upstream_names")),
    "classify": (
        "--model M --dataset D [--seeds 0,1,2] [--dim N] [--classes K]",
        "the five attentive probes on M's features of a classification "
        "dataset (or LIBERO's pairs); results in "
        "<workdir>/classify/DATASET/MODEL; resumes",
        ("model", "dataset", "stride", "seeds", "seed", "dim", "classes",
         "tfds_dir", "out", "upstream_names", *_MULTI_HOST)),
    "regress": (
        "--model M --dataset D [--stride K] --model-type mlp|dit "
        "--action-mode absolute|relative [--seeds ...]",
        "an action decoder on M's pair features of a regression dataset; "
        "results in <workdir>/regress/DATASET/MODEL/TYPE_MODE; resumes",
        ("model", "dataset", "stride", "model_type", "action_mode", "seeds",
         "seed", "tfds_dir", "out", "upstream_names", *_MULTI_HOST)),
    "report": (
        "[--published CSV]",
        "report.md and a self-contained report.html from every classify/"
        "regress result in --workdir",
        ("published",)),
    "train_lam": (
        "--config lam/lapa_sim [--dataset D]",
        "train a LAPA-style latent action model on a prepared dataset's frame "
        "pairs into <workdir>/lam/NAME/model; resumes",
        ("dataset", "split", "stride", "tfds_dir", "seed", *_MULTI_HOST)),
}
_HELP_ARGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")


def _flag_lines(names_: Sequence[str]) -> list[str]:
  lines = []
  for name in names_:
    flag = flags.FLAGS[name]
    default = "" if flag.default in (None, "", [], False) else (
        f" (default {flag.default_as_str})")
    lines.append(_wrap(f"--{name}: {flag.help}{default}"))
  return lines


def _wrap(text: str, indent: int = 2, hang: int = 6) -> str:
  return textwrap.fill(text, 79, initial_indent=" " * indent,
                       subsequent_indent=" " * hang)


def help_text(command: str | None) -> str:
  """The overview (command None) or one command's usage and flags."""
  config_lines = [_wrap(
      "--config: a config by name (" + ", ".join(config_args.available())
      + ": the installed ones, from any folder) or a .py file with "
      "get_config()"), _wrap(
          "--config.SECTION.FIELD=VALUE: one field of the config, e.g. "
          "--config.classify.epochs=5")]
  if command is None:
    width = max(map(len, COMMAND_HELP))
    lines = ["lary-jax: the LARY benchmark in JAX.", "",
             "usage: lary COMMAND [--flags] [--config=NAME] "
             "[--config.SECTION.FIELD=VALUE]",
             "       (or python -m lary_jax COMMAND ...)", "", "commands:"]
    lines += [textwrap.fill(what, 79, initial_indent=f"  {name:{width}s}  ",
                            subsequent_indent=" " * (width + 4))
              for name, (_, what, _) in COMMAND_HELP.items()]
    lines += ["", "`lary COMMAND --help` lists that command's flags.", "",
              "flags of every command:"]
    return "\n".join(lines + _flag_lines(_COMMON) + config_lines) + "\n"
  usage, what, own = COMMAND_HELP[command]
  lines = [f"usage: lary {command} {usage}", "", textwrap.fill(what, 79),
           "", "flags:"]
  lines += _flag_lines(own)
  lines += ["", "flags of every command:"] + _flag_lines(_COMMON)
  return "\n".join(lines + config_lines) + "\n"


def _wants_help(argv: Sequence[str]) -> bool:
  return any(a in _HELP_ARGS for a in argv[1:])


def _normalise_names(flag_values) -> None:
  """Upstream's model and split names -> ours, for every command."""
  model = flag_values.model
  if model:
    ours = names.model(model, upstream=flag_values.upstream_names)
    note = None if flag_values.upstream_names else names.ambiguity_note(model)
    if note:
      print(note, file=sys.stderr)
    elif ours != model:
      print(f"note: upstream's --model {model} is {ours} here; features and "
            f"results are filed under {ours}", file=sys.stderr)
    flag_values.model = ours
  if flag_values.split is not None:
    flag_values.split = names.split(flag_values.split)


# Flags that name files or folders on this machine.
_PATH_FLAGS = ("workdir", "tfds_dir", "data_dir", "metadata_dir", "out",
               "models_dir", "la_dir", "csv", "src", "checkpoint", "published")


def _refuse_urls(flag_values) -> None:
  """gs://, s3://, ... paths: refused with the way that works (a mount).

  Results, feature stores, run markers and TFDS's preparation are written
  with local file operations (atomic renames included), which an object
  store URL does not take; a FUSE mount gives every one of them a path.
  """
  for name in _PATH_FLAGS:
    value = getattr(flag_values, name)
    if isinstance(value, str) and re.match(r"^[a-z][a-z0-9+.-]*://", value):
      bucket = value.split("://", 1)[1].split("/", 1)[0]
      raise LaryError(
          f"--{name} {value}: not a local path; mount the bucket and give "
          f"the mounted path, e.g. `gcsfuse --implicit-dirs "
          f"--rename-dir-limit=100000 {bucket} /mnt/{bucket}` then "
          f"--{name}=/mnt/{bucket}/... (scripts/tpu_pod.sh --bucket does "
          "this on a TPU pod)")


def main(argv: list[str], config: ml_collections.ConfigDict) -> int:
  """Runs one command with the parsed flags and `config`; its exit status."""
  if len(argv) != 2 or argv[1] not in commands.COMMANDS:
    given = " ".join(argv[1:]) or "nothing"
    print(f"error: expected one command of {', '.join(commands.COMMANDS)}, "
          f"got {given}; see --help", file=sys.stderr)
    return 2
  if not flags.FLAGS["verbosity"].present:
    # TFDS logs routine warnings (e.g. "no dataset_info.json" before a first
    # prepare) that would bury our own one-line messages; -v 0 shows them.
    logging.set_verbosity(logging.ERROR)
  if flags.FLAGS.gpus is not None:
    raise LaryError(
        f"--gpus {flags.FLAGS.gpus}: upstream's flag; here every command uses "
        "every device JAX sees: choose GPUs with CUDA_VISIBLE_DEVICES="
        f"{flags.FLAGS.gpus} (JAX_PLATFORMS=cpu for the CPU), hosts with "
        "--coordinator_address/--num_processes/--process_id")
  _refuse_urls(flags.FLAGS)
  _normalise_names(flags.FLAGS)
  # Before anything compiles (a plugin may): JAX reads it at the first.
  compilation.enable_cache(flags.FLAGS.compilation_cache_dir,
                           enabled=flags.FLAGS.compilation_cache)
  for module in flags.FLAGS.plugins:
    _import_plugin(module)
  if argv[1] not in commands.DEVICE_COMMANDS:
    # Device commands say where they run once their processes have joined.
    mesh.announce(argv[1], devices=False)
  return commands.COMMANDS[argv[1]](flags.FLAGS, config) or 0


def _import_plugin(name: str) -> None:
  """Imports a --plugins module (which registers encoders, ...)."""
  try:
    importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name is None or not (name + ".").startswith(e.name + "."):
      raise  # the plugin itself imports something missing: its own error
    raise LaryError(f"--plugins {name}: no such module in {os.getcwd()} or "
                    "on the Python path") from e


def disk_full(error: BaseException) -> str | None:
  """The one line to print when `error`, or what caused it, is a full
  disk; None for any other error.

  Python's own writes raise OSError(ENOSPC); orbax's go through tensorstore
  and raise a ValueError that only quotes the OS message.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    where = None
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      where = error.filename or "a file"
    elif "No space left on device" in str(error):
      quoted = re.search(r'local file "([^"]+)"', str(error))
      where = quoted.group(1) if quoted else "a file"
    if where is not None:
      return (f"no space left on the device writing {where}: free some "
              "space (or give --workdir a larger disk) and run the same "
              "command again; finished stages and checkpoints are kept")
    error = error.__cause__ or error.__context__
  return None


def run_cli(argv: Sequence[str] | None = None) -> None:
  """The `lary` console script and `python -m lary_jax`: exits with the
  command's status; `--help` (alone or after a command) exits 0."""
  argv = list(sys.argv if argv is None else argv)
  if _wants_help(argv):
    command = next((a for a in argv[1:] if a in COMMAND_HELP), None)
    sys.stdout.write(help_text(command))
    sys.exit(0)
  try:
    rest, config_name, overrides = config_args.split_argv(argv)
    config = config_args.load(config_name, overrides)
  except LaryError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)

  def absl_main(parsed: list[str]) -> None:
    try:
      status = main(parsed, config)
    except LaryError as e:
      print(f"error: {e}", file=sys.stderr)
      status = 1
    except Exception as e:  # pylint: disable=broad-exception-caught
      message = disk_full(e)
      if message is None:
        raise
      print(f"error: {message}", file=sys.stderr)
      status = 1
    sys.exit(status)

  app.run(absl_main, argv=rest)


if __name__ == "__main__":
  run_cli()
