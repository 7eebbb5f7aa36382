"""Multi-process start-up and the one-axis data-parallel device mesh."""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

from lary_jax.errors import LaryError

_log = logging.getLogger(__name__)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
  """Joins this process to a multi-process JAX run, if there is one.

  Must run before any JAX computation. With all three arguments it joins the
  given coordinator; with none it lets JAX detect the cluster (Cloud TPU,
  SLURM, ...) and, where there is none, goes on as a single process.

  Args:
    coordinator_address: "host:port" of process 0's coordinator.
    num_processes: processes in the run.
    process_id: this process, in [0, num_processes).
  """
  args = (coordinator_address, num_processes, process_id)
  if jax.distributed.is_initialized():
    _log.info("jax.distributed is already initialised")
  elif all(a is None for a in args):
    try:
      jax.distributed.initialize()
    except ValueError:
      # No cluster environment detected: a plain single-process run.
      _log.info("no multi-process environment found; running as 1 process")
    except RuntimeError:
      # JAX already started (a notebook, a second command in one process):
      # too late to join a cluster, so keep the processes it started with.
      _log.warning("JAX started before initialize_distributed(); keeping "
                   "its %d process(es)", jax.process_count())
  elif any(a is None for a in args):
    raise LaryError(
        "multi-process start-up needs coordinator_address, num_processes and "
        f"process_id together; got {args}")
  elif num_processes > 1:
    try:
      jax.distributed.initialize(coordinator_address, num_processes,
                                 process_id)
    except RuntimeError as e:
      raise LaryError(
          f"cannot join {coordinator_address} as process {process_id} of "
          f"{num_processes}: {e}") from e
  log_topology()


def topology_line() -> str:
  """This process, the processes and devices of the run, and their kind."""
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  where = (f"process {jax.process_index()} of {jax.process_count()}"
           if jax.process_count() > 1 else "1 process")
  local = (f" ({jax.local_device_count()} here)"
           if jax.process_count() > 1 else "")
  return (f"{where}, {len(devices)} {jax.default_backend()} device"
          f"{'s' if len(devices) != 1 else ''}{local}: {', '.join(kinds)}")


_announced: list[str] = []  # a process's first line is printed once


def announce(command: str, devices: bool = True) -> None:
  """Prints the command's first line: processes, devices and their kind.

  Once per process (`run` calls the other commands). `devices=False` for a
  command that computes on the host CPU only: it does not start JAX's
  backend, which on a TPU host would hold the chips.
  """
  if _announced:
    return
  _announced.append(command)
  line = topology_line() if devices else (
      "1 process on the host CPU (no JAX devices)")
  print(f"lary {command}: {line}", flush=True)


def log_topology() -> None:
  """Logs this process's place among processes and devices."""
  _log.info(
      "process %d of %d; %d local of %d global devices (%s)",
      jax.process_index(), jax.process_count(), jax.local_device_count(),
      jax.device_count(), jax.default_backend())


def make_mesh(axis: str = "data") -> Mesh:
  """Returns a one-axis mesh over every device of every process.

  Devices are grouped by process, in process order, so process p holds rows
  [p * L, (p + 1) * L) of a batch split over `axis`; the pipelines rely on
  this to make a global batch independent of the process count.

  Args:
    axis: the mesh axis name.
  """
  devices = mesh_utils.create_device_mesh((jax.device_count(),))
  # Stable sort: keeps the physical (ring) order within each process.
  devices = sorted(devices.reshape(-1), key=lambda d: d.process_index)
  return Mesh(np.array(devices), (axis,))


def local_batch_size(global_batch: int) -> int:
  """Returns this process's share of a global batch.

  Args:
    global_batch: examples per step over all processes.

  Returns:
    global_batch // process_count.
  """
  processes, local_devices = jax.process_count(), jax.local_device_count()
  if global_batch <= 0 or global_batch % processes:
    raise LaryError(
        f"global batch {global_batch} is not a positive multiple of the "
        f"{processes} processes")
  local = global_batch // processes
  if local % local_devices:
    raise LaryError(
        f"global batch {global_batch} gives {local} examples per process, "
        f"not a multiple of its {local_devices} devices; use a multiple of "
        f"{processes * local_devices}")
  return local
