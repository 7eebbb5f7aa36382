"""Tests for lary_jax.data.pipeline on small in-memory splits."""

import logging

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lary_jax import mesh as mesh_lib
from lary_jax.data import normalize
from lary_jax.data import pipeline as pl
from lary_jax.errors import LaryError
from tests.data import fake_records as fr

S = fr.IMAGE_SIZE
CLIP_TRANSFORMS = (pl.DecodeFrames(image_size=S),)
CLIP_KEYS = ("frames", "label")


def _stats(dim=4):
  return normalize.ActionStats.from_metadata({
      "group_by": "robot_type",
      "absolute": {
          "a": {"mean": [1.0] * dim, "std": [2.0] * dim, "count": 9},
          "": {"mean": [-1.0] * dim, "std": [0.5] * dim, "count": 9},
      },
  }, "absolute")


def _batches(ds):
  return [ds[i] for i in range(len(ds))]


def _order(ds):
  return np.concatenate([b["index"] for b in _batches(ds)])


# ------------------------------------------------------------------ transforms


def test_decode_frames_and_pair_return_the_stored_pixels():
  clip = fr.classification_records([5])[0] | {"index": 0}
  frames = pl.DecodeFrames(image_size=S).map(clip)["frames"]
  assert frames.dtype == np.uint8 and frames.shape == (9, S, S, 3)
  np.testing.assert_array_equal(frames[4], fr.pixels(0, 4))
  # Another stored view decodes into the key the batch reads.
  view = clip | {"frames_view": clip["frames"][::-1]}
  out = pl.DecodeFrames(key="frames_view", image_size=S,
                        out_key="frames").map(view)
  np.testing.assert_array_equal(out["frames"], frames[::-1])

  pair = fr.regression_records(1)[0] | {"index": 0}
  out = pl.DecodePair(image_size=S).map(pair)
  assert "src_image" not in out and "tgt_image" not in out
  assert out["images"].shape == (2, S, S, 3)
  np.testing.assert_array_equal(out["images"][1], fr.pixels(0, 1))


@pytest.fixture
def counted_decodes(monkeypatch):
  """The encoded frames decoded from here on, with an empty frame store."""
  pl.DECODED_FRAMES.clear()
  decoded = []
  real = pl.images.decode_image
  monkeypatch.setattr(pl.images, "decode_image",
                      lambda data: decoded.append(data) or real(data))
  yield decoded
  pl.DECODED_FRAMES.clear()


def test_decode_pair_cache_decodes_each_frame_once(counted_decodes):
  pairs = [r | {"index": i} for i, r in enumerate(fr.regression_records(3))]
  plain = [pl.DecodePair(image_size=S).map(p)["images"] for p in pairs]
  counted_decodes.clear()
  frame_mb = S * S * 3 / 2**20
  cached = pl.DecodePair(image_size=S, cache_mb=100 * frame_mb)
  for _ in range(3):  # three epochs
    for p, want in zip(pairs, plain):
      np.testing.assert_array_equal(cached.map(p)["images"], want)
  assert len(counted_decodes) == len({p[k] for p in pairs
                                      for k in ("src_image", "tgt_image")})
  # Over its budget it keeps what fits and decodes the rest each time.
  pl.DECODED_FRAMES.clear()
  counted_decodes.clear()
  small = pl.DecodePair(image_size=S, cache_mb=1.5 * frame_mb)
  for _ in range(2):
    for p in pairs:
      small.map(p)
  assert len(counted_decodes) == 2 * 2 * len(pairs) - 1
  assert pl.DECODED_FRAMES.nbytes == S * S * 3


def test_decoded_frames_are_shared_by_every_transform(counted_decodes):
  """What one transform decoded (a LAM's pairs, the first model's clips), the
  next reads without decoding: the same read-only arrays."""
  clip = fr.classification_records([0])[0] | {"index": 0}
  want = pl.DecodeFrames(image_size=S).map(clip)["frames"]
  pair = {"index": 0, "src_image": clip["frames"][2],
          "tgt_image": clip["frames"][5]}
  counted_decodes.clear()
  first = pl.DecodeFrames(image_size=S, cache_mb=64).map(clip)["frames"]
  assert len(counted_decodes) == len(clip["frames"])
  again = pl.DecodeFrames(key="frames", out_key="other", image_size=S,
                          cache_mb=64).map(clip)["other"]
  images = pl.DecodePair(image_size=S, cache_mb=64).map(pair)["images"]
  assert len(counted_decodes) == len(clip["frames"])  # nothing decoded again
  np.testing.assert_array_equal(first, want)
  np.testing.assert_array_equal(again, want)
  np.testing.assert_array_equal(images, want[[2, 5]])
  # A transform without a budget neither reads nor fills the store.
  pl.DecodeFrames(image_size=S).map(clip)
  assert len(counted_decodes) == 2 * len(clip["frames"])
  # A kept frame of another size gives the error a decode gives.
  with pytest.raises(LaryError, match="expected \\(224, 224, 3\\)"):
    pl.DecodeFrames(image_size=224, cache_mb=64).map(clip)


