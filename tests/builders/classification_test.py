"""`lary_classification` on synthetic clips in upstream's CSV schema."""

import numpy as np
import pytest

from lary_jax.data import images
from lary_jax.data import sampler
from lary_jax.data import video
from lary_jax.errors import LaryError
from tests.builders import fake_data_dir
from tfds_builders import metadata
from tfds_builders import prepare


@pytest.mark.parametrize("name", ["human_1st", "robot_1st"])
def test_clips_with_upstream_sample_indices(tmp_path, name):
  data_dir = str(tmp_path / "data")
  fake_data_dir.make_classification(data_dir, name)
  b = prepare.prepare(metadata.DATASETS[name], data_dir, str(tmp_path / "t"),
                      options=prepare.PrepareOptions(num_workers=0))
  assert b.info.features["label"].names == sorted(fake_data_dir.CLASSES)
  train, val = b.as_data_source()["train"], b.as_data_source()["validation"]
  assert (len(train), len(val)) == (9, 3)
  record = train[1]
  assert record["video_path"] == b"SSv2/train/1_0.mp4"
  assert record["action"] == b"pick up the cup"
  assert record["label"] == sorted(fake_data_dir.CLASSES).index(
      "pick up the cup")
  frames = np.stack([images.decode_image(f) for f in record["frames"]])
  assert frames.shape == (9, 224, 224, 3)
  clip = video.read_video(f"{data_dir}/classification/SSv2/train/1_0.mp4")
  expected = images.resize_bicubic(clip[list(range(0, 18, 2))])
  np.testing.assert_array_equal(frames, expected)


def test_sim_style_rows_use_the_motion_guided_sampler(tmp_path):
  data_dir = str(tmp_path / "data")
  fake_data_dir.make_classification(data_dir, "sim_classification",
                                    with_indices=False)
  b = prepare.prepare(metadata.DATASETS["sim_classification"], data_dir,
                      str(tmp_path / "t"),
                      options=prepare.PrepareOptions(num_workers=0))
  record = b.as_data_source()["train"][2]
  clip = video.read_video(
      f"{data_dir}/classification/{record['video_path'].decode()}")
  ids = sampler.sample_frame_ids(clip)
  frames = np.stack([images.decode_image(f) for f in record["frames"]])
  np.testing.assert_array_equal(frames, images.resize_bicubic(clip[ids]))
  # LARY-Sim's ground truth: the robot state at each sampled frame.
  states = np.load(f"{data_dir}/classification/{record['video_path'].decode()}"
                   .replace(".mp4", "_states.npy"))
  np.testing.assert_array_equal(record["states"], states[ids])


def test_sim_state_file_of_the_wrong_length_is_a_bad_row(tmp_path):
  data_dir = str(tmp_path / "data")
  fake_data_dir.make_classification(data_dir, "sim_classification",
                                    with_indices=False)
  path = f"{data_dir}/classification/SSv2/train/100_0_states.npy"
  np.save(path, np.zeros((3, 15), np.float32))
  spec = metadata.DATASETS["sim_classification"]
  total, bad = prepare.check(spec, data_dir, num_workers=0)
  assert [(b.csv, b.line, b.path) for b in bad] == [(
      "sim_classification_metadata_train.csv", 5,
      "SSv2/train/100_0_states.npy")]
  assert "expected one state per video frame (20, S)" in bad[0].reason


def test_validation_class_missing_from_train_is_named(tmp_path):
  data_dir = str(tmp_path / "data")
  meta = fake_data_dir.make_classification(data_dir, "human_1st")
  spec = metadata.DATASETS["human_1st"]
  header, rows = ["dataset", "video_path", "action", "sample_indices"], [
      ["SSv2", "SSv2/val/0_0.mp4", "juggle", "0,1,2,3,4,5,6,7,8"]]
  fake_data_dir.write_csv(f"{meta}/{spec.csv_name('val')}", header, rows)
  with pytest.raises(LaryError, match="class 'juggle' does not occur in the "
                     "train split"):
    prepare.prepare(spec, data_dir, str(tmp_path / "t"),
                    options=prepare.PrepareOptions(num_workers=0))
  total, bad = prepare.check(spec, data_dir, num_workers=0)
  assert total == 10 and [(b.csv, b.line) for b in bad] == [
      ("human_1st_metadata_val.csv", 2)]


def test_labels_travel_as_metadata_in_record_order(tmp_path):
  data_dir = str(tmp_path / "data")
  fake_data_dir.make_classification(data_dir, "robot_1st")
  b = prepare.prepare(metadata.DATASETS["robot_1st"], data_dir,
                      str(tmp_path / "t"),
                      options=prepare.PrepareOptions(num_workers=0))
  for split, source in b.as_data_source().items():
    assert b.info.metadata["labels"][split] == [
        source[i]["label"] for i in range(len(source))]
