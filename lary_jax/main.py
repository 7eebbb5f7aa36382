"""lary-jax: the LARY benchmark in JAX.

Usage: python -m lary_jax.main COMMAND [--flags] [--config=configs/x.py]
                                       [--config.SECTION.FIELD=VALUE]

Commands:
  simulate  render LARY-Sim, a small LARY-format DATA_DIR (--out, --tiny, --seed)
  check     list every bad row of a dataset's metadata CSVs; exit 1 if any
            (--dataset, --data_dir, --metadata_dir)
  prepare   build the TFDS datasets of --dataset from --data_dir into --tfds_dir
            (--skip_bad_rows leaves bad rows out and lists them)
  run       the whole benchmark: render LARY-Sim if missing (or read
            --data_dir, --datasets), prepare it, train a small LAM, extract
            every model (config.run.models, plus every `convert` output in
            --models_dir), classify + regress, report; redoes nothing that
            finished (--workdir; --tiny for a quick look)
  convert   turn an encoder checkpoint into an orbax checkpoint + config
            (--model, --src HF folder or .pt/.pth, --out DIR)
  extract   encode a prepared --dataset (every split, or --split) with
            --model [--checkpoint] on every device into feature stores
            <out or workdir/features>/DATASET/SPLIT/MODEL; resumes a killed
            run; --export_npz also writes upstream's .npz files and LA CSV
            into --la_dir; multi-host: --coordinator_address, --num_processes,
            --process_id
  import    turn upstream's .npz files and LA CSV (--csv, --la_dir) into a
            feature store (--model, --dataset, --split)
  classify  train the five attentive probes on --model's stored features of a
            classification --dataset; results in
            <workdir>/classify/DATASET/MODEL (--seeds 0,1,2; --dim, --classes
            are checked against the store and the dataset); resumes
  regress   train an action decoder (--model_type mlp|dit, --action_mode
            absolute|relative) on --model's stored pair features of a
            regression --dataset; results in
            <workdir>/regress/DATASET/MODEL/TYPE_MODE (--seeds); resumes
  train_lam train a LAPA-style latent action model on the frame pairs of a
            prepared --dataset (default the config's, LARY-Sim) with
            --config configs/lam/X.py; writes <workdir>/lam/NAME/model for
            extract --checkpoint; resumes a killed run
  report    write <workdir>/report.md and a self-contained report.html from
            every classify/regress result there: both selections with their
            spread over seeds, charts, confusion matrices, per-dimension MSE;
            --published CSV: published numbers beside ours

Every command keeps compiled XLA programs in JAX's persistent compilation
cache (lary_jax/compilation.py; --compilation_cache_dir DIR, off with
--nocompilation_cache). `python -m lary_jax.main --help` lists every flag.
"""

import importlib
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from lary_jax import commands
from lary_jax import compilation
from lary_jax.errors import LaryError

_CONFIG = config_flags.DEFINE_config_file(
    "config", commands.DEFAULT_CONFIG, "Config file (Python, get_config()).",
    lock_config=True)
flags.DEFINE_string("dataset", None, "Dataset(s), comma-separated: "
                    + ", ".join(commands.DATASET_NAMES))
flags.DEFINE_alias("datasets", "dataset")
flags.DEFINE_string("models_dir", None, "run: a folder of `convert` outputs "
                    "(one folder per model), each added to the run.")
flags.DEFINE_string("split", None, "train, validation or unseen.")
flags.DEFINE_integer("stride", None, "Action chunk stride (vlabench: 5/15/30).")
flags.DEFINE_string("model", None, "Encoder or latent action model.")
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
                    "*.safetensors) or original .pt/.pth checkpoint.")
flags.DEFINE_bool("tiny", False, "simulate/run: the tiny LARY-Sim.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_bool("skip_bad_rows", False,
                  "prepare: leave bad rows out (listed in bad_rows.csv).")
flags.DEFINE_string("checkpoint", None, "extract: encoder checkpoint (a "
                    "`convert` output or an HF folder); none for baselines.")
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
                    "lary_jax/report.py) shown beside ours.")


def main(argv: list[str]) -> int:
  if len(argv) != 2 or argv[1] not in commands.COMMANDS:
    given = " ".join(argv[1:]) or "nothing"
    print(f"error: expected one command of {', '.join(commands.COMMANDS)}, "
          f"got {given}; see --help", file=sys.stderr)
    return 2
  if not flags.FLAGS["verbosity"].present:
    # TFDS logs routine warnings (e.g. "no dataset_info.json" before a first
    # prepare) that would bury our own one-line messages; -v 0 shows them.
    logging.set_verbosity(logging.ERROR)
  # Before anything compiles (a plugin may): JAX reads it at the first.
  compilation.enable_cache(flags.FLAGS.compilation_cache_dir,
                           enabled=flags.FLAGS.compilation_cache)
  try:
    for module in flags.FLAGS.plugins:
      _import_plugin(module)
    return commands.COMMANDS[argv[1]](flags.FLAGS, _CONFIG.value) or 0
  except LaryError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1


def _import_plugin(name: str) -> None:
  """Imports a --plugins module (which registers encoders, ...)."""
  try:
    importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name is None or not (name + ".").startswith(e.name + "."):
      raise  # the plugin itself imports something missing: its own error
    raise LaryError(f"--plugins {name}: no such module in {os.getcwd()} or "
                    "on the Python path") from e


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
