"""`lary_regression` on synthetic DATA_DIRs made from real upstream rows."""

import os

import numpy as np
import pytest

from lary_jax.data import images
from lary_jax.data import normalize
from lary_jax.errors import LaryError
from tests.builders import fake_data_dir
from tfds_builders import metadata
from tfds_builders import prepare

CONFIGS = sorted(fake_data_dir.SOURCES)


def _prepare(tmp_path, name, **options):
  data_dir = str(tmp_path / "data")
  fake_data_dir.make_regression(data_dir, name)
  spec = metadata.DATASETS[name]
  opts = prepare.PrepareOptions(**{"num_workers": 0, **options})
  return prepare.prepare(spec, data_dir, str(tmp_path / "tfds"),
                         options=opts), data_dir


def _csv_rows(name, split):
  source, rows_slice = fake_data_dir.SOURCES[name][split]
  header, rows = fake_data_dir.read_upstream(source)
  return [dict(zip(header, r)) for r in rows[rows_slice]]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_prepares_and_reads_back(tmp_path, name):
  builder, data_dir = _prepare(tmp_path, name)
  spec = metadata.DATASETS[name]
  sources = builder.as_data_source()
  ours = {"train": ("train", "seen_train"), "validation": ("val", "seen_val"),
          "unseen": ("unseen",)}
  for split, upstream in ours.items():
    names = [u for u in upstream if u in fake_data_dir.SOURCES[name]]
    if not names:
      assert split not in sources
      continue
    csv_rows = _csv_rows(name, names[0])
    source = sources[split]
    assert len(source) == len(csv_rows)
    # Records keep CSV order; the identity is the CSV's own path.
    for i in (0, len(csv_rows) - 1):
      record = source[i]
      assert record["src_path"].decode() == csv_rows[i]["src_img"]
      src = images.decode_image(record["src_image"])
      assert src.shape == (224, 224, 3) and src.dtype == np.uint8
      root = spec.data_root(data_dir, names[0])
      original = images.load_image(metadata.resolve_path(
          root, csv_rows[i]["src_img"], spec.column_dirs.get("src_img")))
      # Stored losslessly: exactly the bicubic resize of the source file.
      np.testing.assert_array_equal(src, images.resize_bicubic(original))
      if spec.label_action:
        assert record["action"].decode() == csv_rows[i]["action"]
        label_names = builder.info.features["label"].names
        assert label_names[record["label"]] == csv_rows[i]["action"]
        continue
      action_path = metadata.resolve_path(root, csv_rows[i]["action"],
                                          spec.column_dirs.get("action"))
      np.testing.assert_array_equal(record["action"], np.load(action_path))
      assert record["action"].shape == (spec.stride, spec.action_dim)
      if spec.has_states:
        assert record["src_state"].shape == (15,)


def test_calvin_uses_upstream_fixed_stats_and_train_relative_stats(tmp_path):
  builder, data_dir = _prepare(tmp_path, "calvin")
  stats = builder.info.metadata["action_stats"]
  assert stats["source"] == {"absolute": "upstream-fixed",
                             "relative": "train"}
  np.testing.assert_allclose(stats["absolute"]["*"]["mean"][0], 0.03993005)
  # Relative stats from the 40 train chunks: last step minus first step.
  train = builder.as_data_source()["train"]
  rel = np.stack([train[i]["action"][-1] - train[i]["action"][0]
                  for i in range(len(train))]).astype(np.float64)
  np.testing.assert_allclose(stats["relative"]["*"]["mean"], rel.mean(0),
                             rtol=1e-6)
  np.testing.assert_allclose(stats["relative"]["*"]["std"], rel.std(0),
                             rtol=1e-6)


def test_robocoin_stats_per_robot_with_an_empty_robot_type(tmp_path):
  builder, _ = _prepare(tmp_path, "robocoin")
  stats = builder.info.metadata["action_stats"]
  assert stats["group_by"] == "robot_type"
  train = builder.as_data_source()["train"]
  by_robot = {}
  for i in range(len(train)):
    by_robot.setdefault(train[i]["robot_type"].decode(), []).append(
        train[i]["action"])
  assert "" in by_robot and set(stats["absolute"]) == set(by_robot)
  for robot, chunks in by_robot.items():
    steps = np.concatenate(chunks).astype(np.float64)
    np.testing.assert_allclose(stats["absolute"][robot]["mean"],
                               steps.mean(0), rtol=1e-6, atol=1e-9)
    assert stats["absolute"][robot]["count"] == len(steps)
  loaded = normalize.ActionStats.from_metadata(stats, "absolute")
  mean, std = loaded.lookup("")
  np.testing.assert_allclose(mean, stats["absolute"][""]["mean"])


def test_upstream_stats_json_is_used_when_present(tmp_path):
  data_dir = str(tmp_path / "data")
  fake_data_dir.make_regression(data_dir, "agibotbeta")
  stats_path = os.path.join(data_dir, "regression", "agibot_45",
                            "agibotbeta_stats.json")
  import json  # pylint: disable=g-import-not-at-top
  with open(stats_path, "w") as f:
    json.dump({"robot_stats": {"a2d": {"mean": [1.0] * 16, "std": [2.0] * 16,
                                       "count": 7}}}, f)
  b = prepare.prepare(metadata.DATASETS["agibotbeta"], data_dir,
                      str(tmp_path / "tfds"),
                      options=prepare.PrepareOptions(num_workers=0))
  stats = b.info.metadata["action_stats"]
  assert stats["source"]["absolute"] == stats_path
  assert stats["absolute"]["a2d"]["mean"] == [1.0] * 16
  assert stats["source"]["relative"] == "train"


def test_jpeg_option_and_reuse(tmp_path):
  builder, data_dir = _prepare(tmp_path, "libero", frame_format="jpeg")
  record = builder.as_data_source()["validation"][0]
  assert record["src_image"][:2] == b"\xff\xd8"
  assert builder.info.metadata["frame_format"] == "jpeg"
  # A finished dataset is reused; other frame options are refused.
  again = prepare.prepare(metadata.DATASETS["libero"], data_dir,
                          str(tmp_path / "tfds"),
                          options=prepare.PrepareOptions(
                              num_workers=0, frame_format="jpeg"))
  assert again.data_dir == builder.data_dir
  with pytest.raises(LaryError, match="prepared with frame_format=jpeg \\(quality 95\\), not png"):
    prepare.prepare(metadata.DATASETS["libero"], data_dir,
                    str(tmp_path / "tfds"),
                    options=prepare.PrepareOptions(num_workers=0))


def test_worker_pool_gives_the_same_records(tmp_path):
  a, _ = _prepare(tmp_path / "a", "vlabench_30")
  b, _ = _prepare(tmp_path / "b", "vlabench_30", num_workers=2)
  for split in ("train", "validation"):
    sa, sb = a.as_data_source()[split], b.as_data_source()[split]
    assert len(sa) == len(sb)
    for i in range(len(sa)):
      assert sa[i]["src_image"] == sb[i]["src_image"]
      np.testing.assert_array_equal(sa[i]["action"], sb[i]["action"])
