"""JAX compilation: the persistent cache every command uses, and its tally.

Every `python -m lary_jax.main` command turns on JAX's persistent
compilation cache before anything compiles (`enable_cache`), so a second run
of the same shapes loads XLA executables from disk instead of compiling
them again: in a fresh workdir, in another process, or on every process of
a multi-process run (JAX lets process 0 alone write entries; the others read
them where the directory is shared). Every compilation is cached, however
short, because a run's many small CPU compilations add up to most of its
compile time.

`stats()` counts compilations and their seconds from JAX's monitoring
events, so a caller can attribute them to a stage (`run` writes them to
`run_timings.json`); `stats(this_thread=True)` those of the calling thread
alone (JAX compiles in the thread that calls), for stages run side by side.
"""

from __future__ import annotations

import dataclasses
import os
import threading

# Where the cache lives unless --compilation_cache_dir or JAX's own
# JAX_COMPILATION_CACHE_DIR says otherwise: under the user's cache
# ($XDG_CACHE_HOME, else ~/.cache).
CACHE_SUBDIR = os.path.join("lary_jax", "jax_cache")

# JAX's monitoring events (jax.monitoring). The backend event times XLA's
# compilation, or the read of the executable from the cache on a hit.
_DURATION_EVENTS = {
    "/jax/core/compile/backend_compile_duration": "compile_s",
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
}
_COUNT_EVENTS = {
    "/jax/compilation_cache/cache_hits": "cache_hits",
    "/jax/compilation_cache/cache_misses": "cache_misses",
}
_BACKEND_EVENT = "/jax/core/compile/backend_compile_duration"


@dataclasses.dataclass(frozen=True)
class CompileStats:
  """Compilations of this process so far (or between two snapshots)."""

  compilations: int = 0  # XLA executables built or loaded from the cache
  cache_hits: int = 0  # of those, loaded from the persistent cache
  cache_misses: int = 0  # looked up in the cache, not found, compiled
  compile_s: float = 0.0  # XLA compile (or cache load) seconds
  trace_s: float = 0.0  # tracing Python to jaxprs
  lower_s: float = 0.0  # jaxprs to StableHLO

  def __sub__(self, other: CompileStats) -> CompileStats:
    return CompileStats(**{
        f.name: getattr(self, f.name) - getattr(other, f.name)
        for f in dataclasses.fields(self)})

  def as_dict(self) -> dict[str, float | int]:
    """The fields, seconds rounded to 10 ms."""
    return {k: round(v, 2) if isinstance(v, float) else v
            for k, v in dataclasses.asdict(self).items()}


_lock = threading.Lock()
_counts = {"compilations": 0, "cache_hits": 0, "cache_misses": 0}
_seconds = dict.fromkeys(_DURATION_EVENTS.values(), 0.0)
_tracking = False
_per_thread = threading.local()  # .counts, .seconds: the thread's own tally


def _thread_tally() -> tuple[dict[str, int], dict[str, float]]:
  if not hasattr(_per_thread, "counts"):
    _per_thread.counts = dict.fromkeys(_counts, 0)
    _per_thread.seconds = dict.fromkeys(_seconds, 0.0)
  return _per_thread.counts, _per_thread.seconds


def _on_duration(event: str, seconds: float, **_) -> None:
  key = _DURATION_EVENTS.get(event)
  if key is not None:
    counts, own_seconds = _thread_tally()
    own_seconds[key] += seconds
    counts["compilations"] += event == _BACKEND_EVENT
    with _lock:
      _seconds[key] += seconds
      _counts["compilations"] += event == _BACKEND_EVENT


def _on_event(event: str, **_) -> None:
  key = _COUNT_EVENTS.get(event)
  if key is not None:
    _thread_tally()[0][key] += 1
    with _lock:
      _counts[key] += 1


def track() -> None:
  """Starts counting compilations (once per process; later calls do nothing)."""
  global _tracking
  with _lock:
    if _tracking:
      return
    _tracking = True
  from jax import monitoring  # pylint: disable=g-import-not-at-top
  monitoring.register_event_duration_secs_listener(_on_duration)
  monitoring.register_event_listener(_on_event)


def stats(this_thread: bool = False) -> CompileStats:
  """Compilations since `track()` was first called (zeros before): the
  process's, or with `this_thread` the calling thread's."""
  if this_thread:
    counts, seconds = _thread_tally()
    return CompileStats(**counts, **seconds)
  with _lock:
    return CompileStats(**_counts, **_seconds)


def default_cache_dir() -> str:
  """$XDG_CACHE_HOME/lary_jax/jax_cache, else ~/.cache/lary_jax/jax_cache."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(root, CACHE_SUBDIR)


def enable_cache(cache_dir: str | None = None, enabled: bool = True
                 ) -> str | None:
  """Configures JAX's persistent compilation cache; returns its directory.

  Call it before the first compilation: JAX reads these settings once, when
  it first compiles.

  Args:
    cache_dir: where executables are kept; None: JAX_COMPILATION_CACHE_DIR
      if set, else `default_cache_dir()`.
    enabled: False turns the cache off (even where JAX_COMPILATION_CACHE_DIR
      is set).

  Returns:
    The cache directory, or None when the cache is off.
  """
  import jax  # pylint: disable=g-import-not-at-top
  track()
  if not enabled:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  path = (cache_dir or jax.config.jax_compilation_cache_dir
          or default_cache_dir())
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  # Cache every executable: JAX's defaults skip those that compile in under
  # a second, which are most of a run's.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  return path
