"""End to end: render LARY-Sim and check layout, contents, determinism, resume.

The tiny preset is rendered once for the structure checks; the determinism
and resume checks use an even smaller private size.
"""

import csv
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from lary_jax.data import video
from lary_jax.errors import LaryError
from lary_jax.sim import camera
from lary_jax.sim import layout
from lary_jax.sim import render

SMALL = layout.Sizes(classes=("lift_up",),
                     clips_per_class=(1, 1, 1), episodes=(1, 0, 1))


def _small(out, seed=0, workers=1):
  return render._simulate(str(out), SMALL, tiny=False, seed=seed,
                          num_workers=workers, progress=False)


def _files(root) -> dict[str, bytes]:
  out = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def _mtimes(root) -> dict[str, int]:
  return {rel: os.stat(os.path.join(root, rel)).st_mtime_ns
          for rel in _files(root)}


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  out = tmp_path_factory.mktemp("tiny")
  summary = render.simulate(str(out), tiny=True, num_workers=2,
                            progress=False)
  return str(out), summary


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  root = tmp_path_factory.mktemp("small")
  summaries = {"a": _small(root / "a", 0, workers=1),
               "b": _small(root / "b", 0, workers=2),
               "c": _small(root / "c", 1, workers=1)}
  return root, summaries


def test_tiny_layout_and_csvs(tiny):
  out, summary = tiny
  assert summary["tiny"] and summary["seed"] == 0
  assert summary["rendered"] == {"clips": 48, "episodes": 5}
  assert len(summary["classes"]) >= 10
  assert summary["counts"]["classification"] == {
      "seen_train": 24, "seen_val": 12, "unseen": 12}
  files = _files(out)
  assert not [f for f in files if os.path.basename(f).startswith(".")]
  meta = os.path.join(out, "metadata")
  for split in layout.SPLITS:
    raw = files[f"metadata/sim_classification_metadata_{split}.csv"]
    assert raw.startswith(b"dataset,video_path,action,state_path\n")
    assert b"\r" not in raw
    rows = _read_csv(os.path.join(meta, layout.csv_name("classification",
                                                         split)))[1:]
    assert len(rows) == summary["counts"]["classification"][split]
    assert {r[2] for r in rows} == set(summary["classes"])
    for dataset, path, action, state_path in rows:
      assert path.startswith(f"LARY-Sim/{dataset.split('-')[-1]}/{action}/")
      assert f"classification/{path}" in files
      states = np.load(os.path.join(out, "classification", state_path))
      assert states.shape == (layout.TINY_SIZES.frames_per_clip,
                              len(layout.STATE_DIMS))
    raw = files[f"metadata/sim_regression_metadata_{split}.csv"]
    assert raw.startswith(b"dataset,type,perspective,src_img,src_state,"
                          b"tgt_img,tgt_state,action\n")
    rows = _read_csv(os.path.join(meta, layout.csv_name("regression",
                                                         split)))[1:]
    assert len(rows) == summary["counts"]["regression"][split]["rows"] > 0
    for row in rows:
      assert row[:3] == ["LARY-Sim", "robot", "3rd"]
      for rel in row[3:]:
        assert f"regression/lary_sim/{rel}" in files
  # Episode ids are unique across splits.
  eps = [{r[3].split("/")[1] for r in _read_csv(os.path.join(
      meta, layout.csv_name("regression", s)))[1:]} for s in layout.SPLITS]
  assert sum(map(len, eps)) == len(set.union(*eps)) == 5
  assert "LARY_SIM.json" in files and layout.PARTIAL_FILE not in files


def test_tiny_videos_decode(tiny):
  out, _ = tiny
  paths = [r[1] for s in layout.SPLITS for r in _read_csv(os.path.join(
      out, "metadata", layout.csv_name("classification", s)))[1:]]
  for path in paths:
    frames = video.read_video(os.path.join(out, "classification", path))
    side = camera.IMAGE_SIZE
    assert frames.shape == (24, side, side, 3) and frames.dtype == np.uint8
  # Something moves in every clip (the gripper classes move the least).
  frames = video.read_video(os.path.join(out, "classification", paths[0]))
  assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 0.2


def test_tiny_regression_arrays(tiny):
  out, _ = tiny
  root = os.path.join(out, "regression", "lary_sim")
  reached = []
  for split in layout.SPLITS:
    for row in _read_csv(os.path.join(out, "metadata", layout.csv_name(
        "regression", split)))[1:]:
      src_img, src_state, tgt_img, tgt_state, action = (
          os.path.join(root, r) for r in row[3:])
      a = np.load(action)
      s0, s1 = np.load(src_state), np.load(tgt_state)
      assert a.shape == (5, 7) and a.dtype == np.float32
      assert s0.shape == s1.shape == (15,) and s0.dtype == np.float32
      assert np.isin(a[:, 6], [-1.0, 1.0]).all()
      assert np.isin(s1[14], [-1.0, 1.0]) and s1[14] == a[-1, 6]
      reached.append(np.linalg.norm(s1[:3] - a[-1, :3]))
      for img in (src_img, tgt_img):
        with Image.open(img) as im:
          assert im.size == (camera.IMAGE_SIZE,) * 2 and im.mode == "RGB"
  # The lagging controller ends a chunk near its last command.
  assert np.median(reached) < 0.02 and max(reached) < 0.08


