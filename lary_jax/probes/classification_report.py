"""What a classification run leaves in its folder, from its predictions.

Per seed: `results.json` (top-1/top-5 of every head, epoch and split; the
upstream-style number; the honest number), `per_class_<selection>.csv`,
`confusion_<selection>.csv` and `.png` (rows = true class). Over seeds:
`results.json` with mean and standard deviation.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lary_jax import atomic_io
from lary_jax import metrics
from lary_jax import result_keys as keys
from lary_jax import workdir_layout as layout
from lary_jax.probes import figures

TRAIN_KEYS = ("train_loss", "train_top1")  # [E, H] of the training steps
# Selection -> how it chooses, as results.json says.
HOW = {
    keys.UPSTREAM_STYLE:
        "head and epoch with the best validation top-1, chosen on the "
        "validation set itself (how upstream reports; optimistic)",
    keys.HONEST:
        "head and epoch with the best top-1 on a held-out slice of train "
        "(never trained on), reported on validation"}


def _scores(topk: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """[E, H, N, k'] predictions -> [E, H] top-k accuracy."""
  hit = (topk[..., :k] == labels[None, None, :, None]).any(-1)
  return hit.mean(-1)


def _selection(history: Mapping[str, np.ndarray],
               labels: Mapping[str, np.ndarray], on: str,
               heads: Sequence[Mapping[str, float]], how: str
               ) -> dict[str, Any]:
  epoch, head = metrics.select_best(_scores(history[on], labels[on], 1))
  out = {"how": how, "selected_on": on, "epoch": epoch + 1, "head": head,
         **heads[head]}
  for split, topk in history.items():
    if split == keys.HOLDOUT and on != keys.HOLDOUT:
      continue
    top = topk[epoch, head]
    out[split] = {
        keys.TOP1: metrics.topk_accuracy(top, labels[split], 1),
        keys.TOP5: metrics.topk_accuracy(top, labels[split], 5),
        # Per example, for the interval over seeds and examples.
        "correct": (top[:, 0] == labels[split]).astype(int).tolist()}
  return out


def summarise(history: dict[str, np.ndarray],
              labels: Mapping[str, np.ndarray],
              heads: Sequence[Mapping[str, float]]) -> dict[str, Any]:
  """Per-epoch scores and the two selected numbers of one seed.

  `history` loses its training keys (they go into the per-epoch table).
  """
  train = {k: history.pop(k) for k in TRAIN_KEYS if k in history}
  epochs = next(iter(history.values())).shape[0]
  table = [{"epoch": e + 1,
            **{k: v[e].tolist() for k, v in train.items()},
            **{split: {keys.TOP1: _scores(h, labels[split], 1)[e].tolist(),
                       keys.TOP5: _scores(h, labels[split], 5)[e].tolist()}
               for split, h in history.items()}}
           for e in range(epochs)]
  out = {"heads": list(heads), "epochs": table,
         keys.UPSTREAM_STYLE: _selection(history, labels, keys.VALIDATION,
                                         heads, HOW[keys.UPSTREAM_STYLE])}
  if keys.HOLDOUT in history:
    out[keys.HONEST] = _selection(history, labels, keys.HOLDOUT, heads,
                                  HOW[keys.HONEST])
  return out


def write_seed(out_dir: str, history: Mapping[str, np.ndarray],
               labels: Mapping[str, np.ndarray],
               heads: Sequence[Mapping[str, float]],
               class_names: Sequence[str], fields: Mapping[str, Any],
               sources: Sequence[str] | None = None, *, write: bool = True
               ) -> dict[str, Any]:
  """Writes one seed's results.json, per-class CSVs and confusion matrices.

  Args:
    out_dir: the seed's folder.
    history: split -> [E, H, N, k] predictions.
    labels: split -> [N] true classes.
    heads: the heads' hyper-parameters.
    class_names: label id -> name.
    fields: what the run was (model, dataset, seed, ...), copied in.
    sources: the validation records' source dataset, for per-source top-1.
    write: False only computes the results (the other processes of a
      multi-process run, which share process 0's folder).

  Returns:
    The results dict written to results.json.
  """
  history = dict(history)
  results = {**fields, "num_classes": len(class_names),
             "examples": {s: int(len(v)) for s, v in labels.items()},
             **summarise(history, labels, heads)}
  for name in HOW:
    if name not in results:
      continue
    chosen = results[name]
    top = history[keys.VALIDATION][chosen["epoch"] - 1, chosen["head"]]
    if sources is not None:
      chosen["per_source_dataset"] = metrics.group_accuracy(
          top, labels[keys.VALIDATION], sources)
    if write:
      cm = metrics.confusion_matrix(labels[keys.VALIDATION], top[:, 0],
                                    len(class_names))
      _write_per_class(layout.per_class_file(out_dir, name), cm,
                       class_names)
      _write_confusion(layout.confusion_stem(out_dir, name), cm,
                       class_names, f"{fields.get('model')} on "
                       f"{fields.get('dataset')} validation ({name})")
  if write:
    atomic_io.write_json(layout.results_file(out_dir), results)
  return results


def write_summary(out_dir: str, per_seed: Mapping[int, Mapping[str, Any]],
                  fields: Mapping[str, Any], *, write: bool = True
                  ) -> dict[str, Any]:
  """results.json over seeds: each seed's numbers, their mean and std, a
  95% interval of top-1 (bootstrap over examples and seeds) and the band
  where a guess would land on each split."""
  out: dict[str, Any] = {**fields, keys.SEEDS: sorted(per_seed)}
  classes = fields.get("num_classes")
  for name, how in HOW.items():
    runs = [r[name] for r in per_seed.values() if name in r]
    if not runs:
      continue
    splits = [s for s, v in runs[0].items()
              if s != keys.HOLDOUT and isinstance(v, dict)
              and keys.TOP1 in v]
    out[name] = {"how": how,
                 **metrics.seed_spread(runs, splits, (keys.TOP1, keys.TOP5))}
    for split in splits:
      correct = np.array([r[split]["correct"] for r in runs])
      out[name][split]["examples"] = int(correct.shape[1])
      out[name][split][keys.TOP1_CI95] = metrics.bootstrap_interval(correct)
      if classes:
        band = metrics.chance_band(correct.shape[1], classes)
        out[name][split][keys.CHANCE] = band
        out[name][split][keys.AT_CHANCE] = bool(
            out[name][split][keys.TOP1_CI95]["low"] <= band["chance"])
    out[name][keys.PER_SEED] = {
        str(s): {"epoch": r[name]["epoch"], "head": r[name]["head"],
                 "validation_top1": r[name][keys.VALIDATION][keys.TOP1]}
        for s, r in per_seed.items()}
  if write:
    atomic_io.write_json(layout.results_file(out_dir), out)
  return out


def _write_per_class(path: str, cm: np.ndarray,
                     class_names: Sequence[str]) -> None:
  scores = metrics.per_class_scores(cm)
  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(["class_id", "class", "support", "precision", "recall", "f1"])
  for i, name in enumerate(class_names):
    w.writerow([i, name, int(scores["support"][i]),
                f"{scores['precision'][i]:.6f}", f"{scores['recall'][i]:.6f}",
                f"{scores['f1'][i]:.6f}"])
  atomic_io.write_atomic(path, buf.getvalue().encode())


def _write_confusion(stem: str, cm: np.ndarray, class_names: Sequence[str],
                     title: str) -> None:
  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(["true \\ predicted", *class_names])
  for name, row in zip(class_names, cm):
    w.writerow([name, *row.tolist()])
  atomic_io.write_atomic(stem + ".csv", buf.getvalue().encode())

  k = len(class_names)
  side = min(4 + 0.18 * k, 30)

  def draw(fig):
    ax = fig.subplots()
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(k)
    labels = class_names if k <= 60 else [str(i) for i in ticks]
    ax.set_xticks(ticks, labels, rotation=90, fontsize=6)
    ax.set_yticks(ticks, labels, fontsize=6)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title + "; rows sum to 1", fontsize=8)

  atomic_io.write_atomic(stem + ".png",
                  figures.png(draw, (side, side), dpi=120, tight=True))
