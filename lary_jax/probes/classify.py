"""The `classify` stage: stored features + prepared labels -> probe results.

  feature stores (train, validation, unseen)  +  the TFDS dataset's labels
  -> train minus a held-out slice: the five probes (`train_classifier`)
  -> predictions per epoch -> results per seed -> mean/std over seeds
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lary_jax import feature_store as fs
from lary_jax import metrics
from lary_jax import result_keys as keys
from lary_jax import run_claim
from lary_jax import workdir_layout as layout
from lary_jax.errors import LaryError
from lary_jax.probes import attentive_probe
from lary_jax.probes import classification_report as report
from lary_jax.probes import in_memory
from lary_jax.probes import multi_head as mh
from lary_jax.probes import run_state
from lary_jax.probes import train_classifier as tc


@dataclasses.dataclass(frozen=True)
class ProbeShape:
  """The probe's widths (config section `classify.probe`)."""

  model_dim: int = 768
  num_heads: int = 16
  depth: int = 4
  pool_grid: int = 0  # 0: every token (upstream); g: g x g cells per frame


class _Labelled:
  """Feature rows with their labels (int32, the dtype the device computes
  with); the rows' identities are checked against the records once, so a
  step reads features only."""

  def __init__(self, features: fs.FeatureSource, records: Any,
               labels: np.ndarray):
    fs.check_identities(features, records)
    self.features, self.labels = features, labels

  def __len__(self) -> int:
    return len(self.features)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {**self.features[i], "label": np.int32(self.labels[int(i)])}


def _labels(builder: Any, split: str) -> np.ndarray:
  meta = builder.info.metadata.get("labels") or {}
  if split not in meta:
    raise LaryError(f"{builder.data_dir}: no labels of split {split} in its "
                    "metadata; prepare the dataset again")
  return np.asarray(meta[split], np.int64)


def _check_classes(labels: Mapping[str, np.ndarray],
                   names: Sequence[str]) -> None:
  seen = set(np.unique(labels[keys.TRAIN]).tolist())
  for split, y in labels.items():
    missing = sorted(set(np.unique(y).tolist()) - seen)
    if missing:
      raise LaryError(
          f"{split} has classes the training split never shows: "
          f"{[names[i] for i in missing]}; a probe cannot learn them (labels "
          "map once, from the training split)")


def classify(builder: Any, stores: Mapping[str, str], out_dir: str, *,
             fields: Mapping[str, Any], seeds: Sequence[int],
             holdout: float, shape: ProbeShape = ProbeShape(),
             options: tc.Options = tc.Options(), dim: int | None = None,
             classes: int | None = None, mesh: Any = None,
             progress: bool | None = None,
             source_video: Callable[[str], str] | None = None
             ) -> dict[str, Any]:
  """Trains and evaluates the probes for every seed; writes the results.

  Args:
    builder: the prepared TFDS classification builder (labels, records).
    stores: split -> feature store of that split ("train" required;
      "validation" required; "unseen" optional).
    out_dir: results folder; each seed trains in `seed_<s>/`.
    fields: what the run is (model, dataset, ...), copied into results.
    seeds: one run per seed.
    holdout: fraction of train held out for the honest selection (0: none).
    shape: the probe's widths.
    options: training options.
    dim: expected feature width (checked against the store) or None.
    classes: expected class count (checked against the dataset) or None.
    mesh: device mesh.
    progress: tqdm bars.
    source_video: a row's identity (a clip's `video_path`) -> the video it
      was cut from; the held-out slice takes whole source videos (default:
      each row its own).

  Returns:
    The summary written to `out_dir/results.json`.
  """
  for split in (keys.TRAIN, keys.VALIDATION):
    if split not in stores:
      raise LaryError(f"classify needs features of the {split} split; run "
                      "`extract` on it first")
  names = builder.info.features["label"].names
  if classes is not None and classes != len(names):
    raise LaryError(f"--classes {classes}, but {builder.data_dir} has "
                    f"{len(names)} classes")
  sources, labels, token_shape = _read_splits(builder, stores, dim)
  _check_classes(labels, names)
  probe = attentive_probe.Config(
      dim=token_shape[-1], num_classes=len(names),
      model_dim=shape.model_dim, num_heads=shape.num_heads, depth=shape.depth,
      pool_grid=shape.pool_grid)
  sources_of_val = None
  records = builder.as_data_source()[keys.VALIDATION]
  if "dataset" in builder.info.features:
    sources_of_val = [_text(records[i]["dataset"])
                      for i in range(len(records))]

  groups = None
  if holdout > 0 and source_video is not None:
    # The train rows' identities (`video_path` of a clip), checked against
    # the records when the source was built.
    groups = [source_video(identity)
              for identity in sources[keys.TRAIN].features.identities]
  per_seed = {}
  store = tc.held_store(probe, options)  # read once for every seed
  for seed in seeds:
    train, evals = _seed_splits(sources, labels, holdout, seed, groups)
    seed_dir = layout.seed_dir(out_dir, seed)
    history = tc.train(probe, train, evals, seed_dir, seed=seed,
                       options=options, mesh=mesh, progress=progress,
                       inputs={**_digests(stores), "holdout": holdout},
                       store=store)
    run_fields = {**fields, "seed": seed, "holdout_fraction": holdout,
                  "probe": dataclasses.asdict(probe),
                  "training": _options_dict(options),
                  "schedule": run_state.schedule(len(train.labels), options)}
    per_seed[seed] = report.write_seed(
        seed_dir, history, {s: e.labels for s, e in evals.items()},
        mh.head_table(mh.StepOptions(heads=tuple(options.heads))), names,
        run_fields, sources_of_val, write=jax.process_index() == 0)
  return report.write_summary(out_dir, per_seed, {
      **fields, "holdout_fraction": holdout, "num_classes": len(names),
      "trained_on": run_state.trained_on(holdout)}, write=jax.process_index() == 0)


