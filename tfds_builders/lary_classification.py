"""`lary_classification`: LARY's video datasets ("what to do").

    import tfds_builders, tensorflow_datasets as tfds
    builder = tfds.builder("lary_classification/human_1st", data_dir=TFDS_DIR)
    builder.download_and_prepare(file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=DATA_DIR))

or `python -m lary_jax.main prepare --dataset human_1st --data_dir DATA_DIR`.
Each example is one clip: its 9 frames (ids from the CSV's `sample_indices`,
else from the motion-guided sampler; 224x224 bicubic, encoded), with
`vjepa2_view` also `frames_vjepa2` (V-JEPA 2's view of them), the label
(class names = sorted actions of the train split), the action text, the
source dataset and the row's identity (`video_path`); LARY-Sim clips also
hold `states`, the robot's state at each of the 9 frames (ground truth).
Every split's labels, in record order, are also in `info.metadata["labels"]`
for balanced sampling.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import lary_builder
from tfds_builders import loaders
from tfds_builders import metadata


class LaryClassification(lary_builder.LaryBuilder):
  """LARY classification: Human_1st (123 classes), Robot_1st (54), LARY-Sim."""

  BUILDER_CONFIGS = [lary_builder.LaryConfig(s)
                     for s in metadata.specs_of_kind("classification")]

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    features = {
        "frames": lary_builder.frames_feature(loaders.NUM_FRAMES),
        "label": tfds.features.ClassLabel(),
        "action": text,
        "dataset": text,
        "video_path": text,
    }
    if self.spec.has_states:  # LARY-Sim's ground truth (`sim_oracle`)
      features["states"] = tfds.features.Tensor(
          shape=(loaders.NUM_FRAMES, None), dtype=np.float32)
    view = "frames" + loaders.VJEPA2_SUFFIX
    if self._with_vjepa2_view(view):
      features[view] = lary_builder.frames_feature(loaders.NUM_FRAMES)
    return self._dataset_info(features)
