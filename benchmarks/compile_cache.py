"""`run` from nothing vs `run` again with a warm compilation cache.

  python benchmarks/compile_cache.py [--full] [--rounds 2] [--keep DIR]
      [--print_only]

Each round runs `python -m lary_jax.main run --tiny` (the default-size run
with --full) twice, each in a fresh workdir: first with an empty compilation
cache ("cold": everything rendered, prepared, trained and compiled from
nothing), then with the cache the first run filled ("warm": the same work,
but every XLA executable loaded from disk). Rounds alternate cold and warm
runs, each round with a new cache. The stage times and compile seconds are
those `run` writes to `<workdir>/run_timings.json` (compile seconds from
JAX's monitoring events, lary_jax/compilation.py); best and median over the
rounds. --keep DIR keeps the last round's workdirs (DIR/cold, DIR/warm), e.g.
for `benchmarks/cost_model.py --check DIR/cold`. Writes the `compile_cache`
section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import report  # pylint: disable=g-import-not-at-top
from lary_jax import workdir_layout  # pylint: disable=g-import-not-at-top


def _children_cpu_s() -> float:
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def run_once(workdir: str, cache: str, full: bool) -> dict:
  """One `run` in `workdir` with compilation cache `cache`; its timings."""
  cmd = [sys.executable, "-m", "lary_jax.main", "run", f"--workdir={workdir}",
         f"--compilation_cache_dir={cache}"] + ([] if full else ["--tiny"])
  load, cpu, start = os.getloadavg()[0], _children_cpu_s(), time.time()
  subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
  with open(workdir_layout.run_timings_file(workdir)) as f:
    timings = json.load(f)[-1]
  return {**timings, "wall_s": time.time() - start,
          "cpu_s": _children_cpu_s() - cpu,
          "load": [load, os.getloadavg()[0]]}


def _stat(runs: list[dict], fn) -> tuple[float, float]:
  values = [fn(r) for r in runs]
  return min(values), statistics.median(values)


def _stage_rows(cold: list[dict], warm: list[dict]) -> list[str]:
  rows = []
  for stage in cold[0]["stages_s"]:
    def wall(r, stage=stage):
      return r["stages_s"][stage]

    def compile_s(r, stage=stage):
      return r["compile"][stage]["compile_s"]

    c, w = cold[0]["compile"][stage], warm[0]["compile"][stage]
    cw, ww = _stat(cold, wall), _stat(warm, wall)
    cc, wc = _stat(cold, compile_s), _stat(warm, compile_s)
    rows.append(
        f"| {stage} | {cw[0]:.1f} / {cw[1]:.1f} | {ww[0]:.1f} / {ww[1]:.1f} "
        f"| {cc[0]:.1f} / {cc[1]:.1f} | {wc[0]:.1f} / {wc[1]:.1f} | "
        f"{c['compilations']} | {w['cache_hits']} of {w['compilations']} |")
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--full", action="store_true",
                      help="the default-size run (default: --tiny)")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--keep", default=None,
                      help="keep the last round's workdirs here")
  parser.add_argument("--print_only", action="store_true",
                      help="print the section, leave BENCHMARKS.md alone")
  args = parser.parse_args()

  cold, warm = [], []
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):
      cache = os.path.join(tmp, f"cache{r}")
      dirs = {k: os.path.join(tmp, f"{k}{r}") for k in ("cold", "warm")}
      cold.append(run_once(dirs["cold"], cache, args.full))
      warm.append(run_once(dirs["warm"], cache, args.full))
      print(f"round {r}: cold {cold[-1]['wall_s']:.0f} s, warm "
            f"{warm[-1]['wall_s']:.0f} s", file=sys.stderr)
      if args.keep and r == args.rounds - 1:
        for k, d in dirs.items():
          shutil.rmtree(os.path.join(args.keep, k), ignore_errors=True)
          shutil.copytree(d, os.path.join(args.keep, k), symlinks=True)
      for d in dirs.values():
        shutil.rmtree(d)

  def total(r):
    return r["wall_s"]

  def compile_total(r):
    return sum(s["compile_s"] for s in r["compile"].values())

  def compilations(r):
    return sum(s["compilations"] for s in r["compile"].values())

  def hits(r):
    return sum(s["cache_hits"] for s in r["compile"].values())

  tc, tw = _stat(cold, total), _stat(warm, total)
  cc, cw = _stat(cold, compile_total), _stat(warm, compile_total)
  cpu_c, cpu_w = _stat(cold, lambda r: r["cpu_s"]), _stat(
      warm, lambda r: r["cpu_s"])
  loads = [x for r in cold + warm for x in r["load"]]
  missing = compilations(warm[0]) - hits(warm[0])
  uncached = (f"; the other {missing} compiled again: executables XLA "
              "cannot serialise (e.g. oneDNN fusions on a CPU) bypass the "
              "cache" if missing else "")
  size = "the default LARY-Sim" if args.full else "the tiny LARY-Sim"
  command = "python benchmarks/compile_cache.py" + (
      " --full" if args.full else "") + f" --rounds {args.rounds}"
  body = f"""## compile_cache: `run` from nothing, cold vs warm compilation cache

`{command}` ({report.machine()}). `run` on {size}, each time in a fresh \
workdir: cold with an empty compilation cache, warm with the cache the cold \
run filled (the same rendering, preparing, training and probing; every XLA \
executable loaded instead of compiled). {args.rounds} round(s), each a cold \
then a warm run with a new cache; best / median. Stage and compile seconds \
from `run_timings.json`; compile = XLA compilation, or loading the \
executable from the cache. Load average before / after the runs: \
{min(loads):.1f}-{max(loads):.1f} (others' processes share the machine: \
compare the CPU seconds too).

| stage | wall s, cold | wall s, warm | compile s, cold | compile s, warm | compilations | warm: from the cache |
|---|---|---|---|---|---|---|
""" + "\n".join(_stage_rows(cold, warm)) + f"""

- Whole `run` (process start to exit): cold {tc[0]:.0f} / {tc[1]:.0f} s, \
warm {tw[0]:.0f} / {tw[1]:.0f} s: **{tc[0] / tw[0]:.2f}x** faster warm \
(best), {tc[1] / tw[1]:.2f}x (median). CPU seconds: cold {cpu_c[0]:.0f}, \
warm {cpu_w[0]:.0f} ({cpu_c[0] / cpu_w[0]:.2f}x).
- Compilation: cold {cc[0]:.1f} s in {compilations(cold[0])} compilations, \
warm {cw[0]:.1f} s with {hits(warm[0])} of {compilations(warm[0])} \
executables from the cache{uncached}.
"""
  print(body)
  if not args.print_only:
    report.write_section("compile_cache", body)


if __name__ == "__main__":
  main()
