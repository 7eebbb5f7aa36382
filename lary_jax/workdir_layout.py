"""Where everything lives in a workdir: each folder and file name, once.

  <workdir>/
    tfds/                              prepared datasets (`--tfds_dir`)
    features/DATASET/SPLIT/MODEL/      feature stores (`--out`)
    latent_actions/                    upstream-style .npz export (`--la_dir`)
    classify/DATASET/MODEL/            a classification probe: results.json
                                       over seeds, and seed_S/ per seed
    regress/DATASET/MODEL/TYPE_MODE/   a regression probe (TYPE_MODE e.g.
                                       mlp_absolute), the same inside
    lam/NAME/                          a `train_lam` run; model/ its LAM
    run/STAGE.json                     `run`'s marker of a finished stage
    run_timings.json                   `run`'s stage times
    report.md, report.html             `report`

  a run folder (a probe's seed_S/, a LAM's lam/NAME/):
    run.json                the run claim (`run_claim`)
    checkpoints/            orbax's checkpoint of the last finished epoch
    evals/epoch_EEE.npz     a probe's predictions after each epoch
    results.json            a probe seed's numbers (plots and CSVs beside)

Writers and readers build these paths here, so an old workdir resumes and
reports as long as this file does not change its names. What lies inside a
feature store is `feature_store`'s format.
"""

from __future__ import annotations

import os

TFDS = "tfds"
FEATURES = "features"
LATENT_ACTIONS = "latent_actions"
CLASSIFY = "classify"
REGRESS = "regress"
LAM = "lam"
RUN_STAGES = "run"
RUN_TIMINGS = "run_timings.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
# `run`'s own data: LARY-Sim rendered and prepared beside the results.
SIM_DATA = "lary_sim"

SETTINGS = "run.json"
CHECKPOINTS = "checkpoints"
EVALS = "evals"
RESULTS = "results.json"
SEED_PREFIX = "seed_"
LAM_MODEL = "model"


def tfds_dir(workdir: str, tiny: bool = False) -> str:
  """Prepared datasets; `run --tiny` keeps its own beside the full ones."""
  return os.path.join(workdir, TFDS + "_tiny" if tiny else TFDS)


def sim_data_dir(workdir: str, tiny: bool = False) -> str:
  """Where `run` renders LARY-Sim (`--data_dir` unset)."""
  return os.path.join(workdir, SIM_DATA + "_tiny" if tiny else SIM_DATA)


def features_root(workdir: str) -> str:
  return os.path.join(workdir, FEATURES)


def features_dir(root: str, dataset: str, split: str, model: str) -> str:
  """One feature store: ROOT/DATASET/SPLIT/MODEL.

  `root` is `--out` or `features_root(workdir)`.
  """
  return os.path.join(root, dataset, split, model)


def latent_actions_dir(workdir: str) -> str:
  return os.path.join(workdir, LATENT_ACTIONS)


def probe_root(workdir: str, command: str) -> str:
  """The folder of every result of `command` (CLASSIFY or REGRESS)."""
  return os.path.join(workdir, command)


def classify_dir(workdir: str, dataset: str, model: str) -> str:
  return os.path.join(probe_root(workdir, CLASSIFY), dataset, model)


def decoder_name(model_type: str, action_mode: str) -> str:
  """A regression run's TYPE_MODE folder, e.g. "mlp_absolute"."""
  return f"{model_type}_{action_mode}"


def regress_dir(workdir: str, dataset: str, model: str, model_type: str,
                action_mode: str) -> str:
  return os.path.join(probe_root(workdir, REGRESS), dataset, model,
                      decoder_name(model_type, action_mode))


def seed_dir(probe_dir: str, seed: int) -> str:
  """One seed's run folder inside a probe's folder."""
  return os.path.join(probe_dir, f"{SEED_PREFIX}{seed}")


def is_seed_dir(path: str) -> bool:
  return os.path.basename(path).startswith(SEED_PREFIX)


def results_file(folder: str) -> str:
  """A seed's results, or in a probe's folder the summary over seeds."""
  return os.path.join(folder, RESULTS)


def settings_file(run_dir: str) -> str:
  return os.path.join(run_dir, SETTINGS)


def checkpoints_dir(run_dir: str) -> str:
  return os.path.join(run_dir, CHECKPOINTS)


def epoch_file(run_dir: str, epoch: int) -> str:
  """A probe's predictions after epoch `epoch` (0-based)."""
  return os.path.join(run_dir, EVALS, f"epoch_{epoch:03d}.npz")


def confusion_stem(seed_run: str, selection: str) -> str:
  """A classification seed's confusion matrix, without .csv / .png."""
  return os.path.join(seed_run, f"confusion_{selection}")


def per_class_file(seed_run: str, selection: str) -> str:
  return os.path.join(seed_run, f"per_class_{selection}.csv")


def best_result_file(seed_run: str) -> str:
  """A regression seed's numbers in upstream's best_result.csv columns."""
  return os.path.join(seed_run, "best_result.csv")


def trajectories_plot(seed_run: str, split: str) -> str:
  return os.path.join(seed_run, f"trajectories_{split}.png")


def lam_dir(workdir: str, name: str) -> str:
  """A `train_lam` run of the LAM config named `name`."""
  return os.path.join(workdir, LAM, name)


def lam_model_dir(lam_run: str) -> str:
  """The trained LAM a `train_lam` run leaves (`extract --checkpoint`)."""
  return os.path.join(lam_run, LAM_MODEL)


def stage_marker(workdir: str, stage: str) -> str:
  """`run`'s record that `stage` finished, and with what request."""
  return os.path.join(workdir, RUN_STAGES, stage.replace("/", "_") + ".json")


def run_timings_file(workdir: str) -> str:
  return os.path.join(workdir, RUN_TIMINGS)


def report_files(workdir: str) -> tuple[str, str]:
  """(report.md, report.html) of a workdir."""
  return os.path.join(workdir, REPORT_MD), os.path.join(workdir, REPORT_HTML)
