"""Upstream's one-.npz-per-row layout: names, paths, export and import."""

import csv
import os

import numpy as np
import pytest

from lary_jax import feature_store as fs
from lary_jax import upstream_npz as npz
from lary_jax.errors import LaryError
from tfds_builders import metadata

SHAPE = (2, 3, 4)  # token shape of the synthetic stores
NAMES = [f"images/ep_1/frame_{i:06d}.png" for i in range(7)]


def _rows(n, seed=0):
  return np.random.default_rng(seed).normal(size=(n, *SHAPE)).astype(
      np.float16)


def _store(path, features, names, shards):
  """A complete store whose shards hold interleaved records (two processes)."""
  os.makedirs(path, exist_ok=True)
  for p, index in enumerate(shards):
    index = np.asarray(index)
    fs.write_shard(str(path), 0, p, features[index], index,
                   [names[i] for i in index])
  fields = {"model": "m", "dataset": "calvin", "split": "validation",
            "token_shape": list(SHAPE), "dtype": "float16",
            "identity_key": "src_path"}
  return fs.write_manifest(str(path), fields, len(features))


def test_upstream_layout():
  assert npz.la_dir("/la", "calvin", "val", "dinov2") == (
      "/la/calvin/stride_5/val/dinov2")
  assert npz.la_dir("/la", "vlabench_30", "train", "m") == (
      "/la/vlabench_30/stride_30/train/m")
  assert npz.la_dir("/la", "agibotbeta", "seen_val", "m") == (
      "/la/agibotbeta/stride_45/seen_val/m")
  assert npz.la_dir("/la", "human_1st", "train", "m") == "/la/human_1st/m"
  assert npz.la_dir("/la", "libero", "val", "m") == "/la/libero/m"
  assert npz.la_dir("/la", "sim_regression", "val", "m") == (
      "/la/sim_regression/val/m")
  assert npz.la_csv_name("calvin", "val", "dinov2", 5) == (
      "val_la_calvin_5_dinov2.csv")
  assert npz.la_csv_name("robot_1st", "train", "m", None) == (
      "train_la_robot_1st_m.csv")
  assert [npz.upstream_split_name("robocoin", s)
          for s in ("train", "validation", "unseen")] == [
              "seen_train", "seen_val", "unseen"]
  assert npz.upstream_split_name("calvin", "validation") == "val"
  with pytest.raises(LaryError, match="split 'val'"):
    npz.upstream_split_name("calvin", "val")


def test_la_paths_resolve_as_upstream_and_never_leave_the_root(tmp_path):
  root = tmp_path / "la"
  (root / "calvin").mkdir(parents=True)
  kw = dict(dataset="calvin", split="val", model="dinov2")
  resolve = lambda v: npz.resolve_la_path(str(root), v, **kw)
  real = os.path.realpath(root)
  assert resolve("latent_action_00000003.npz") == (
      f"{real}/calvin/stride_5/val/dinov2/latent_action_00000003.npz")
  assert resolve("calvin/x/a.npz") == f"{real}/calvin/x/a.npz"
  assert resolve(f"{root}/calvin/a.npz") == f"{real}/calvin/a.npz"
  os.symlink(tmp_path, root / "calvin" / "up")
  for value in ("../secret.npz", "calvin/../../secret.npz",
                str(tmp_path / "secret.npz"), "calvin/up/secret.npz"):
    with pytest.raises(LaryError, match="outside the LA root"):
      resolve(value)


def test_match_rows_follows_order_through_skips_and_repeats():
  csv_ids = ["a", "b", "x", "a", "c"]
  assert npz.match_rows(csv_ids, ["a", "b", "a", "c"], "f.csv") == [0, 1, 3, 4]
  with pytest.raises(LaryError, match="f.csv has no .* row for record 2"):
    npz.match_rows(csv_ids, ["a", "a", "a"], "f.csv")


def _metadata_csv(path, names):
  # Upstream's schema; row 3 was a bad row that prepare left out.
  with open(path, "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["dataset", "src_img", "tgt_img", "action"])
    for i, n in enumerate(names):
      w.writerow(["CALVIN", n, f"t{i}.png", f"a{i}.npy"])


def test_npz_export_then_import_is_exact(tmp_path):
  features = _rows(6)
  features[0, 0, 0, 0] = np.float16(60000)  # float16's range survives
  names = NAMES[:3] + NAMES[4:]
  _store(tmp_path / "store", features, names,
         shards=((0, 2, 4), (1, 3, 5)))
  meta = tmp_path / "calvin_metadata_val.csv"
  _metadata_csv(meta, NAMES)
  la = tmp_path / "la"
  kw = dict(dataset="calvin", split="val", model="dinov2")
  csv_out = npz.export_npz(str(tmp_path / "store"), str(la), str(meta),
                           identity_column="src_img", stride=5, **kw)
  assert csv_out == str(la / "val_la_calvin_5_dinov2.csv")
  with open(csv_out, newline="") as f:
    lines = list(csv.reader(f))
  assert lines[0] == ["dataset", "src_img", "tgt_img", "action", "la_path"]
  la_paths = [line[-1] for line in lines[1:]]
  assert la_paths[3] == "" and la_paths[4] == (
      "calvin/stride_5/val/dinov2/latent_action_00000003.npz")
  with np.load(la / la_paths[0]) as archive:
    assert archive.files == ["tokens"]
    assert archive["tokens"].dtype == np.float32
    np.testing.assert_array_equal(archive["tokens"], features[0])

  fields = {"model": "dinov2", "identity_key": "src_path"}
  for identities in (names, None):  # joined by identity, or CSV order
    out = tmp_path / f"imported_{identities is None}"
    manifest = npz.import_npz(csv_out, str(la), str(out),
                              identities=identities,
                              identity_column="src_img", fields=fields, **kw)
    assert manifest["token_shape"] == list(SHAPE)
    assert manifest["identities"] == names
    got = fs.FeatureSource(str(out)).read_all()
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, features)
  with pytest.raises(LaryError, match="already holds a complete store"):
    npz.import_npz(csv_out, str(la), str(out), identities=None,
                   identity_column="src_img", fields=fields, **kw)


