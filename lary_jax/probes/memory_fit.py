"""What fits in a device's memory: budgets, compiled sizes, micro-batches.

A probe step's memory is known before it runs: XLA's buffer assignment
(`compiled.memory_analysis()`) gives its arguments, outputs and temporaries
exactly; the device says how much is free. `fit` picks the largest
micro-batch whose compiled step fits, compiling as few candidates as it
can: the whole batch first (the common case, one compilation), else the
smallest, then the size a straight line through those two predicts.

On CPU, "the device" is the host's free memory (the cgroup's limit where
lower), shared by every local CPU device and by the input pipeline's
read-ahead, so a device gets a share of what the pipeline leaves.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lary_jax.errors import LaryError

_log = logging.getLogger(__name__)
GIB = 2**30
# Host memory kept for Python, XLA's runtime and compiled code.
HOST_RESERVE = GIB
# Share of the host's free memory a CPU step may plan to use: the host is
# shared with other programs whose memory grows while a run goes on (a
# probe that took all it saw was killed by the kernel when another
# process grew), and on CPU a micro-batch of a few thousand tokens already
# keeps the matmuls busy, so a larger one buys little.
CPU_SHARE = 0.5
# Batches an input pipeline reads ahead are capped to about this many
# bytes: a protocol-size batch (256 clips of encoder tokens) is ~0.7 GB,
# and a step that long needs no deep read-ahead.
READ_AHEAD_LIMIT = GIB
# Share of an accelerator's free memory a step may plan to use
# (fragmentation).
ACCELERATOR_SHARE = 0.9


def _read_int(path: str) -> int | None:
  try:
    with open(path) as f:
      text = f.read().strip()
  except OSError:
    return None
  return int(text) if text.isdigit() else None


def host_free_bytes() -> int:
  """Free host memory: MemAvailable, or the cgroup's headroom if lower."""
  free = None
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          free = int(line.split()[1]) * 1024
  except OSError:
    pass
  if free is None:  # not Linux: all of physical memory
    free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  limit = _read_int("/sys/fs/cgroup/memory.max")
  used = _read_int("/sys/fs/cgroup/memory.current")
  if limit is not None and used is not None:
    free = min(free, limit - used)
  return max(free, 0)


def device_budget(device: Any, host_reserve: int = 0,
                  host_share: float = CPU_SHARE) -> int:
  """Bytes a step may add on `device` beyond what is allocated now.

  Args:
    device: where the step runs.
    host_reserve: host bytes that other parts of the run will take (e.g.
      the input pipeline's read-ahead), on top of `HOST_RESERVE`; they come
      out of a CPU device's budget.
    host_share: share of the host's remaining free memory a CPU step may
      take (`CPU_SHARE` where a smaller step costs little; 1 where the step
      is as big as it is).
  """
  host = int(host_share * (host_free_bytes() - HOST_RESERVE - host_reserve))
  if device.platform == "cpu":
    cpus = sum(d.platform == "cpu" for d in jax.local_devices())
    return max(host, 0) // max(cpus, 1)
  stats = device.memory_stats() or {}
  limit = stats.get("bytes_limit")
  if not limit:  # unknown: as if it were the host's
    return max(host, 0)
  return int(ACCELERATOR_SHARE * (limit - stats.get("bytes_in_use", 0)))


