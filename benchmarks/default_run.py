"""The default `run` from nothing, and the README's LARY-Sim numbers from it.

    python benchmarks/default_run.py                   # run, then write
    python benchmarks/default_run.py --reuse --workdir lary_workdir

Runs `python -m lary_jax.main run` in a fresh workdir (the README's first
command, nothing cached but what --compilation_cache says), or with --reuse
reads a workdir that such a run finished, then writes two sections of
README.md: `default_run` (each stage's wall time from run_timings.json, the
machine and its load) and `sim_results` (every row's honest numbers with
their 95% intervals beside chance, predict-the-mean, the floors and the
controls' thresholds, read through lary_jax.report). No figure in those
sections is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import report as bench  # pylint: disable=g-import-not-at-top
from lary_jax import report  # pylint: disable=g-import-not-at-top
from lary_jax import result_keys  # pylint: disable=g-import-not-at-top
from lary_jax import workdir_layout  # pylint: disable=g-import-not-at-top
from lary_jax.configs import default  # pylint: disable=g-import-not-at-top

_SPLITS = (result_keys.VALIDATION, result_keys.UNSEEN)


def run_default(workdir: str, cache: str | None) -> dict:
  """`python -m lary_jax.main run` from nothing; its wall time and load."""
  if os.path.exists(workdir):
    shutil.rmtree(workdir)
  cmd = [sys.executable, "-m", "lary_jax.main", "run", f"--workdir={workdir}"]
  if cache:
    cmd.append(f"--compilation_cache_dir={cache}")
  load = os.getloadavg()[0]
  start = time.perf_counter()
  subprocess.run(cmd, check=True, cwd=bench.REPO)
  return {"wall_s": time.perf_counter() - start, "load_before": load,
          "load_after": os.getloadavg()[0]}


def _minutes(seconds: float) -> str:
  m, s = divmod(round(seconds), 60)
  return f"{m} min {s:02d} s" if m else f"{s} s"


def timing_section(workdir: str, measured: dict | None) -> str:
  """The stage table of the workdir's last run_timings.json entry."""
  with open(workdir_layout.run_timings_file(workdir)) as f:
    last = json.load(f)[-1]
  stages = last["stages_s"]
  total = measured["wall_s"] if measured else last["total_s"]
  load = (f"load average {measured['load_before']:.2f} before, "
          f"{measured['load_after']:.2f} after" if measured
          else "load not measured (--reuse)")
  lines = [
      f"The default `run` from nothing took **{_minutes(total)}** of wall "
      f"time ({bench.machine()}; {load}; `python benchmarks/default_run.py`"
      ", which also wrote the tables below):", ""]
  rows = [[stage, _minutes(s)] for stage, s in stages.items()]
  lines += report.md_table((["stage", "wall time"], rows))
  threads = last.get("probe_threads", 1)
  if threads > 1:
    lines += ["", f"The probe stages ran {threads} at a time "
              "(`config.run.probe_threads`), so their times overlap: they add "
              "up to more than the wall time they took together."]
  return "\n".join(lines)


def _checks_text() -> str:
  """The controls' thresholds, from report.CONTROL_CHECKS."""
  said = []
  for model, task, decoder, split, check, threshold in report.CONTROL_CHECKS:
    where = f"{model} {decoder or task} ({report.SPLIT_LABELS.get(split, split)})"
    if check == "top1":
      said.append(f"{where} top-1 >= {100 * threshold:g}%")
    elif check == "mse_ratio":
      said.append(f"{where} MSE <= {threshold:g}x predict-the-mean")
    else:
      said.append(f"{where} > {threshold:g} SE above the best floor")
  return "; ".join(said)


def _row(board: report.Leaderboard, run: report.Run) -> list[str]:
  cells = [f"`{run.model}`", run.role]
  for split in _SPLITS:
    cells.append(report.honest_cell(run, split) if split in run.splits
                 else "-")
  cells.append(report.versus_floors(board, run, result_keys.VALIDATION) or "-")
  return cells


def results_section(workdir: str) -> str:
  """Classification and regression tables of a finished default run."""
  board = report.collect(workdir)
  config = default.get_config()
  lines = [f"Seeds {config.run.seeds}; every row of a dataset through the "
           "same probe (below). Honest numbers (head and epoch chosen on a "
           "held-out slice of train), mean ± std over seeds, with a 95% "
           "bootstrap interval over examples and seeds; `vs best floor` is "
           "the gap to the better of `pixels` and `random_vit` on the seen "
           "split, in standard errors of the difference (✓ above "
           f"{report.FLOOR_MARGIN_SE:g}).", ""]
  order = {"control": 0, "floor": 1, "model": 2}
  for run in board.of(report.CLASSIFICATION)[:1]:
    band = run.honest(result_keys.VALIDATION).get(result_keys.CHANCE)
    lines += [f"Classification, `{run.dataset}` (top-1 %; chance "
              f"{100 * band['chance']:.1f}%, 95% of guesses land in "
              f"{100 * band['low']:.1f}-{100 * band['high']:.1f}%):", ""]
  header = ["model", "role", "seen (validation)", "unseen arm and scenes",
            "vs best floor"]
  runs = sorted(board.of(report.CLASSIFICATION),
                key=lambda r: (r.dataset, order[r.role], r.model))
  lines += report.md_table((header, [_row(board, r) for r in runs]))
  decoders = sorted({r.decoder for r in board.of(report.REGRESSION)})
  for decoder in decoders:
    runs = sorted((r for r in board.of(report.REGRESSION)
                   if r.decoder == decoder),
                  key=lambda r: (r.dataset, order[r.role], r.model))
    floor = runs[0].summary.get("floor", {})
    lines += ["", f"Regression, `{runs[0].dataset}`, {decoder} (MSE of "
              "normalised actions; predict-the-mean "
              + " / ".join(f"{floor[s]:.3f}" for s in _SPLITS if s in floor)
              + " seen / unseen):", ""]
    lines += report.md_table((header, [_row(board, r) for r in runs]))
  failures = report.control_failures(board)
  lines += ["", "Positive controls (" + _checks_text() + "): " + (
      "every threshold met." if not failures
      else "**missed**: " + "; ".join(failures) + ".")]
  settings = report.probe_settings(board)
  if settings:
    lines += ["", *report.md_table(settings)]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default=None,
                      help="the run's workdir (default: a new temp folder)")
  parser.add_argument("--reuse", action="store_true",
                      help="read a finished workdir instead of running")
  parser.add_argument("--compilation_cache", default=None,
                      help="JAX's compilation cache folder for the run "
                      "(default: an empty one, i.e. nothing cached)")
  args = parser.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix="lary_default_run_")
  measured = None
  if not args.reuse:
    cache = args.compilation_cache or tempfile.mkdtemp(prefix="lary_cache_")
    measured = run_default(workdir, cache)
  bench.write_section("default_run", timing_section(workdir, measured),
                      bench.README_MD)
  bench.write_section("sim_results", results_section(workdir),
                      bench.README_MD)
  print(f"README.md: default_run and sim_results written from {workdir}")


if __name__ == "__main__":
  main()