def _read_splits(builder: Any, stores: Mapping[str, str], dim: int | None
                 ) -> tuple[dict[str, _Labelled], dict[str, np.ndarray],
                            tuple[int, ...]]:
  """Each split's labelled feature rows and labels, checked against its
  store, and the stored token shape."""
  sources, labels = {}, {}
  for split, store_dir in stores.items():
    feats = fs.FeatureSource(store_dir)
    records = builder.as_data_source()[split]
    labels[split] = _labels(builder, split)
    sources[split] = _Labelled(feats, records, labels[split])
    if len(labels[split]) != len(feats):
      raise LaryError(f"{store_dir}: {len(feats)} feature rows, but the "
                      f"{split} split has {len(labels[split])} labels; "
                      "extract again")
    token_shape = feats.token_shape
    if dim is not None and token_shape[-1] != dim:
      raise LaryError(f"--dim {dim}, but {store_dir} holds features of "
                      f"width {token_shape[-1]} (shape {token_shape})")
  return sources, labels, token_shape


def _seed_splits(sources: Mapping[str, _Labelled],
                 labels: Mapping[str, np.ndarray], holdout: float, seed: int,
                 groups: Sequence[str] | None
                 ) -> tuple[tc.Split, dict[str, tc.Split]]:
  """A seed's training rows and evaluated splits: train minus its held-out
  slice (rows of the one train store: `in_memory.Rows`), the other stores,
  and the held-out slice."""
  train_ids, held_ids = metrics.stratified_holdout(labels[keys.TRAIN],
                                                   holdout, seed, groups)
  train = tc.Split(in_memory.Rows(sources[keys.TRAIN], train_ids),
                   labels[keys.TRAIN][train_ids])
  evals = {s: tc.Split(src, labels[s]) for s, src in sources.items()
           if s != keys.TRAIN}
  if len(held_ids):
    evals[keys.HOLDOUT] = tc.Split(in_memory.Rows(sources[keys.TRAIN],
                                                  held_ids),
                                   labels[keys.TRAIN][held_ids])
  return train, evals


def _digests(stores: Mapping[str, str]) -> dict[str, str]:
  """Each split's store manifest digest: other features, another run."""
  return {split: run_claim.digest_file(os.path.join(d, fs.MANIFEST))
          for split, d in stores.items()}


def _options_dict(options: tc.Options) -> dict[str, Any]:
  out = dataclasses.asdict(options)
  out["heads"] = [list(h) for h in options.heads]
  return out


def _text(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def describe(summary: Mapping[str, Any], out_dir: str) -> str:
  """A few lines for the terminal: both numbers, with their spread."""
  lines = [f"{summary.get('dataset')} {summary.get('model')}: seeds "
           f"{summary[keys.SEEDS]} -> {layout.results_file(out_dir)}"]
  for name, label in ((keys.UPSTREAM_STYLE, "upstream-style (chosen on val)"),
                      (keys.HONEST, "honest (chosen on train holdout)")):
    if name not in summary:
      continue
    for split, scores in summary[name].items():
      if not isinstance(scores, dict) or keys.TOP1 not in scores:
        continue
      t1, t5 = scores[keys.TOP1], scores[keys.TOP5]
      lines.append(f"  {label:34s} {split:10s} top-1 {t1['mean']:.3f} "
                   f"+- {t1['std']:.3f}  top-5 {t5['mean']:.3f}")
  return "\n".join(lines)
