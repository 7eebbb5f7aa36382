"""PNG figures of the probes' reports, drawn one at a time.

  draw(figure) -> matplotlib Figure (no pyplot) -> PNG bytes

`run` trains two probe stages side by side in threads, and matplotlib is not
thread-safe: every figure is drawn and rendered under one lock. The Figure
API keeps no global registry of open figures (nothing to close).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()


def png(draw: Callable[[Any], None], figsize: tuple[float, float],
        dpi: int = 100, tight: bool = False) -> bytes:
  """The PNG of a new Figure(figsize, dpi) that `draw(figure)` filled in.

  `tight`: lay it out with matplotlib's tight layout (fits long tick
  labels; slower than margins `draw` sets itself).
  """
  # Imported here: matplotlib loads in ~1 s, and only reports draw.
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  with _lock:
    fig = figure.Figure(figsize=figsize, dpi=dpi)
    draw(fig)
    if tight:
      fig.tight_layout()
    out = io.BytesIO()
    backend_agg.FigureCanvasAgg(fig).print_png(out)
  return out.getvalue()
