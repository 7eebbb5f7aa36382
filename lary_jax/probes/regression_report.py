"""What a regression run leaves in its folder, from its predictions.

Per seed: `results.json` (MSE per epoch and split, normalised and in the
robot's units, per dimension and group; the epoch chosen on validation as
upstream does, and the honest one chosen on a held-out slice of train),
`best_result.csv` in upstream's columns (its `best_epoch` 1-based, as
upstream's loop counts epochs; `val_*_loss` is the Huber loss of the
predicted chunk, which for the DiT is not upstream's logged
noise-prediction loss), and `trajectories_<split>.png` (predicted vs true
per dimension). Over seeds: `results.json` with mean and standard deviation.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lary_jax import atomic_io
from lary_jax import metrics
from lary_jax import result_keys as keys
from lary_jax import workdir_layout as layout
from lary_jax.probes import figures

# Selection -> how it chooses, as results.json says.
HOW = {
    keys.UPSTREAM_STYLE:
        "epoch with the lowest validation MSE, chosen on the validation "
        "set itself (how upstream reports; optimistic)",
    keys.HONEST:
        "epoch with the lowest MSE on a held-out slice of train (never "
        "trained on), reported on validation and unseen"}


@dataclasses.dataclass(frozen=True)
class Targets:
  """One split's targets: normalised [N, S, A], each row's mean/std [N, A]."""

  normalised: np.ndarray
  mean: np.ndarray
  std: np.ndarray

  def subset(self, ids: np.ndarray) -> Targets:
    return Targets(self.normalised[ids], self.mean[ids], self.std[ids])


def split_metrics(prediction: np.ndarray, targets: Targets,
                  labels: Sequence[str],
                  groups: Mapping[str, Sequence[int]]) -> dict[str, Any]:
  """MSE of one split's [N, S * A] normalised predictions.

  Returns:
    mse (normalised, over the whole chunk), huber (delta 1), mse per
    dimension and per group, and the same MSEs in the robot's units.
  """
  true = targets.normalised
  pred = prediction.reshape(true.shape).astype(np.float64)
  err = pred - true
  sq = err**2
  units = (err * targets.std[:, None]) ** 2
  absolute = np.abs(err)
  huber = np.where(absolute <= 1, 0.5 * sq, absolute - 0.5)
  return {
      keys.MSE: float(sq.mean()),
      "huber": float(huber.mean()),
      "mse_per_dim": {k: float(sq[..., i].mean()) for i, k in
                      enumerate(labels)},
      "mse_groups": {g: float(sq[..., list(ix)].mean())
                     for g, ix in groups.items()},
      keys.MSE_UNITS: float(units.mean()),
      "mse_units_per_dim": {k: float(units[..., i].mean()) for i, k in
                            enumerate(labels)},
  }


def _select(history: Mapping[str, np.ndarray], targets: Mapping[str, Targets],
            on: str, how: str, labels, groups) -> dict[str, Any]:
  mse = [split_metrics(p, targets[on], labels, groups)[keys.MSE]
         for p in history[on]]
  epoch = int(np.argmin(mse))
  out = {"how": how, "selected_on": on, "epoch": epoch + 1,
         "train_loss": float(history["train_loss"][epoch])}
  for split in targets:
    if split == keys.HOLDOUT and on != keys.HOLDOUT:
      continue
    out[split] = split_metrics(history[split][epoch], targets[split], labels,
                               groups)
    # Per example, for the interval over seeds and examples.
    out[split]["example_mse"] = example_mse(history[split][epoch],
                                            targets[split]).tolist()
  return out


def example_mse(prediction: np.ndarray, targets: Targets) -> np.ndarray:
  """[N] squared error of each example's normalised chunk, averaged."""
  true = targets.normalised
  err = prediction.reshape(true.shape).astype(np.float64) - true
  return (err**2).reshape(len(true), -1).mean(-1)


def write_seed(out_dir: str, history: Mapping[str, np.ndarray],
               targets: Mapping[str, Targets], labels: Sequence[str],
               groups: Mapping[str, Sequence[int]],
               fields: Mapping[str, Any], *, write: bool = True,
               plots: bool = True) -> dict[str, Any]:
  """Writes one seed's results.json, best_result.csv and (`plots`)
  trajectory plots.

  Args:
    out_dir: the seed's folder.
    history: split -> [E, N, S * A] predictions, and `train_loss` [E].
    targets: split -> its targets.
    labels: action dimension names.
    groups: group -> dimension indices.
    fields: what the run was (model, dataset, ...), copied in.
    write: False only computes the results (the other processes of a
      multi-process run, which share process 0's folder).
    plots: also draw trajectories_<split>.png.

  Returns:
    The results written to results.json.
  """
  epochs = len(history["train_loss"])
  table = [{"epoch": e + 1, "train_loss": float(history["train_loss"][e]),
            **{s: split_metrics(history[s][e], t, labels, groups)
               for s, t in targets.items()}} for e in range(epochs)]
  results = {**fields, "examples": {s: len(t.normalised)
                                    for s, t in targets.items()},
             "dim_labels": list(labels),
             "groups": {g: list(ix) for g, ix in groups.items()},
             "epochs": table,
             keys.UPSTREAM_STYLE: _select(
                 history, targets, keys.VALIDATION,
                 HOW[keys.UPSTREAM_STYLE], labels, groups)}
  if keys.HOLDOUT in targets:
    results[keys.HONEST] = _select(history, targets, keys.HOLDOUT,
                                   HOW[keys.HONEST], labels, groups)
  if not write:
    return results
  atomic_io.write_json(layout.results_file(out_dir), results)
  _write_best_result(layout.best_result_file(out_dir),
                     results[keys.UPSTREAM_STYLE])
  chosen = results.get(keys.HONEST, results[keys.UPSTREAM_STYLE])["epoch"] - 1
  for split in (keys.VALIDATION, keys.UNSEEN) if plots else ():
    if split in targets:
      _plot_trajectories(
          layout.trajectories_plot(out_dir, split),
          history[split][chosen], targets[split], labels,
          f"{fields.get('model')} on {fields.get('dataset')} {split}, epoch "
          f"{chosen + 1}")
  return results


