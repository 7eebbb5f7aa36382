"""The `regress` stage: stored pair features + prepared actions -> results.

  feature stores (train, validation, unseen) + the TFDS dataset's actions
  -> targets: absolute chunk or last - first (relative), normalised with
     the dataset's statistics (fixed, or per robot type)
  -> train minus a held-out slice: one decoder per seed (`train_regressor`)
  -> predictions per epoch -> results per seed -> mean/std over seeds
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lary_jax import feature_store as fs
from lary_jax import metrics
from lary_jax import result_keys as keys
from lary_jax import run_claim
from lary_jax import workdir_layout as layout
from lary_jax.data import normalize
from lary_jax.errors import LaryError
from lary_jax.probes import action_dims
from lary_jax.probes import dit_decoder
from lary_jax.probes import in_memory
from lary_jax.probes import mlp_decoder
from lary_jax.probes import regression_report as report
from lary_jax.probes import run_state
from lary_jax.probes import train_regressor as tr


def mlp(hidden: int = 4096, blocks: int = 2):
  """Upstream's MLP decoder: factory(steps, action_dim) -> Decoder."""
  def factory(steps: int, action_dim: int) -> tr.Decoder:
    def make(input_dim, seed, dtype):
      return mlp_decoder.make(mlp_decoder.Config(
          input_dim, steps * action_dim, hidden=hidden, blocks=blocks),
                              seed=seed, dtype=dtype)
    return tr.decoder_from_module("mlp", mlp_decoder, make)
  return factory


def dit(hidden: int = 512, depth: int = 6, num_heads: int = 8,
        clip_sample: bool = True):
  """Upstream's DiT decoder (DDPM, 500 sampling steps): factory(steps,
  action_dim) -> Decoder."""

  def factory(steps: int, action_dim: int) -> tr.Decoder:
    def make(input_dim, seed, dtype):
      return dit_decoder.make(dit_decoder.Config(
          latent_dim=input_dim, action_dim=action_dim, steps=steps,
          hidden=hidden, depth=depth, num_heads=num_heads,
          clip_sample=clip_sample), seed=seed,
                              dtype=dtype)
    return tr.decoder_from_module("dit", dit_decoder, make)
  return factory


class _Rows:
  """Store rows with their targets: {"features", "target"}."""

  def __init__(self, features: fs.FeatureSource, targets: np.ndarray):
    self.features, self.targets = features, targets

  def __len__(self) -> int:
    return len(self.targets)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {"features": self.features.features(int(i)),
            "target": self.targets[int(i)]}


def read_targets(builder: Any, split: str, stats: normalize.ActionStats,
                 relative: bool, identities: Sequence[str]
                 ) -> report.Targets:
  """Normalised targets of a split, checked against the store's rows."""
  records = builder.as_data_source()[split]
  if len(records) != len(identities):
    raise LaryError(f"{split}: {len(identities)} feature rows for "
                    f"{len(records)} records; extract again")
  chunks, means, stds = [], [], []
  for i in range(len(records)):
    r = records[i]
    path = r["src_path"]
    path = path.decode() if isinstance(path, bytes) else str(path)
    if path != identities[i]:
      raise LaryError(
          f"{split} record {i} is {path!r} but the features are of "
          f"{identities[i]!r}; the dataset was prepared again since "
          "extraction: extract again")
    action = np.asarray(r["action"], np.float32)
    if relative:
      action = normalize.relative_target(action)
    mean, std = stats.lookup(r.get("robot_type", b""))
    chunks.append(normalize.normalize(action, mean, std))
    means.append(mean)
    stds.append(std)
  return report.Targets(np.stack(chunks).astype(np.float32),
                        np.stack(means), np.stack(stds))