def test_decode_rejects_bad_images_naming_the_record():
  clip = fr.classification_records([0])[0] | {"index": 7}
  pair = fr.regression_records(1)[0] | {"index": 3, "tgt_image": b"GIF89a"}
  with pytest.raises(LaryError, match="record 3: cannot decode .*'tgt_image'"):
    pl.DecodePair(image_size=S).map(pair)
  with pytest.raises(LaryError, match="record 7.*expected \\(224, 224, 3\\)"):
    pl.DecodeFrames().map(clip)
  with pytest.raises(LaryError, match="holds 9 frames, expected 16"):
    pl.DecodeFrames(num_frames=16, image_size=S).map(clip)


def test_action_target_normalises_by_robot_type(caplog):
  stats = _stats()
  rows = fr.regression_records(3, stride=3, dim=4)  # robot types a, b, ""
  absolute = pl.ActionTarget(stats)
  out = absolute.map(rows[0] | {"index": 0})
  assert out["action"].dtype == np.float32 and out["action"].shape == (3, 4)
  np.testing.assert_allclose(out["action"], (rows[0]["action"] - 1.0) / 2.0,
                             rtol=1e-6)
  np.testing.assert_array_equal(out["action_raw"], rows[0]["action"])
  out = absolute.map(rows[2] | {"index": 2})  # empty robot_type: group ""
  np.testing.assert_allclose(out["action"], (rows[2]["action"] + 1.0) / 0.5,
                             rtol=1e-6)

  relative = pl.ActionTarget(_stats(), relative=True)
  with caplog.at_level(logging.WARNING):
    for _ in range(3):
      out = relative.map(rows[1] | {"index": 1})  # "b" has no stats
  want = rows[1]["action"][-1:] - rows[1]["action"][:1]
  assert out["action"].shape == (1, 4)
  np.testing.assert_allclose(out["action"], want, rtol=1e-6)  # mean 0, std 1
  warnings = [r for r in caplog.records if "'b'" in r.getMessage()]
  assert len(warnings) == 1


def test_select_keys_keeps_numbers_and_refuses_strings():
  clip = fr.classification_records([3])[0] | {"index": 0, "_mask": True}
  out = pl.SelectKeys(("label",)).map(clip)
  assert sorted(out) == ["_mask", "index", "label"]
  with pytest.raises(LaryError, match="key 'action' holds .*numeric"):
    pl.SelectKeys(("action",)).map(clip)
  with pytest.raises(LaryError, match="no key 'robot_type'"):
    pl.SelectKeys(("robot_type",)).map(clip)


# ---------------------------------------------------------------- train order


def _index_source(n):
  return [{"label": i % 3} for i in range(n)]


def _train_order(n, seed, epochs, batch=8, **kw):
  ds = pl.train_dataset(_index_source(n), (), (), global_batch=batch,
                        seed=seed, num_epochs=epochs, process_index=0,
                        process_count=1, **kw)
  return _order(ds)


def test_shuffle_is_deterministic_and_new_every_epoch():
  n = 40
  order = _train_order(n, seed=3, epochs=3)
  assert len(order) == 3 * n
  np.testing.assert_array_equal(order, _train_order(n, seed=3, epochs=3))
  epochs = order.reshape(3, n)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[1], epochs[2])
  other = _train_order(n, seed=4, epochs=3).reshape(3, n)
  assert not np.array_equal(other[0], epochs[0])
  # Neighbouring seeds must not replay each other's epochs shifted by one.
  assert not np.array_equal(other[0], epochs[1])


def test_partial_last_global_batch_is_dropped():
  assert len(_train_order(23, seed=0, epochs=1)) == 16
  assert len(_train_order(23, seed=0, epochs=2)) == 40


