"""video.py: round trips, byte-determinism, cv2 agreement and errors."""

import os

import cv2
import numpy as np
import pytest

from lary_jax.data import video
from lary_jax.errors import LaryError


def _clip(num_frames=12, height=64, width=96):
  """A smooth moving pattern: compressible, so a round trip stays close."""
  yy, xx = np.mgrid[0:height, 0:width].astype(float)
  frames = []
  for t in range(num_frames):
    r = 128 + 100 * np.sin((xx + 3 * t) / 15)
    g = 128 + 100 * np.cos((yy - 2 * t) / 11)
    b = 128 + 60 * np.sin((xx + yy + 4 * t) / 23)
    frames.append(np.stack([r, g, b], -1))
  return np.stack(frames).round().astype(np.uint8)  # [T, H, W, 3]


def _cv2_frames(path):
  capture = cv2.VideoCapture(str(path))
  frames = []
  while True:
    ok, bgr = capture.read()
    if not ok:
      break
    frames.append(bgr[..., ::-1])
  capture.release()
  return np.stack(frames)


def test_round_trip_keeps_count_and_is_close(tmp_path):
  frames = _clip()
  path = tmp_path / "clip.mp4"
  video.write_video(path, frames, fps=10)
  back = video.read_video(path)
  assert back.shape == frames.shape and back.dtype == np.uint8
  err = back.astype(float) - frames
  psnr = 10 * np.log10(255**2 / np.mean(err**2))
  assert np.abs(err).mean() < 3.0 and psnr > 36, psnr  # Measured: 2.2, 39.4.
  np.testing.assert_array_equal(video.read_video(path, max_frames=5),
                                back[:5])


def test_write_is_byte_deterministic_and_atomic(tmp_path):
  frames = _clip(num_frames=20)
  first, second = tmp_path / "a.mp4", tmp_path / "b.mp4"
  video.write_video(first, frames)
  video.write_video(second, frames)
  assert first.read_bytes() == second.read_bytes()
  # Overwriting replaces the file whole and leaves no temporary behind.
  video.write_video(first, frames[:3])
  assert len(video.read_video(first)) == 3
  assert sorted(os.listdir(tmp_path)) == ["a.mp4", "b.mp4"]


def test_read_matches_cv2_videocapture(tmp_path):
  path = tmp_path / "clip.mp4"
  video.write_video(path, _clip())
  np.testing.assert_array_equal(video.read_video(path), _cv2_frames(path))


def test_read_errors_name_the_path(tmp_path):
  with pytest.raises(LaryError, match="nothing.mp4.*not found"):
    video.read_video(tmp_path / "nothing.mp4")
  good = tmp_path / "good.mp4"
  video.write_video(good, _clip())
  truncated = tmp_path / "truncated.mp4"
  truncated.write_bytes(good.read_bytes()[:2000])
  with pytest.raises(LaryError, match="truncated.mp4"):
    video.read_video(truncated)
  junk = tmp_path / "junk.mp4"
  junk.write_bytes(os.urandom(4096))
  with pytest.raises(LaryError, match="junk.mp4"):
    video.read_video(junk)


def test_write_rejects_bad_frames(tmp_path):
  with pytest.raises(LaryError, match="odd.mp4.*even"):
    video.write_video(tmp_path / "odd.mp4", _clip(height=63))
  with pytest.raises(LaryError, match="float.mp4.*uint8"):
    video.write_video(tmp_path / "float.mp4", _clip().astype(np.float32))
  assert not os.listdir(tmp_path)