def _la_csv(path, values):
  with open(path, "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["src_img", "la_path"])
    w.writerows([f"img{i}.png", v] for i, v in enumerate(values))


@pytest.mark.parametrize("case,message", [
    ("pickle", "cannot read .* Object arrays cannot be loaded"),
    ("no_tokens", "has no key 'tokens'"),
    ("shape", r"tokens of shape \(3,\), earlier rows \(2,\)"),
    ("escape", "outside the LA root"),
    ("missing", "cannot read .*FileNotFoundError"),
    ("overflow", "beyond float16"),
])
def test_import_refuses_bad_files(tmp_path, case, message):
  la = tmp_path / "la"
  la.mkdir()
  np.savez(la / "a.npz", tokens=np.zeros(2, np.float32))
  bad = {
      "pickle": lambda p: np.savez(p, tokens=np.array([{}, 1], object)),
      "no_tokens": lambda p: np.savez(p, features=np.zeros(2)),
      "shape": lambda p: np.savez(p, tokens=np.zeros(3)),
      "overflow": lambda p: np.savez(p, tokens=np.array([1e5, 0.0])),
  }
  second = {"escape": "../a.npz", "missing": "nothing.npz"}.get(
      case, str(la / "b.npz"))
  if case in bad:
    bad[case](la / "b.npz")
  _la_csv(tmp_path / "la.csv", [str(la / "a.npz"), second])
  with pytest.raises(LaryError, match=message) as e:
    npz.import_npz(str(tmp_path / "la.csv"), str(la), str(tmp_path / "s"),
                   dataset="calvin", split="val", model="m",
                   identity_column="src_img", fields={}, identities=None)
  assert "la.csv:3" in str(e.value)  # names the CSV line


def test_float16_storage_is_correct_rounding_or_an_error():
  x = np.array([[1.0, 1 + 2**-12, 3.14159, 65504.0]], np.float32)
  np.testing.assert_array_equal(fs.cast_rows(x, np.dtype(np.float16), "r"),
                                x.astype(np.float16))
  with pytest.raises(LaryError, match="r: features reach 7e\\+04"):
    fs.cast_rows(np.array([70000.0]), np.dtype(np.float16), "r")
  with pytest.raises(LaryError, match="reach nan"):
    fs.cast_rows(np.array([np.nan]), np.dtype(np.float16), "r")
  assert fs.cast_rows(np.array([70000.0]), np.dtype(np.float32), "r")[0] == (
      70000)


def test_export_split_numbers_splitless_datasets_on_through_the_splits(
    tmp_path):
  # Human_1st keeps every split in one LA folder: validation's files come
  # after train's 9 and the CSV is found in <data_dir>/metadata.
  spec = metadata.DATASETS["human_1st"]
  clips = [f"SSv2/val/{i}.mp4" for i in range(3)]
  _store(tmp_path / "store", _rows(3), clips, shards=((0, 1, 2),))
  meta_dir = tmp_path / "data" / "metadata"
  meta_dir.mkdir(parents=True)
  with open(meta_dir / spec.csv_name("val"), "w", newline="") as f:
    csv.writer(f, lineterminator="\n").writerows(
        [["dataset", "video_path", "action"]] +
        [["SSv2", c, "open the drawer"] for c in clips])
  la = tmp_path / "la"
  csv_out = npz.export_split(
      str(tmp_path / "store"), str(la), spec, "validation", model="m",
      split_sizes={"train": 9, "validation": 3},
      data_dir=str(tmp_path / "data"))
  assert csv_out == str(la / "val_la_human_1st_m.csv")
  with open(csv_out, newline="") as f:
    assert [r["la_path"] for r in csv.DictReader(f)] == [
        f"human_1st/m/latent_action_{i:08d}.npz" for i in (9, 10, 11)]
  assert npz.identity_column(spec.kind) == "video_path"
  with pytest.raises(LaryError, match="pass --csv, --metadata_dir or "
                     "--data_dir"):
    npz.export_split(str(tmp_path / "store"), str(la), spec, "train",
                     model="m", split_sizes={})
