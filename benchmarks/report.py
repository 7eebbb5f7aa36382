"""Writes one benchmark's section of BENCHMARKS.md, leaving the others."""

from __future__ import annotations

import datetime
import os
import platform
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_MD = os.path.join(REPO, "BENCHMARKS.md")
README_MD = os.path.join(REPO, "README.md")
_HEADER = """# Benchmarks

Each section is written by the script it names (`python benchmarks/NAME.py`).
Numbers are ratios against a reference measured in the same run on the same
machine, because these machines are noisy; absolute figures are for scale only.
"""


# The GEMM peak every CPU benchmark compares its FLOP/s with: a jitted
# GEMM_N^3 fp32 matmul.
GEMM_N = 2048
GEMM_FLOPS = 2 * GEMM_N**3


def gemm_step():
  """A warmed-up jitted GEMM_N^3 fp32 matmul: call it to time one."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import numpy as np
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.random((GEMM_N, GEMM_N), np.float32))
          for _ in range(2))
  mm = jax.jit(jnp.matmul)
  mm(a, b).block_until_ready()
  return lambda: mm(a, b).block_until_ready()


def xla_flops(compiled) -> float:
  """The FLOPs XLA counts for a compiled computation (0 where it has none)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float((cost or {}).get("flops", 0.0))


def machine() -> str:
  return (f"{platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {datetime.date.today()}")


def write_section(name: str, body: str, path: str = BENCHMARKS_MD) -> None:
  """Replaces (or appends) the section of benchmark `name` in `path`."""
  text = open(path).read() if os.path.exists(path) else _HEADER
  begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
  section = f"{begin}\n{body.strip()}\n{end}"
  pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
  if pattern.search(text):
    text = pattern.sub(lambda _: section, text)
  else:
    text = text.rstrip() + "\n\n" + section + "\n"
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