def test_arm_split(tiny):
  out, _ = tiny
  meta = os.path.join(out, "metadata")
  for split in layout.SPLITS:
    arm = "iiwa" if split == "unseen" else "panda"
    rows = _read_csv(os.path.join(meta, layout.csv_name("classification",
                                                         split)))[1:]
    assert {r[0] for r in rows} == {f"LARY-Sim-{arm}"}
    assert all(r[1].startswith(f"LARY-Sim/{arm}/") for r in rows)
  assert sorted(os.listdir(os.path.join(out, "classification", "LARY-Sim"))
                ) == ["iiwa", "panda"]
  # The gripper widths tell the arms apart in the regression states: the
  # Panda opens to 8 cm, the iiwa's fingertips never close below 4 cm.
  root = os.path.join(out, "regression", "lary_sim")
  for split in layout.SPLITS:
    widths = np.array([np.load(os.path.join(root, r[4]))[6] for r in _read_csv(
        os.path.join(meta, layout.csv_name("regression", split)))[1:]])
    if split == "unseen":
      assert widths.min() > 0.035 and widths.max() > 0.1
    else:
      assert widths.max() < 0.081


def test_same_seed_same_bytes_other_seed_other_bytes(small):
  root, summaries = small
  a, b, c = (_files(root / k) for k in "abc")
  assert summaries["a"]["rendered"] == {"clips": 3, "episodes": 2}
  # One worker in-process and two spawned workers give the same bytes:
  # CSVs, .npy, PNGs, mp4s and LARY_SIM.json.
  assert sorted(a) == sorted(b)
  assert [k for k in a if a[k] != b[k]] == []
  assert {os.path.splitext(k)[1] for k in a} == {".csv", ".mp4", ".npy",
                                                 ".png", ".json"}
  assert a["metadata/sim_regression_metadata_seen_val.csv"] == (
      b"dataset,type,perspective,src_img,src_state,tgt_img,tgt_state,"
      b"action\n")
  for kind in (".mp4", ".npy", ".png"):
    common = [k for k in a if k.endswith(kind) and k in c]
    assert common and all(a[k] != c[k] for k in common), kind


def test_resume_renders_only_what_is_missing(small):
  root, _ = small
  ref = _files(root / "a")
  work = root / "resume"
  shutil.copytree(root / "a", work)
  clip = "classification/LARY-Sim/panda/lift_up/clip_000001.mp4"
  png = "regression/lary_sim/images/ep_1/frame_000010.png"
  os.remove(work / clip)
  os.remove(work / png)
  before = _mtimes(work)
  summary = _small(work)
  assert summary["rendered"] == {"clips": 1, "episodes": 1}
  assert _files(work) == ref
  after = _mtimes(work)
  assert [k for k in before if before[k] != after[k]] == []
  # A complete dataset is a no-op.
  summary = _small(work)
  assert summary["rendered"] == {"clips": 0, "episodes": 0}
  assert _mtimes(work) == after


def test_interrupted_run_is_incomplete_then_finishes(small, tmp_path,
                                                     monkeypatch):
  root, _ = small
  calls = []
  real = render._render_clip

  def crash_on_second(plan, out):
    calls.append(plan.clip_id)
    if len(calls) == 2:
      raise KeyboardInterrupt
    real(plan, out)

  monkeypatch.setattr(render, "_render_clip", crash_on_second)
  with pytest.raises(KeyboardInterrupt):
    _small(tmp_path)
  assert not (tmp_path / "LARY_SIM.json").exists()
  assert (tmp_path / layout.PARTIAL_FILE).exists()
  monkeypatch.setattr(render, "_render_clip", real)
  summary = _small(tmp_path)
  assert summary["rendered"] == {"clips": 2, "episodes": 0}
  assert _files(tmp_path) == _files(root / "a")


def test_refuses_to_mix_seeds(small, tmp_path):
  root, _ = small
  shutil.copytree(root / "a", tmp_path / "a")
  with pytest.raises(LaryError, match="seed"):
    _small(tmp_path / "a", seed=1)
  with pytest.raises(LaryError, match="seed"):
    render.simulate(str(tmp_path / "a"), tiny=True, progress=False)


def test_bad_arguments(tmp_path):
  with pytest.raises(LaryError, match="--seed"):
    render.simulate(str(tmp_path), seed=-1, progress=False)
  with pytest.raises(LaryError, match="juggle"):
    render._simulate(str(tmp_path), layout.Sizes(classes=("juggle",)),
                     tiny=False, seed=0, num_workers=1, progress=False)


def test_missing_pybullet_names_the_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "pybullet", None)
  with pytest.raises(LaryError, match=r"pip install 'lary-jax\[sim\]'"):
    render.simulate(str(tmp_path), tiny=True, progress=False)
  assert not (tmp_path / "LARY_SIM.json").exists()