def test_balanced_sampling_is_uniform_over_classes():
  sizes = np.array([2, 5, 20, 60, 153])  # 240 records, 76x skew
  labels = np.repeat(np.arange(5), sizes)
  epochs = 40
  draws = _train_order(len(labels), seed=1, epochs=epochs, labels=labels)
  assert len(draws) == epochs * len(labels)
  total = len(draws)
  per_class = np.bincount(labels[draws], minlength=5)
  # Binomial(total, 1/5): 5 standard deviations.
  bound = 5 * np.sqrt(total * 0.2 * 0.8)
  np.testing.assert_array_less(np.abs(per_class - total / 5), bound)
  # Members of a class are equally likely: the 2 records of class 0 ...
  smallest = np.bincount(draws[labels[draws] == 0], minlength=2)[:2]
  half = per_class[0] / 2
  assert abs(smallest[0] - half) < 5 * np.sqrt(per_class[0] * 0.25)
  # ... and every record of the largest class is drawn at all.
  assert len(np.unique(draws[labels[draws] == 4])) == 153
  # Deterministic in (seed, position), different for another seed.
  np.testing.assert_array_equal(
      draws, _train_order(len(labels), seed=1, epochs=epochs, labels=labels))
  other = _train_order(len(labels), seed=2, epochs=1, labels=labels)
  assert not np.array_equal(other, draws[:len(other)])


def test_balanced_sampling_needs_one_label_per_record():
  with pytest.raises(LaryError, match="5 labels for 6 records"):
    pl.train_dataset(_index_source(6), (), (), global_batch=2, seed=0,
                     labels=np.zeros(5), process_index=0, process_count=1)


def test_global_batch_does_not_depend_on_process_count():
  labels = np.arange(30) % 4
  for balanced in (None, labels):
    src = fr.classification_records(labels)
    reference = None
    for count in (1, 2, 4):
      sources = [fr.RecordingSource(src) for _ in range(count)]
      per_process = [
          _batches(pl.train_dataset(
              sources[p], CLIP_TRANSFORMS, CLIP_KEYS, global_batch=8, seed=5,
              num_epochs=2, labels=balanced, process_index=p,
              process_count=count)) for p in range(count)
      ]
      steps = {len(b) for b in per_process}
      assert steps == {7}  # floor(60 / 8)
      glued = [{k: np.concatenate([per_process[p][s][k] for p in range(count)])
                for k in per_process[0][s]} for s in range(7)]
      if reference is None:
        reference = glued
      for got, want in zip(glued, reference):
        for key in want:
          np.testing.assert_array_equal(got[key], want[key], err_msg=key)
      # A process reads exactly the records of its own rows, nothing else.
      for p in range(count):
        mine = np.concatenate([b["index"] for b in per_process[p]])
        np.testing.assert_array_equal(np.sort(sources[p].reads),
                                      np.sort(mine))


def test_train_arguments_are_checked():
  with pytest.raises(LaryError, match="multiple of the process count 3"):
    pl.train_dataset(_index_source(9), (), (), global_batch=8, seed=0,
                     process_index=0, process_count=3)
  with pytest.raises(LaryError, match="process_index 2 is outside \\[0, 2\\)"):
    pl.train_dataset(_index_source(9), (), (), global_batch=8, seed=0,
                     process_index=2, process_count=2)
  with pytest.raises(LaryError, match="seed -1"):
    pl.train_dataset(_index_source(9), (), (), global_batch=8, seed=-1,
                     process_index=0, process_count=1)
  with pytest.raises(LaryError, match="split has no records"):
    pl.eval_dataset([], (), (), global_batch=8, process_index=0,
                    process_count=1)


# -------------------------------------------------------------------- eval


@pytest.mark.parametrize("count", [1, 2, 4])
def test_eval_covers_every_record_once_with_masks(count):
  n, batch = 23, 8
  src = fr.classification_records(np.arange(n) % 5)
  per_process = [
      _batches(pl.eval_dataset(src, CLIP_TRANSFORMS, CLIP_KEYS,
                               global_batch=batch, process_index=p,
                               process_count=count)) for p in range(count)
  ]
  assert [len(b) for b in per_process] == [pl.eval_steps(n, batch)] * count
  assert pl.eval_steps(n, batch) == 3
  index = np.concatenate([np.concatenate([s["index"] for s in b])
                          for b in per_process])
  mask = np.concatenate([np.concatenate([s["_mask"] for s in b])
                         for b in per_process])
  assert len(index) == 24 and mask.sum() == n
  np.testing.assert_array_equal(np.sort(index[mask]), np.arange(n))
  # Rows line up with their records, pads included.
  for b in per_process:
    for s in b:
      for row, i in enumerate(s["index"]):
        np.testing.assert_array_equal(s["frames"][row, 2], fr.pixels(i, 2))
        assert s["label"][row] == i % 5
  # Same global batches as one process reading everything, in split order.
  glued = [np.concatenate([per_process[p][s]["index"] for p in range(count)])
           for s in range(3)]
  np.testing.assert_array_equal(np.concatenate(glued),
                                np.r_[np.arange(n), 0])


