"""CSV schemas, path resolution and text-level row checks."""

import os

import pytest

from lary_jax.errors import LaryError
from tests.builders import fake_data_dir
from tfds_builders import metadata


def _write(tmp_path, spec_name, split, header, rows):
  spec = metadata.DATASETS[spec_name]
  path = tmp_path / "metadata" / spec.csv_name(split)
  fake_data_dir.write_csv(str(path), header, rows)
  return spec, str(path)


def test_every_upstream_csv_matches_its_schema():
  used = {}  # kept CSV -> the most rows a slice takes from it
  for name, splits in fake_data_dir.SOURCES.items():
    spec = metadata.DATASETS[name]
    for source, rows_slice in splits.values():
      header, rows = fake_data_dir.read_upstream(source)
      assert set(spec.columns) <= set(header) <= (
          set(spec.columns) | set(spec.optional_columns)), (name, header)
      assert all(len(r) == len(header) for r in rows), source
      used[source] = max(used.get(source, 0), rows_slice.stop)
  # The fixtures keep exactly the rows the slices take, no more.
  for source, stop in used.items():
    assert len(fake_data_dir.read_upstream(source)[1]) == stop, source
  kept = {f[:-len(".csv")] for f in os.listdir(fake_data_dir.UPSTREAM_CSV)
          if f.endswith(".csv")}
  assert kept == set(used)


def test_calvin_paths_resolve_as_upstream(tmp_path):
  header, rows = fake_data_dir.read_upstream("calvin_metadata_val")
  spec, path = _write(tmp_path, "calvin", "val", header, rows)
  good, bad = metadata.read_split(spec, path, "/data")
  assert bad == [] and len(good) == len(rows) == 30
  assert good[0].line == 2
  assert good[0].paths["src_img"] == (
      "/data/regression/calvin/val_stride5/images/ep_1/frame_000065.png")
  assert good[0].paths["action"] == (
      "/data/regression/calvin/val_stride5/actions/ep_1/"
      "action_000065to000069.npy")
  assert good[0].paths["src_state"] == (
      "/data/regression/calvin/val_stride5/states/ep_1/state_000065.npy")


def test_la_csv_paths_get_upstream_column_dirs(tmp_path):
  # Upstream's extraction CSVs drop the images/ and actions/ components.
  header, rows = fake_data_dir.read_upstream("val_la_calvin_5_dinov2")
  spec, path = _write(tmp_path, "calvin", "train", header, rows)
  good, bad = metadata.read_split(spec, path, "/data")
  assert bad == []
  assert good[0].paths["tgt_img"] == (
      "/data/regression/calvin/train_stride5/images/ep_1/frame_000070.png")
  assert good[0].paths["action"].endswith(
      "train_stride5/actions/ep_1/action_000065to000069.npy")
  # States are not given a directory by upstream either.
  assert good[0].paths["src_state"] == (
      "/data/regression/calvin/train_stride5/ep_1/state_000065.npy")


def test_vlabench_strides_share_one_flat_root(tmp_path):
  header, rows = fake_data_dir.read_upstream("vlabench_30_metadata_val")
  spec, path = _write(tmp_path, "vlabench_30", "val", header, rows)
  good, _ = metadata.read_split(spec, path, "/d")
  assert good[0].paths["src_img"] == (
      "/d/regression/vlabench/images/ep_4416/frame_508221.png")


@pytest.mark.parametrize("value,error", [
    ("/etc/passwd", "absolute path"),
    ("images/../../../secret.png", "escapes"),
    ("..\\up.png", "escapes"),
])
def test_paths_may_not_leave_the_data_root(value, error):
  with pytest.raises(ValueError, match=error):
    metadata.resolve_path("/root", value)


def test_absolute_paths_only_when_asked():
  assert metadata.resolve_path("/r", "/x/y.png", allow_absolute=True) == (
      "/x/y.png")


