"""`lary_regression`: LARY's image-pair datasets ("how to do").

    import tfds_builders, tensorflow_datasets as tfds
    builder = tfds.builder("lary_regression/calvin", data_dir=TFDS_DIR,
                           metadata_dir=METADATA_DIR)
    builder.download_and_prepare(file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=DATA_DIR))
    train = builder.as_data_source()["train"]

or `python -m lary_jax.main prepare --dataset calvin --data_dir DATA_DIR`.
Each example is one CSV row: the source and target frames (224x224, bicubic,
encoded; with `vjepa2_view` also `src_image_vjepa2` / `tgt_image_vjepa2`,
V-JEPA 2's view of them), the action chunk [stride, action_dim] (LIBERO:
its direction label), the states where the CSV has them, and the row's
identity (`src_path`).
The action statistics used for normalisation are stored in
`info.metadata["action_stats"]` (see lary_jax/data/normalize.py).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from lary_jax.data import normalize
from tfds_builders import lary_builder
from tfds_builders import loaders
from tfds_builders import metadata


class LaryRegression(lary_builder.LaryBuilder):
  """LARY regression: CALVIN, VLABench (5/15/30), AgiBot-Beta, RoboCOIN,
  LIBERO and LARY-Sim."""

  BUILDER_CONFIGS = [lary_builder.LaryConfig(s)
                     for s in metadata.specs_of_kind("regression")]

  def _info(self) -> tfds.core.DatasetInfo:
    spec = self.spec
    text = tfds.features.Text()
    features = {
        "src_image": lary_builder.frames_feature(),
        "tgt_image": lary_builder.frames_feature(),
        "dataset": text,
        "src_path": text,
    }
    for key in ("src_image", "tgt_image"):
      if self._with_vjepa2_view(key + loaders.VJEPA2_SUFFIX):
        features[key + loaders.VJEPA2_SUFFIX] = lary_builder.frames_feature()
    if spec.label_action:
      features["action"] = text
      features["label"] = tfds.features.ClassLabel()
    else:
      features["action"] = tfds.features.Tensor(
          shape=(spec.stride, spec.action_dim), dtype=np.float32)
      features["robot_type"] = text
    if spec.has_states:
      features["src_state"] = tfds.features.Tensor(shape=(None,),
                                                   dtype=np.float32)
      features["tgt_state"] = tfds.features.Tensor(shape=(None,),
                                                   dtype=np.float32)
    return self._dataset_info(features)

  def _finish_metadata(self, meta: tfds.core.MetadataDict) -> None:
    spec = self.spec
    meta["stride"] = spec.stride
    meta["action_dim"] = spec.action_dim
    if spec.stats != "none":
      meta["action_stats"] = action_stats(spec, self._data_root,
                                          self._rows.get("train", []))


def _upstream_stats_path(spec: metadata.DatasetSpec, data_root: str,
                         mode: str) -> str | None:
  """Upstream's stats JSON for `mode`, if the DATA_DIR has one."""
  if mode == "absolute":
    candidates = ([os.path.join(data_root, *spec.root, spec.stats_file)]
                  if spec.stats_file else [])
  else:
    rel_root = os.path.join(data_root, "regression_relative", *spec.root[1:])
    candidates = [
        os.path.join(rel_root, f"relative_action_stats_{spec.name}.json"),
        os.path.join(rel_root, "relative_action_stats.json"),
    ]
  return next((p for p in candidates if os.path.isfile(p)), None)


def action_stats(spec: metadata.DatasetSpec, data_root: str,
                 train_rows: list[metadata.Row]) -> dict:
  """The `action_stats` metadata: upstream's numbers where upstream fixes or
  ships them, else computed from the train split."""
  per_robot = spec.stats == "per_robot"
  stats: dict = {"group_by": "robot_type" if per_robot else None,
                 "source": {}}
  for mode in ("absolute", "relative"):
    path = _upstream_stats_path(spec, data_root, mode)
    if mode == "absolute" and spec.stats == "fixed":
      stats[mode] = normalize.upstream_fixed_stats(spec.name)
      stats["source"][mode] = "upstream-fixed"
    elif path:
      stats[mode] = normalize.read_upstream_stats(path)
      stats["source"][mode] = path
    else:
      if not train_rows:
        continue
      actions = (loaders.load_action(spec, r.paths["action"])
                 for r in train_rows)
      groups = ((r.fields.get("robot_type", "") for r in train_rows)
                if per_robot else None)
      stats[mode] = normalize.compute_action_stats(actions, groups, mode)
      stats["source"][mode] = "train"
  return stats