def read_ahead(row: Mapping[str, Any], local_batch: int,
               prefetch: int) -> tuple[int, int]:
  """How many batches an input pipeline should read ahead, and the host
  bytes it then holds (those batches and the one in use).

  Args:
    row: one row, name -> shape/dtype (e.g. ShapeDtypeStructs).
    local_batch: rows of this process's batch.
    prefetch: batches asked for; fewer when they pass `READ_AHEAD_LIMIT`,
      at least one.
  """
  row_bytes = sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape))
                  for x in row.values())
  batch_bytes = max(local_batch * row_bytes, 1)
  prefetch = max(1, min(prefetch, READ_AHEAD_LIMIT // batch_bytes))
  return prefetch, (prefetch + 1) * batch_bytes


def compiled_bytes(compiled: Any) -> int:
  """Peak bytes of one call of a compiled step on one device: arguments,
  outputs that do not reuse a donated argument, and temporaries."""
  m = compiled.memory_analysis()
  if m is None:
    return 0
  return int(m.argument_size_in_bytes + m.output_size_in_bytes
             - m.alias_size_in_bytes + m.temp_size_in_bytes)


def compile_within(jitted: Any, args: Sequence[Any], resident: Any,
                   budget: int) -> tuple[Any, int]:
  """`jitted` compiled for `args` (arrays or ShapeDtypeStructs), if it fits.

  Returns:
    (the compiled step, or None where a call adds more than `budget` bytes
    on a device; the bytes it adds beyond the arrays of `resident`, the
    arguments that are on the device already).
  """
  compiled = jitted.lower(*args).compile()
  need = compiled_bytes(compiled) - tree_bytes(resident)
  return (compiled if need <= budget else None), need


def tree_bytes(tree: Any) -> int:
  """Bytes one device holds of `tree`'s arrays (its shards, or all)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shards = getattr(leaf, "addressable_shards", None)
    if shards:
      total += shards[0].data.nbytes
    else:
      total += np.dtype(leaf.dtype).itemsize * int(np.prod(leaf.shape))
  return total


def check_batches(mesh: Any, section: str, global_batch: int,
                  eval_batch: int, micro_batch: int = 0) -> None:
  """Refuses batches that do not split over the devices and processes, or
  a device's share over the `micro_batch` set (0: none set).

  Args:
    mesh: the device mesh.
    section: the config section, for the error (e.g. "classify").
    global_batch: rows of a training batch.
    eval_batch: rows of an evaluation batch.
    micro_batch: examples a device computes at once, or 0.
  """
  n, processes = mesh.devices.size, jax.process_count()
  for name, batch in (("global_batch", global_batch),
                      ("eval_batch", eval_batch)):
    if batch % n or batch % processes:
      also = f" and of the {processes} processes" if processes > 1 else ""
      raise LaryError(f"{section}.{name}={batch} must be a multiple of the "
                      f"{n} devices{also}")
    if micro_batch > 0 and (batch // n) % micro_batch:
      raise LaryError(f"{section}.micro_batch={micro_batch} must divide the "
                      f"{batch // n} examples of {section}.{name}={batch} "
                      "that each device gets")


def divisors(n: int) -> list[int]:
  """Divisors of n, largest first."""
  return [d for d in range(n, 0, -1) if n % d == 0]


def fit(compile_at: Callable[[int], tuple[Any, int]], sizes: Sequence[int],
        budget: int, what: str, advice: str) -> tuple[int, Any, int]:
  """The largest size whose compiled step fits in `budget`.

  Args:
    compile_at: size -> (compiled step at that size, bytes of its
      arguments that are on the device already, e.g. the parameters, which
      the budget has accounted).
    sizes: candidate sizes, largest first; a single one is taken as
      given (a size the user set), whatever the budget.
    budget: bytes the step may add on one device (`device_budget`).
    what: the step, for messages ("classify train step").
    advice: settings that make it smaller, for the error.

  Returns:
    (size, its compiled step, the bytes it adds on a device).

  Raises:
    LaryError: even the smallest size does not fit.
  """
  need = {}
  compiled = {}

  def measure(size):
    if size not in compiled:
      compiled[size], resident = compile_at(size)
      need[size] = compiled_bytes(compiled[size]) - resident
      _log.info("%s at %d: %.2f GiB of %.2f GiB free", what, size,
                need[size] / GIB, budget / GIB)
    return need[size] <= budget

  largest, smallest = sizes[0], sizes[-1]
  if measure(largest) or len(sizes) == 1:
    return largest, compiled[largest], need[largest]
  if not measure(smallest):
    raise LaryError(
        f"{what} needs {need[smallest] / GIB:.1f} GiB per device even at "
        f"{smallest} example(s) at a time, and the device has "
        f"{budget / GIB:.1f} GiB to give; {advice}")
  per_example = (need[largest] - need[smallest]) / max(largest - smallest, 1)
  fixed = need[smallest] - per_example * smallest
  for size in sizes[1:-1]:  # the line's guess, then checked by compiling
    if fixed + per_example * size <= budget and measure(size):
      return size, compiled[size], need[size]
  return smallest, compiled[smallest], need[smallest]


def micro_slices(local_batch: Mapping[str, np.ndarray], local_devices: int,
                 micro: int) -> list[dict[str, np.ndarray]]:
  """A process's batch cut into micro-batches of `micro` rows a device.

  Rows [L, ...] are split over the local devices in order (device d holds
  rows d * L / n onwards), so micro-batch i takes the i-th `micro` rows of
  every device's share, and each device keeps its own rows.
  """
  out = []
  for key, value in local_batch.items():
    value = np.asarray(value)
    share = value.shape[0] // local_devices
    if share * local_devices != value.shape[0] or share % micro:
      raise LaryError(f"a batch of {value.shape[0]} rows on {local_devices} "
                      f"devices does not split into micro-batches of {micro}")
    parts = value.reshape(local_devices, share // micro, micro,
                          *value.shape[1:])
    for i in range(share // micro):
      if len(out) <= i:
        out.append({})
      out[i][key] = parts[:, i].reshape(local_devices * micro,
                                        *value.shape[1:])
  return out