# ------------------------------------------------------- iterators and state


def _take(it, k):
  return [next(it) for _ in range(k)]


def _assert_same(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert sorted(g) == sorted(w)
    for key in w:
      np.testing.assert_array_equal(g[key], w[key], err_msg=key)


def _clip_train(labels=None, epochs=None):
  src = fr.classification_records(np.arange(20) % 4)
  return pl.train_dataset(src, CLIP_TRANSFORMS, CLIP_KEYS, global_batch=6,
                          seed=11, num_epochs=epochs, labels=labels,
                          process_index=0, process_count=1)


@pytest.mark.parametrize("balanced", [False, True])
def test_resumed_iterator_continues_where_it_stopped(balanced):
  labels = np.arange(20) % 4 if balanced else None
  it = pl.make_iterator(_clip_train(labels))
  _take(it, 2)  # mid-epoch: 12 of 20 records
  state = it.get_state()
  want = _take(it, 5)  # crosses into the next epochs

  resumed = pl.make_iterator(_clip_train(labels))
  resumed.set_state(state)
  _assert_same(_take(resumed, 5), want)


def test_resume_through_orbax_checkpoint_manager(tmp_path):
  it = pl.make_iterator(_clip_train())
  _take(it, 3)
  with ocp.CheckpointManager(tmp_path) as manager:
    manager.save(3, args=grain.checkpoint.CheckpointSave(it))
    manager.wait_until_finished()
  want = _take(it, 4)

  resumed = pl.make_iterator(_clip_train())
  with ocp.CheckpointManager(tmp_path) as manager:
    manager.restore(3, args=grain.checkpoint.CheckpointRestore(resumed))
  _assert_same(_take(resumed, 4), want)


def test_output_equal_after_checkpoint_at_every_step():
  src = fr.classification_records(np.arange(13) % 4)
  ds = pl.eval_dataset(src, CLIP_TRANSFORMS, CLIP_KEYS, global_batch=4,
                       process_index=0, process_count=1)
  grain.experimental.assert_equal_output_after_checkpoint(
      ds.to_iter_dataset())


def test_worker_processes_give_the_same_batches():
  rows = fr.regression_records(30)
  transforms = (pl.DecodePair(image_size=S), pl.ActionTarget(_stats()))
  ds = pl.train_dataset(rows, transforms, ("images", "action"),
                        global_batch=4, seed=2, process_index=0,
                        process_count=1)
  want = _take(pl.make_iterator(ds), 9)
  it = pl.make_iterator(ds, worker_count=2)
  got = _take(it, 4)
  state = it.get_state()
  it.close()
  _assert_same(got, want[:4])
  resumed = pl.make_iterator(ds, worker_count=2)
  resumed.set_state(state)
  got = _take(resumed, 5)
  resumed.close()
  _assert_same(got, want[4:])
  np.testing.assert_array_equal(got[0]["images"][0, 1],
                                fr.pixels(int(got[0]["index"][0]), 1))


# --------------------------------------------------------------- to device


def test_to_device_keeps_uint8_and_converts_on_device():
  src = fr.classification_records(np.arange(8) % 2)
  ds = pl.eval_dataset(src, CLIP_TRANSFORMS, CLIP_KEYS, global_batch=4,
                       process_index=0, process_count=1)
  local = ds[1]
  mesh = mesh_lib.make_mesh()
  batch = pl.to_device(local, mesh)
  assert batch["frames"].dtype == np.uint8
  assert batch["frames"].shape == (4, 9, S, S, 3)
  assert batch["frames"].sharding.spec == jax.sharding.PartitionSpec("data")
  np.testing.assert_array_equal(np.asarray(batch["index"]), [4, 5, 6, 7])
  images = pl.images_to_float(batch["frames"])
  assert images.dtype == np.float32
  np.testing.assert_allclose(np.asarray(images),
                             local["frames"].astype(np.float32) / 255.0,
                             rtol=1e-7)
  assert float(images.max()) <= 1.0 and float(images.min()) >= 0.0
