"""Progress bars that also show where there is no terminal.

On a terminal a bar is tqdm's own. Elsewhere (a notebook cell, a pod's log
file, a pipe) tqdm would either hide its bar or fill the log with carriage
returns; there the same bar is written as plain lines, one every
`LARY_PROGRESS_SECONDS` (default 30) and one at the end, each with the count,
the rate and the time left:

  classify seed_0: 120/400 step (30%), 3.10 step/s, elapsed 00:39, ETA 01:30
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

import tqdm

INTERVAL_ENV = "LARY_PROGRESS_SECONDS"
LINE_FORMAT = ("{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), "
               "{rate_fmt}, elapsed {elapsed}, ETA {remaining}{postfix}")


class _Lines:
  """A file for tqdm that turns its carriage-return redraws into lines."""

  def __init__(self, stream: IO[str]):
    self.stream = stream
    self.last = ""

  def write(self, text: str) -> None:
    for part in text.replace("\n", "\r").split("\r"):
      part = part.strip()
      if part and part != self.last:  # close() redraws the last state
        self.stream.write(part + "\n")
        self.last = part
    self.stream.flush()

  def flush(self) -> None:
    self.stream.flush()


def _interval() -> float:
  try:
    return max(0.0, float(os.environ.get(INTERVAL_ENV, "30")))
  except ValueError:
    return 30.0


def bar(total: int | None, *, desc: str, unit: str = "it", initial: int = 0,
        show: bool | None = None, **kwargs: Any) -> tqdm.tqdm:
  """A progress bar on stderr.

  Args:
    total: expected count.
    desc: what is counted (the line's prefix).
    unit: the unit of the count.
    initial: the count already done (a resumed run).
    show: False hides it (another process's bar); None or True shows it,
      as a bar on a terminal and as periodic lines elsewhere.
    **kwargs: passed to tqdm (e.g. `position`).

  Returns:
    A tqdm bar: `update`, `set_postfix`, `write`, `close` as usual.
  """
  if show is False:
    return tqdm.tqdm(total=total, initial=initial, disable=True)
  stream = sys.stderr
  if getattr(stream, "isatty", lambda: False)():
    return tqdm.tqdm(total=total, initial=initial, desc=desc, unit=unit,
                     file=stream, **kwargs)
  interval = _interval()
  return tqdm.tqdm(total=total, initial=initial, desc=desc, unit=unit,
                   file=_Lines(stream), mininterval=interval,
                   maxinterval=max(interval, 1.0), miniters=1,
                   bar_format=LINE_FORMAT, dynamic_ncols=False, **kwargs)