def _write_best_result(path: str, best: Mapping[str, Any]) -> None:
  """Upstream's best_result.csv columns for the validation-chosen epoch."""
  row = {"best_epoch": best["epoch"], "train_loss": best["train_loss"]}
  for split, prefix in ((keys.VALIDATION, "val_seen"),
                        (keys.UNSEEN, "val_unseen")):
    if split not in best:
      continue
    m = best[split]
    row[f"{prefix}_loss"] = m["huber"]
    row[f"{prefix}_mse"] = m[keys.MSE]
    row.update({f"{prefix}_mse_{k}": v for k, v in m["mse_per_dim"].items()})
    row.update({f"{prefix}_mse_{k}": v for k, v in m["mse_groups"].items()})
  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(list(row))
  w.writerow([f"{v:.8g}" if isinstance(v, float) else v for v in row.values()])
  atomic_io.write_atomic(path, buf.getvalue().encode())


def _plot_trajectories(path: str, prediction: np.ndarray, targets: Targets,
                       labels: Sequence[str], title: str,
                       examples: int = 4) -> None:
  """One panel per action dimension, the first `examples` chunks in it (a
  colour each; true solid, predicted dashed)."""
  # A panel per dimension (not per example and dimension) draws ~4x
  # faster, which `run` pays in every regression stage.
  true = targets.normalised
  pred = prediction.reshape(true.shape)
  n = min(examples, len(true))
  dims = true.shape[-1]
  steps = np.arange(true.shape[1])

  def draw(fig):
    for d, ax in enumerate(fig.subplots(1, dims, squeeze=False)[0]):
      for i in range(n):
        mean, std = targets.mean[i, d], targets.std[i, d]
        ax.plot(steps, true[i, :, d] * std + mean, "o-", color=f"C{i}",
                markersize=2, linewidth=1)
        ax.plot(steps, pred[i, :, d] * std + mean, "--", color=f"C{i}",
                linewidth=1)
      ax.set_title(labels[d], fontsize=8)
      ax.tick_params(labelsize=6)
    fig.suptitle(f"{title} ({n} chunks, a colour each, in robot units; "
                 "solid: true, dashed: predicted; x: step in the chunk)",
                 fontsize=8)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.1, top=0.8,
                        wspace=0.4)

  atomic_io.write_atomic(path, figures.png(draw, (1.9 * dims, 2.4)))


def write_summary(out_dir: str, per_seed: Mapping[int, Mapping[str, Any]],
                  fields: Mapping[str, Any], *, write: bool = True
                  ) -> dict[str, Any]:
  """results.json over seeds: each seed's MSEs, their mean and std, and a
  95% interval of the MSE (bootstrap over examples and seeds)."""
  out: dict[str, Any] = {**fields, keys.SEEDS: sorted(per_seed)}
  for name, how in HOW.items():
    runs = [r[name] for r in per_seed.values() if name in r]
    if not runs:
      continue
    out[name] = {"how": how, **metrics.seed_spread(
        runs, (keys.VALIDATION, keys.UNSEEN), (keys.MSE, keys.MSE_UNITS))}
    floor = fields.get(keys.FLOOR, {})
    for split in (keys.VALIDATION, keys.UNSEEN):
      if split not in out[name]:
        continue
      errors = np.array([r[split]["example_mse"] for r in runs])
      interval = metrics.bootstrap_interval(errors)
      out[name][split][keys.MSE_CI95] = interval
      if split in floor:
        # Not shown to beat always predicting the training mean.
        out[name][split][keys.AT_FLOOR] = bool(
            interval["high"] >= floor[split])
    out[name][keys.PER_SEED] = {
        str(s): {"epoch": r[name]["epoch"],
                 "validation_mse": r[name][keys.VALIDATION][keys.MSE]}
        for s, r in per_seed.items() if name in r}
  if write:
    atomic_io.write_json(layout.results_file(out_dir), out)
  return out
