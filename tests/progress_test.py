"""Progress off a terminal (a pipe, as in pod logs and notebooks): periodic
plain lines with count, rate and time left, never carriage returns."""

import os
import subprocess
import sys

SCRIPT = """
import time
from lary_jax import progress
bar = progress.bar(6, desc="classify seed_0", unit="step", show={show})
for i in range(6):
  time.sleep(0.02)
  bar.update(1)
bar.write("epoch 1/1: done")
bar.close()
"""


def _run(show: str, seconds: str = "0") -> subprocess.CompletedProcess:
  env = dict(os.environ, LARY_PROGRESS_SECONDS=seconds)
  return subprocess.run([sys.executable, "-c", SCRIPT.format(show=show)],
                        capture_output=True, text=True, env=env, timeout=120)


def test_lines_with_rate_and_eta_off_a_terminal():
  result = _run("None")
  assert result.returncode == 0, result.stderr
  assert "\r" not in result.stderr
  lines = result.stderr.splitlines()
  assert lines[0].startswith("classify seed_0: 0/6 step (0%)")
  assert lines[-1].startswith("classify seed_0: 6/6 step (100%), ")
  # Every update, as the interval is 0 (close() may add the final count
  # again with the final rate).
  counts = [l.split(": ")[1].split(" ")[0] for l in lines]
  assert sorted(set(counts)) == [f"{i}/6" for i in range(7)]
  assert all(", elapsed " in l and ", ETA " in l and "step/s" in l
             for l in lines)
  assert result.stdout == "epoch 1/1: done\n"


def test_interval_spaces_the_lines_and_false_hides_them():
  spaced = _run("True", seconds="3600").stderr.splitlines()
  # The first and the final state only.
  assert [l.split(",")[0] for l in spaced] == [
      "classify seed_0: 0/6 step (0%)", "classify seed_0: 6/6 step (100%)"]
  hidden = _run("False")
  assert hidden.stderr == "" and hidden.stdout == "epoch 1/1: done\n"
