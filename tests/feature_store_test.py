"""The feature store alone: shards, checksums, readers, upstream interop."""

import csv
import os
import pickle

import grain
import numpy as np
import pytest

from lary_jax import feature_store as fs
from lary_jax.errors import LaryError

SHAPE = (2, 3, 4)  # token shape of the synthetic stores


def _rows(n, seed=0):
  return np.random.default_rng(seed).normal(size=(n, *SHAPE)).astype(
      np.float16)


def _store(path, features, names, shards=((0, 2, 4), (1, 3, 5, 6))):
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


NAMES = [f"images/ep_1/frame_{i:06d}.png" for i in range(7)]


def test_a_whole_shard_verifies_and_any_damage_is_detected(tmp_path):
  features = _rows(3)
  sidecar = fs.write_shard(str(tmp_path), 4, 1, features, np.array([7, 8, 9]),
                           ["a", "b", "c"])
  stem = fs.shard_stem(4, 1)
  assert stem == "shard-00004-p001" and sidecar["shape"] == [3, *SHAPE]
  assert fs.verify_shard(str(tmp_path), stem) == (sidecar, "")
  np.testing.assert_array_equal(np.load(tmp_path / f"{stem}.npy"), features)
  data = tmp_path / f"{stem}.npy"
  blob = data.read_bytes()

  data.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))  # one flipped bit
  assert fs.verify_shard(str(tmp_path), stem) == (
      None, "checksum mismatch (corrupt)")
  data.write_bytes(blob[:100])
  assert "truncated" in fs.verify_shard(str(tmp_path), stem)[1]
  data.write_bytes(blob)
  (tmp_path / f"{stem}.json").write_text('{"file": ')  # killed mid-write
  assert fs.verify_shard(str(tmp_path), stem) == (None, "no readable sidecar")
  fs.remove_shard(str(tmp_path), stem)
  assert not os.listdir(tmp_path)


def test_temporaries_of_one_process_are_removed(tmp_path):
  for name in ("shard-00000-p000.npy.tmp", "shard-00000-p001.npy.tmp",
               "shard-00001-p000.json.tmp"):
    (tmp_path / name).write_bytes(b"x")
  fs.remove_temporaries(str(tmp_path), 0)
  assert os.listdir(tmp_path) == ["shard-00000-p001.npy.tmp"]


def test_manifest_needs_every_record_exactly_once(tmp_path):
  features = _rows(7)
  with pytest.raises(LaryError, match="1 of 7 records have no features"):
    _store(tmp_path / "a", features, NAMES, shards=((0, 1, 2), (3, 4, 5)))
  with pytest.raises(LaryError, match="has two rows"):
    _store(tmp_path / "b", features, NAMES,
           shards=((0, 1, 2, 3), (3, 4, 5, 6)))
  assert not os.path.exists(tmp_path / "a" / fs.MANIFEST)
  with pytest.raises(LaryError, match="no complete feature store"):
    fs.FeatureSource(str(tmp_path / "a"))


def test_rows_come_back_in_record_order_through_grain(tmp_path):
  features = _rows(7)
  manifest = _store(tmp_path, features, NAMES)
  assert manifest["identities"] == NAMES and manifest["num_rows"] == 7
  source = fs.FeatureSource(str(tmp_path))
  assert (len(source), source.token_shape, source.dtype) == (
      7, SHAPE, np.float16)
  np.testing.assert_array_equal(source.read_all(), features)
  batches = list(grain.MapDataset.source(source).batch(4))
  np.testing.assert_array_equal(batches[0]["features"], features[:4])
  np.testing.assert_array_equal(batches[1]["index"], [4, 5, 6])
  # grain workers receive the source pickled: no open memory maps travel.
  source.features(0)
  clone = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(clone[6]["features"], features[6])


def test_a_shard_damaged_after_the_manifest_is_never_read(tmp_path):
  features = _rows(7)
  _store(tmp_path, features, NAMES)
  data = tmp_path / "shard-00000-p001.npy"
  blob = bytearray(data.read_bytes())
  blob[-3] ^= 0x40
  data.write_bytes(bytes(blob))
  source = fs.FeatureSource(str(tmp_path))
  np.testing.assert_array_equal(source[2]["features"], features[2])  # p000
  with pytest.raises(LaryError, match="checksum differs"):
    source[3]  # pylint: disable=pointless-statement
  # Opting out of the check reads whatever the file holds.
  assert not np.array_equal(
      fs.FeatureSource(str(tmp_path), verify=False).read_all(), features)


