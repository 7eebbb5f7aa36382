"""The command line as a new user meets it (`run` itself: tests/run_test.py)."""

import subprocess
import sys



def _main(*args, cwd):
  return subprocess.run([sys.executable, "-m", "lary_jax.main", *args],
                        capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_lists_every_command(tmp_path):
  result = _main("--help", cwd=tmp_path)
  for command in ("simulate", "check", "prepare", "run"):
    assert f"\n  {command} " in result.stdout
