"""The report's bar charts: per task, dataset and split, PNG bytes.

matplotlib (Agg) is imported only when a chart is drawn.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

from lary_jax import result_keys as keys
from lary_jax.report.leaderboard import CLASSIFICATION
from lary_jax.report.leaderboard import Leaderboard
from lary_jax.report.leaderboard import REGRESSION
from lary_jax.report.leaderboard import SELECTIONS
from lary_jax.report.leaderboard import SPLIT_LABELS


def bar_chart(title: str, ylabel: str, labels: Sequence[str],
              series: Mapping[str, Sequence[Mapping[str, float] | None]],
              published: Sequence[float | None] = (),
              reference: Sequence[float | None] = (),
              reference_label: str = "") -> bytes:
  """A grouped bar chart as PNG bytes.

  Args:
    title: the chart's title.
    ylabel: the y axis label.
    labels: one group of bars per label.
    series: bar name -> per label {mean, std, n} (std drawn as an error
      bar) or None (no bar).
    published: per label a published value (drawn as a black x) or None.
    reference: per label a reference value (a dashed line over the group,
      e.g. chance or the predict-the-mean MSE) or None.
    reference_label: the reference's legend entry.

  Returns:
    The PNG file's bytes.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  n, k = len(labels), len(series)
  width = 0.8 / max(k, 1)
  x = np.arange(n)
  fig, ax = plt.subplots(figsize=(max(5.5, 1.1 * n + 3), 3.4))
  for i, (name, stats) in enumerate(series.items()):
    mean = np.array([s["mean"] if s else np.nan for s in stats])
    # One seed has no spread: no error bar rather than a zero-width one.
    std = np.array([s["std"] if s and s["n"] > 1 else np.nan
                    for s in stats])
    ax.bar(x - 0.4 + width * (i + 0.5), mean, width, yerr=std, capsize=3,
           label=name, color=f"C{i}")
  legend = reference_label
  for i, value in enumerate(reference):
    if value is not None:
      ax.hlines(value, i - 0.45, i + 0.45, colors="grey", linestyles="--",
                label=legend or None)
      legend = ""  # one legend entry for all the groups' lines
  marks = [(i, v) for i, v in enumerate(published) if v is not None]
  if marks:
    ax.plot([i for i, _ in marks], [v for _, v in marks], "kx",
            markersize=9, mew=2, label="published")
  ax.set_xticks(x, labels, rotation=20 if n > 3 else 0, ha="right" if n > 3
                else "center", fontsize=8)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  plt.close(fig)
  return buf.getvalue()


def bar_charts(board: Leaderboard) -> list[tuple[str, str, bytes]]:
  """(task, caption, PNG) per task, dataset and split."""
  out = []
  for task in (CLASSIFICATION, REGRESSION):
    runs = board.of(task)
    for dataset in sorted({r.dataset for r in runs}):
      of_dataset = [r for r in runs if r.dataset == dataset]
      for split in (keys.VALIDATION, keys.UNSEEN):
        here = [r for r in of_dataset if split in r.splits]
        if not here:
          continue
        labels = [" ".join(filter(None, (r.model, r.decoder)))
                  + ("\n(laptop config)" if r.deviations else "")
                  for r in here]
        published = [board.published_value(r, split) for r in here]
        if task == CLASSIFICATION:
          series = {label: [_scaled(r.score(sel, split, keys.TOP1), 100)
                            for r in here] for sel, label in SELECTIONS}
          reference = [100 / r.summary["num_classes"]
                       if r.summary.get("num_classes") else None
                       for r in here]
          ylabel, ref_label = "top-1 (%)", "chance"
        else:
          series = {label: [r.score(sel, split, keys.MSE) for r in here]
                    for sel, label in SELECTIONS}
          reference = [(r.summary.get(keys.FLOOR) or {}).get(split)
                       for r in here]
          ylabel, ref_label = "MSE (normalised)", "predict-the-mean"
        caption = f"{dataset}, {SPLIT_LABELS[split]} split: {ylabel}"
        out.append((task, caption, bar_chart(
            caption + " (mean ± std over seeds)", ylabel, labels, series,
            published, reference, ref_label)))
  return out


def _scaled(stat: Mapping[str, float] | None,
            factor: float) -> dict[str, float] | None:
  if not stat:
    return None
  return {**stat, "mean": stat["mean"] * factor, "std": stat["std"] * factor}