def regress(builder: Any, spec: Any, stores: Mapping[str, str],
            out_dir: str, *, decoder_factory: Any, model_type: str,
            action_mode: str, fields: Mapping[str, Any],
            seeds: Sequence[int], holdout: float,
            options: tr.Options = tr.Options(), mesh: Any = None,
            progress: bool | None = None,
            decoder_shape: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Trains and evaluates one decoder per seed; writes the results.

  Args:
    builder: the prepared TFDS regression builder.
    spec: its `DatasetSpec` (name, stride, action_dim).
    stores: split -> feature store ("train" and "validation" required).
    out_dir: results folder; each seed trains in `seed_<s>/`.
    decoder_factory: `mlp()` or `dit()`.
    model_type: "mlp" or "dit".
    action_mode: "absolute" or "relative".
    fields: what the run is, copied into results.
    seeds: one run per seed.
    holdout: fraction of train held out for the honest selection.
    options: training options.
    mesh: device mesh.
    progress: tqdm bars.
    decoder_shape: the decoder's widths, recorded with the run.

  Returns:
    The summary written to `out_dir/results.json`.
  """
  stats = _action_stats(builder, stores, action_mode)
  relative = action_mode == "relative"
  steps = 1 if relative else spec.stride
  labels = action_dims.labels(spec.name, stats.dim)
  groups = action_dims.groups(spec.name, stats.dim)
  features = {s: fs.FeatureSource(d) for s, d in stores.items()}
  targets = {s: read_targets(builder, s, stats, relative, f.identities)
             for s, f in features.items()}
  token_shape = features[keys.TRAIN].token_shape
  decoder = decoder_factory(steps, stats.dim)
  inputs = {**{s: run_claim.digest_file(os.path.join(d, fs.MANIFEST))
               for s, d in stores.items()},
            "holdout": holdout, "holdout_by": "episode",
            "action_mode": action_mode, "decoder_shape": decoder_shape}
  rows = {s: _Rows(features[s], t.normalised.reshape(len(t.normalised), -1))
          for s, t in targets.items()}
  per_seed = {}
  store = tr.held_store(options)  # read once for every seed
  for seed in seeds:
    # Whole episodes are held out: pairs of one episode overlap in time.
    train_ids, held_ids = metrics.group_holdout(
        [episode(p) for p in features[keys.TRAIN].identities], holdout, seed)
    train, evals, seed_targets = _seed_splits(rows, targets, train_ids,
                                              held_ids)
    seed_dir = layout.seed_dir(out_dir, seed)
    history = tr.train(decoder, token_shape, train, evals, seed_dir,
                       seed=seed, options=options, mesh=mesh,
                       progress=progress, inputs=inputs, store=store)
    run_fields = {**fields, "seed": seed, "holdout_fraction": holdout,
                  "model_type": model_type, "action_mode": action_mode,
                  "steps": steps, "action_dim": stats.dim,
                  "token_shape": list(token_shape),
                  "training": dataclasses.asdict(options),
                  "schedule": run_state.schedule(len(train_ids), options),
                  "decoder_shape": dict(decoder_shape or {}),
                  keys.FLOOR: mean_floor(
                      targets[keys.TRAIN].subset(train_ids), seed_targets,
                      labels, groups)}
    # Plots of the first seed only: the one the report shows (a second of
    # matplotlib each, as long as the training of a LARY-Sim seed).
    per_seed[seed] = report.write_seed(seed_dir, history, seed_targets,
                                       labels, groups, run_fields,
                                       write=jax.process_index() == 0,
                                       plots=seed == min(seeds))
  summary_fields = {**fields, "model_type": model_type,
                    "action_mode": action_mode, "holdout_fraction": holdout,
                    "trained_on": run_state.trained_on(holdout),
                    keys.FLOOR: next(iter(per_seed.values()))[keys.FLOOR]}
  return report.write_summary(out_dir, per_seed, summary_fields,
                              write=jax.process_index() == 0)


def _action_stats(builder: Any, stores: Mapping[str, str],
                  action_mode: str) -> normalize.ActionStats:
  """The dataset's action statistics, once the stores needed are there."""
  for split in (keys.TRAIN, keys.VALIDATION):
    if split not in stores:
      raise LaryError(f"regress needs features of the {split} split; run "
                      "`extract` on it first")
  if "action_stats" not in builder.info.metadata:
    raise LaryError(f"{builder.data_dir} has no action statistics; is it a "
                    "regression dataset with numeric actions?")
  return normalize.ActionStats.from_metadata(
      builder.info.metadata["action_stats"], action_mode)


def _seed_splits(rows: Mapping[str, _Rows],
                 targets: Mapping[str, report.Targets], train_ids: np.ndarray,
                 held_ids: np.ndarray) -> tuple[tr.Split, dict[str, tr.Split],
                                                dict[str, report.Targets]]:
  """A seed's training rows, its evaluated splits (the other stores and the
  held-out slice: rows of the one train store, `in_memory.Rows`) and their
  targets. `rows` are the command's, shared by its seeds, so that they
  share what `train_regressor.held_store` holds."""
  flat = {s: r.targets for s, r in rows.items()}
  evals = {s: tr.Split(rows[s], flat[s]) for s in rows if s != keys.TRAIN}
  seed_targets = {s: targets[s] for s in evals}
  if len(held_ids):
    evals[keys.HOLDOUT] = tr.Split(
        in_memory.Rows(rows[keys.TRAIN], held_ids), flat[keys.TRAIN][held_ids])
    seed_targets[keys.HOLDOUT] = targets[keys.TRAIN].subset(held_ids)
  return (tr.Split(in_memory.Rows(rows[keys.TRAIN], train_ids)), evals,
          seed_targets)


def episode(src_path: str) -> str:
  """A pair's episode: the folder of its source image (`.../ep_12/x.png`)."""
  return os.path.dirname(src_path)


def mean_floor(train: report.Targets, targets: Mapping[str, report.Targets],
               labels, groups) -> dict[str, float]:
  """MSE of always predicting the training targets' mean, per split."""
  mean = train.normalised.mean(0).reshape(-1)
  return {s: report.split_metrics(np.broadcast_to(mean, (len(t.normalised),
                                                         mean.size)),
                                  t, labels, groups)[keys.MSE]
          for s, t in targets.items() if s != keys.HOLDOUT}


def describe(summary: Mapping[str, Any], out_dir: str) -> str:
  """A few lines for the terminal: both selections and the mean floor."""
  lines = [f"{summary.get('dataset')} {summary.get('model')} "
           f"{summary.get('model_type')} {summary.get('action_mode')}: seeds "
           f"{summary[keys.SEEDS]} -> {layout.results_file(out_dir)}"]
  for name, label in ((keys.UPSTREAM_STYLE, "upstream-style (chosen on val)"),
                      (keys.HONEST, "honest (chosen on train holdout)")):
    for split, scores in summary.get(name, {}).items():
      if isinstance(scores, dict) and keys.MSE in scores:
        m = scores[keys.MSE]
        lines.append(f"  {label:34s} {split:10s} MSE {m['mean']:.4f} +- "
                     f"{m['std']:.4f}  (predict-the-mean "
                     f"{summary[keys.FLOOR].get(split, float('nan')):.4f})")
  return "\n".join(lines)
