"""sampler.py against scikit-image, OpenCV and a plain restatement."""

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from lary_jax.data import sampler
from lary_jax.errors import LaryError

# --- The rule restated the slow, obvious way (the oracle). ---


def _post_process(ids, num_frames):
  kept = sorted({int(i) for i in ids})
  kept += [kept[-1]] * (num_frames - len(kept))
  return kept[:num_frames]


def _uniform_rule(num_total, num_frames=9):
  step = num_total / num_frames
  return _post_process([int(step * i) for i in range(num_frames)], num_frames)


def _motion_rule(diffs, num_frames=9):
  roots = [float(np.power(d, 0.5)) for d in diffs]
  total = np.sum(roots)
  running, cumulative = 0.0, []
  for r in roots:
    running = running + r / total
    cumulative.append(running)
  ids = []
  for i in range(num_frames):
    target = 1 / (2 * num_frames) + i / num_frames
    gaps = [abs(c - target) for c in cumulative]
    ids.append(gaps.index(min(gaps)) + 1)  # First of equals wins.
  return _post_process(ids, num_frames)


def _moving_clip(num_frames, height=120, width=160, seed=0):
  """Frames of a drifting pattern whose speed changes over time."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:height, 0:width].astype(float)
  speed = np.where(np.arange(num_frames) < num_frames // 2, 0.5, 6.0)
  offset = np.cumsum(speed)
  frames = []
  for shift in offset:
    r = 128 + 90 * np.sin((xx + shift) / 9)
    g = 128 + 90 * np.cos((yy + 0.5 * shift) / 7)
    b = 128 + 60 * np.sin((xx - yy + shift) / 13)
    frames.append(np.stack([r, g, b], -1))
  clip = np.stack(frames) + rng.normal(0, 3, (num_frames, height, width, 3))
  return clip.clip(0, 255).round().astype(np.uint8)


# --- SSIM ---


def test_ssim_differences_match_skimage():
  rng = np.random.default_rng(1)
  grey = _moving_clip(6, 64, 80)[..., 1]
  grey = np.concatenate([
      grey, grey[-1:], rng.integers(0, 256, (2, 64, 80), dtype=np.uint8)])
  ours = sampler.ssim_differences(grey)
  theirs = [1 - structural_similarity(a, b) for a, b in zip(grey, grey[1:])]
  assert ours.shape == (len(grey) - 1,) and ours.dtype == np.float64
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
  assert ours[5] == 0.0  # Identical frames: exactly no motion.
  assert 0.5 < ours[-1] < 1.1  # Independent noise: almost no similarity.


def test_ssim_differences_odd_size_and_chunking():
  # 11 pairs span several internal chunks; 9x31 is near the 7x7 minimum.
  grey = np.random.default_rng(2).integers(0, 256, (12, 9, 31), np.uint8)
  theirs = [1 - structural_similarity(a, b) for a, b in zip(grey, grey[1:])]
  np.testing.assert_allclose(
      sampler.ssim_differences(grey), theirs, rtol=0, atol=1e-9)
  assert sampler.ssim_differences(grey[:1]).shape == (0,)
  with pytest.raises(ValueError, match="7x7"):
    sampler.ssim_differences(grey[:, :6])


# --- Index rules ---


@pytest.mark.parametrize("num_total", range(1, 19))
def test_uniform_indices_follow_the_rule(num_total):
  ids = sampler.uniform_indices(num_total)
  assert ids.dtype == np.int64
  assert ids.tolist() == _uniform_rule(num_total)


def test_uniform_indices_examples():
  assert sampler.uniform_indices(5).tolist() == [0, 1, 2, 3, 4, 4, 4, 4, 4]
  assert sampler.uniform_indices(18).tolist() == list(range(0, 18, 2))
  assert sampler.uniform_indices(1).tolist() == [0] * 9
  assert sampler.uniform_indices(10, num_frames=4).tolist() == [0, 2, 5, 7]


def test_motion_guided_matches_the_rule_on_random_diffs():
  rng = np.random.default_rng(3)
  for trial in range(60):
    length = int(rng.integers(18, 400))
    diffs = rng.exponential(0.05, length) * (rng.random(length) < 0.7)
    diffs[rng.integers(length)] = 0.3  # Never all zero.
    num_frames = 9 if trial % 2 else int(rng.integers(2, 16))
    assert (sampler.motion_guided_indices(diffs, num_frames).tolist() ==
            _motion_rule(diffs, num_frames)), trial


def test_motion_in_the_middle_draws_the_ids_there():
  diffs = np.full(99, 1e-4)
  diffs[40:60] = 0.5  # Frames 40..60 move; the rest is nearly still.
  ids = sampler.motion_guided_indices(diffs)
  assert ids.tolist() == _motion_rule(diffs)
  assert all(40 <= i <= 61 for i in ids[1:-1])
  assert np.sum((ids >= 40) & (ids <= 61)) >= 7


def test_even_motion_spreads_the_ids_evenly():
  ids = sampler.motion_guided_indices(np.full(90, 0.02))
  assert ids.tolist() == [5, 15, 25, 35, 45, 55, 65, 75, 85]


def test_still_video_falls_back_to_uniform():
  ids = sampler.motion_guided_indices(np.zeros(29))
  assert ids.tolist() == sampler.uniform_indices(30).tolist()
  # Rounding can make 1 - SSIM a hair negative; that counts as no motion.
  noisy = np.zeros(40)
  noisy[[3, 7]] = -1e-17
  noisy[20] = 0.2
  clean = np.where(noisy < 0, 0.0, noisy)
  np.testing.assert_array_equal(sampler.motion_guided_indices(noisy),
                                sampler.motion_guided_indices(clean))


# --- The whole rule ---


def test_short_clips_are_sampled_uniformly():
  clip = _moving_clip(18, 16, 16)
  assert sampler.sample_frame_ids(clip).tolist() == _uniform_rule(18)
  assert sampler.sample_frame_ids(clip[:1]).tolist() == [0] * 9
  with pytest.raises(LaryError, match="no frames"):
    sampler.sample_frame_ids(clip[:0])


@pytest.mark.parametrize("num_frames", [19, 45])
def test_sample_frame_ids_match_the_upstream_pipeline(num_frames):
  clip = _moving_clip(num_frames)
  # Upstream: BGR frames -> COLOR_BGR2GRAY -> cv2.resize to 224 -> SSIM.
  grey = [
      cv2.resize(cv2.cvtColor(np.ascontiguousarray(f[..., ::-1]),
                              cv2.COLOR_BGR2GRAY), (224, 224)) for f in clip
  ]
  diffs = [1 - structural_similarity(a, b) for a, b in zip(grey, grey[1:])]
  expected = _motion_rule(diffs)
  ids = sampler.sample_frame_ids(clip)
  assert ids.dtype == np.int64 and ids.tolist() == expected
  # The second half moves 12x faster, so it holds most of the ids.
  assert np.sum(ids >= num_frames // 2) >= 6