def test_join_adds_record_keys_and_checks_identity(tmp_path):
  features = _rows(7)
  _store(tmp_path, features, NAMES)
  records = [{"src_path": n.encode(), "action": np.full((5, 7), i, np.float32),
              "src_image": b"png"} for i, n in enumerate(NAMES)]
  ds = fs.dataset(str(tmp_path), records, keys=("action",))
  row = ds[5]
  assert sorted(row) == ["action", "features", "index"]
  np.testing.assert_array_equal(row["features"], features[5])
  assert row["action"][0, 0] == 5 and row["index"] == 5
  records[2]["src_path"] = b"images/other.png"
  with pytest.raises(LaryError, match="record 2 is 'images/other.png'"):
    ds[2]  # pylint: disable=pointless-statement
  with pytest.raises(LaryError, match="7 feature rows for 6 records"):
    fs.dataset(str(tmp_path), records[:6])


def test_upstream_layout():
  assert fs.la_dir("/la", "calvin", "val", "dinov2") == (
      "/la/calvin/stride_5/val/dinov2")
  assert fs.la_dir("/la", "vlabench_30", "train", "m") == (
      "/la/vlabench_30/stride_30/train/m")
  assert fs.la_dir("/la", "agibotbeta", "seen_val", "m") == (
      "/la/agibotbeta/stride_45/seen_val/m")
  assert fs.la_dir("/la", "human_1st", "train", "m") == "/la/human_1st/m"
  assert fs.la_dir("/la", "libero", "val", "m") == "/la/libero/m"
  assert fs.la_dir("/la", "sim_regression", "val", "m") == (
      "/la/sim_regression/val/m")
  assert fs.la_csv_name("calvin", "val", "dinov2", 5) == (
      "val_la_calvin_5_dinov2.csv")
  assert fs.la_csv_name("robot_1st", "train", "m", None) == (
      "train_la_robot_1st_m.csv")
  assert [fs.upstream_split_name("robocoin", s)
          for s in ("train", "validation", "unseen")] == [
              "seen_train", "seen_val", "unseen"]
  assert fs.upstream_split_name("calvin", "validation") == "val"
  with pytest.raises(LaryError, match="split 'val'"):
    fs.upstream_split_name("calvin", "val")


def test_la_paths_resolve_as_upstream_and_never_leave_the_root(tmp_path):
  root = tmp_path / "la"
  (root / "calvin").mkdir(parents=True)
  kw = dict(dataset="calvin", split="val", model="dinov2")
  resolve = lambda v: fs.resolve_la_path(str(root), v, **kw)
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
  assert fs.match_rows(csv_ids, ["a", "b", "a", "c"], "f.csv") == [0, 1, 3, 4]
  with pytest.raises(LaryError, match="f.csv has no .* row for record 2"):
    fs.match_rows(csv_ids, ["a", "a", "a"], "f.csv")


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
  csv_out = fs.export_npz(str(tmp_path / "store"), str(la), str(meta),
                          identity_column="src_img", stride=5, **kw)
  assert csv_out == str(la / "val_la_calvin_5_dinov2.csv")
  with open(csv_out, newline="") as f:
    lines = list(csv.reader(f))
  assert lines[0] == ["dataset", "src_img", "tgt_img", "action", "la_path"]
  la_paths = [line[-1] for line in lines[1:]]
  assert la_paths[3] == "" and la_paths[4] == (
      "calvin/stride_5/val/dinov2/latent_action_00000003.npz")
  with np.load(la / la_paths[0]) as npz:
    assert npz.files == ["tokens"] and npz["tokens"].dtype == np.float32
    np.testing.assert_array_equal(npz["tokens"], features[0])

  fields = {"model": "dinov2", "identity_key": "src_path"}
  for identities in (names, None):  # joined by identity, or CSV order
    out = tmp_path / f"imported_{identities is None}"
    manifest = fs.import_npz(csv_out, str(la), str(out), identities=identities,
                             identity_column="src_img", fields=fields, **kw)
    assert manifest["token_shape"] == list(SHAPE)
    assert manifest["identities"] == names
    got = fs.FeatureSource(str(out)).read_all()
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, features)
  with pytest.raises(LaryError, match="already holds a complete store"):
    fs.import_npz(csv_out, str(la), str(out), identities=None,
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
    fs.import_npz(str(tmp_path / "la.csv"), str(la), str(tmp_path / "s"),
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