def test_text_level_problems_name_csv_line_and_reason(tmp_path):
  header = list(metadata.DATASETS["robocoin"].columns)
  ok = ["ds", "", "1st", "a/images/x.png", "a/images/y.png", "a/actions/z.npy"]
  rows = [
      ok,
      ok[:4],                                   # too few fields
      ["ds", "r", "1st", "", "b.png", "c.npy"],  # empty src_img
      ["ds", "r", "1st", "../x.png", "b.png", "c.npy"],
  ]
  spec, path = _write(tmp_path, "robocoin", "seen_train", header, rows)
  good, bad = metadata.read_split(spec, path, "/d")
  assert [r.line for r in good] == [2]
  assert [(b.line, b.csv) for b in bad] == [
      (3, "robocoin_metadata_seen_train.csv"),
      (4, "robocoin_metadata_seen_train.csv"),
      (5, "robocoin_metadata_seen_train.csv")]
  assert "malformed CSV line: 4 fields, header has 6" in bad[0].reason
  assert bad[1].reason == "empty src_img"
  assert "escapes" in bad[2].reason and bad[2].path == "../x.png"
  assert str(bad[2]).startswith("robocoin_metadata_seen_train.csv:5: ../x.png:")


def test_header_problems(tmp_path):
  spec = metadata.DATASETS["calvin"]
  header = list(spec.columns) + ["surprise"]
  spec, path = _write(tmp_path, "calvin", "val", header, [])
  _, bad = metadata.read_split(spec, path, "/d")
  assert len(bad) == 1 and bad[0].line == 1
  assert "unknown column(s) ['surprise']" in bad[0].reason
  spec, path = _write(tmp_path, "calvin", "val", ["dataset", "src_img"], [])
  _, bad = metadata.read_split(spec, path, "/d")
  assert "missing column(s)" in bad[0].reason and "tgt_img" in bad[0].reason


def test_classification_tolerates_extra_columns_and_checks_indices(tmp_path):
  header = ["dataset", "video_path", "action", "sample_indices", "task"]
  rows = [["SSv2", "SSv2/a.mp4", "push", "0,1,2,3,4,5,6,7,8", "t"],
          ["SSv2", "SSv2/b.mp4", "push", "0,1,2", "t"],
          ["SSv2", "SSv2/c.mp4", "push", "0,1,x,3,4,5,6,7,8", "t"]]
  spec, path = _write(tmp_path, "human_1st", "train", header, rows)
  good, bad = metadata.read_split(spec, path, "/d")
  assert [r.line for r in good] == [2]
  assert good[0].paths["video_path"] == "/d/classification/SSv2/a.mp4"
  assert [b.line for b in bad] == [3, 4]
  assert all("malformed sample_indices" in b.reason for b in bad)


def test_find_csvs_maps_upstream_split_names(tmp_path):
  spec = metadata.DATASETS["agibotbeta"]
  for split in ("seen_train", "seen_val", "unseen"):
    _write(tmp_path, "agibotbeta", split, list(spec.columns), [])
  found = metadata.find_csvs(spec, str(tmp_path / "metadata"))
  assert {k: os.path.basename(v) for k, v in found.items()} == {
      "train": "agibotbeta_metadata_seen_train.csv",
      "validation": "agibotbeta_metadata_seen_val.csv",
      "unseen": "agibotbeta_metadata_unseen.csv"}
  with pytest.raises(LaryError, match="no metadata CSV for calvin"):
    metadata.find_csvs(metadata.DATASETS["calvin"], str(tmp_path))


def test_resolve_datasets():
  names = lambda s, k=None: [x.name for x in metadata.resolve_datasets(s, k)]
  assert names("sim") == ["sim_classification", "sim_regression"]
  assert names("vlabench", 15) == ["vlabench_15"]
  assert names("calvin,robocoin") == ["calvin", "robocoin"]
  with pytest.raises(LaryError, match="unknown dataset 'calvn'"):
    names("calvn")
  with pytest.raises(LaryError, match="stride 5, not --stride 10"):
    names("calvin", 10)
  assert metadata.tfds_name(metadata.DATASETS["sim_regression"]) == (
      "lary_regression/sim")


def test_source_video_groups_upstream_clips_and_their_reversals():
  human = metadata.DATASETS["human_1st"]
  for path, source in (("SSv2/123_4.mp4", "SSv2/123"),
                       ("SSv2/123_4_rev.mp4", "SSv2/123"),
                       ("EgoDex/3279/12_0.mp4", "EgoDex/3279/12"),
                       ("Ego4D/clip.mp4", "Ego4D/clip")):
    assert metadata.source_video(human, path) == source
  sim = metadata.DATASETS["sim_classification"]
  path = "LARY-Sim/panda/wave/clip_000007.mp4"
  assert metadata.source_video(sim, path) == path
