"""The grain pipeline on datasets prepared by the TFDS builders."""

import numpy as np

from lary_jax.data import images
from lary_jax.data import normalize
from lary_jax.data import pipeline
from tests.builders import fake_data_dir
from tfds_builders import metadata
from tfds_builders import prepare


def _prepared(tmp_path, name, make):
  data_dir = str(tmp_path / "data")
  make(data_dir, name)
  return prepare.prepare(metadata.DATASETS[name], data_dir,
                         str(tmp_path / "tfds"),
                         options=prepare.PrepareOptions(num_workers=0))


def test_regression_batches_normalised_per_robot(tmp_path):
  b = _prepared(tmp_path, "robocoin", fake_data_dir.make_regression)
  source = b.as_data_source()["train"]
  for relative in (False, True):
    mode = "relative" if relative else "absolute"
    stats = normalize.ActionStats.from_metadata(
        b.info.metadata["action_stats"], mode)
    ds = pipeline.train_dataset(
        source, [pipeline.DecodePair("src_image", "tgt_image"),
                 pipeline.ActionTarget(stats, relative=relative)],
        ["images", "action", "action_raw"], global_batch=8, seed=3,
        num_epochs=1)
    batch = ds[0]
    steps = 1 if relative else 10
    assert batch["images"].shape == (8, 2, 224, 224, 3)
    assert batch["images"].dtype == np.uint8
    assert batch["action"].shape == (8, steps, 12)
    for row, index in enumerate(batch["index"]):
      record = source[int(index)]
      np.testing.assert_array_equal(batch["images"][row, 0],
                                    images.decode_image(record["src_image"]))
      raw = record["action"]
      if relative:
        raw = raw[-1:] - raw[:1]
      mean, std = stats.lookup(record["robot_type"].decode())
      np.testing.assert_allclose(batch["action"][row], (raw - mean) / std,
                                 rtol=1e-5, atol=1e-5)


def test_classification_eval_sees_every_clip_once(tmp_path):
  b = _prepared(tmp_path, "human_1st", fake_data_dir.make_classification)
  source = b.as_data_source()["train"]
  labels = np.array(b.info.metadata["labels"]["train"])
  seen = []
  for process in range(2):
    ds = pipeline.eval_dataset(source, [pipeline.DecodeFrames()],
                               ["frames", "label"], global_batch=4,
                               process_index=process, process_count=2)
    for batch in ds:
      assert batch["frames"].shape == (2, 9, 224, 224, 3)
      np.testing.assert_array_equal(batch["label"], labels[batch["index"]])
      seen += list(batch["index"][batch["_mask"]])
  assert sorted(seen) == list(range(len(source)))
  balanced = pipeline.train_dataset(source, [pipeline.DecodeFrames()],
                                    ["label"], global_batch=3, seed=0,
                                    labels=labels, num_epochs=1)
  assert balanced[0]["label"].shape == (3,)
