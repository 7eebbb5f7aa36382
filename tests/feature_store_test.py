"""The feature store alone: shards, checksums, readers."""

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


def _records(n):
  return [{"src_path": f"images/ep_1/frame_{i:06d}.png".encode(),
           "label": i % 3} for i in range(n)]


def test_writer_resumes_and_writes_what_extract_writes(tmp_path):
  store, records = str(tmp_path / "store"), _records(7)
  rows = _rows(7)
  writer = fs.Writer(store, records, mode="image", model="mine",
                     dataset="calvin", split="validation", rows_per_shard=3)
  assert writer.todo == [range(0, 3), range(3, 6), range(6, 7)]
  writer.write(0, rows[:4])  # shard 0 complete, shard 1 started ...
  del writer  # ... and the run dies
  assert fs.verify_shard(store, "shard-00000-p000")[0] is not None
  again = fs.Writer(store, records, mode="image", model="mine",
                    dataset="calvin", split="validation", rows_per_shard=3)
  assert again.todo == [range(3, 6), range(6, 7)]
  # Rows of the finished shard are skipped, not written twice.
  again.write(0, rows[:2].astype(np.float32) + 1)
  for start in (6, 3):
    again.write(start, rows[start:start + 3], identities=[
        records[i]["src_path"] for i in range(start, min(start + 3, 7))])
  manifest = again.close()
  assert manifest["identities"] == [r["src_path"].decode() for r in records]
  assert (manifest["mode"], manifest["identity_key"], manifest["dtype"]) == (
      "image", "src_path", "float16")
  assert manifest["token_shape"] == list(SHAPE)
  got = fs.dataset(store, records, keys=("label",))
  for i in range(7):
    np.testing.assert_array_equal(got[i]["features"], rows[i])
    assert got[i]["label"] == i % 3
  # A shard damaged later is redone, and the store is not complete till then.
  with open(os.path.join(store, "shard-00001-p000.npy"), "r+b") as f:
    f.seek(-1, os.SEEK_END)
    f.write(b"\x01")
  damaged = fs.Writer(store, records, mode="image", model="mine",
                      dataset="calvin", split="validation", rows_per_shard=3)
  assert damaged.todo == [range(3, 6)]
  assert not os.path.exists(os.path.join(store, fs.MANIFEST))


def test_writer_refuses_what_would_misalign_the_store(tmp_path):
  store, records = str(tmp_path / "store"), _records(5)

  def open_writer(**kw):
    return fs.Writer(store, records, **{
        "mode": "image", "model": "mine", "dataset": "calvin",
        "split": "validation", "rows_per_shard": 2, **kw})

  writer = open_writer()
  with pytest.raises(LaryError, match="row 1 was computed from 'x.png', but "
                     "record 1 is 'images/ep_1/frame_000001.png'"):
    writer.write(0, _rows(2), identities=[records[0]["src_path"], "x.png"])
  writer.write(0, _rows(2))
  with pytest.raises(LaryError, match=r"rows of shape \[5\], but the store "
                     r"holds \[2, 3, 4\]"):
    writer.write(2, np.zeros((2, 5)))
  with pytest.raises(LaryError, match="outside the split's records 0..4"):
    writer.write(4, _rows(2))
  with pytest.raises(LaryError, match="beyond float16's"):
    writer.write(2, np.full((1, *SHAPE), 1e6))
  writer.write(2, _rows(1))
  with pytest.raises(LaryError, match="given twice"):
    writer.write(2, _rows(1))
  with pytest.raises(LaryError, match="3 of 5 records have no features yet"):
    writer.close()
  with pytest.raises(LaryError, match=r"other settings \(dtype"):
    open_writer(dtype="float32")
  with pytest.raises(LaryError, match="mode 'audio'"):
    open_writer(mode="audio")
