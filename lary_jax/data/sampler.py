"""Motion-guided choice of the frames that stand for a video clip.

LARY picks 9 frames per classification video, once, and stores their ids in
the metadata CSV (`sample_indices`). The rule, carried over from upstream:

1. Videos of at most 2 * num_frames frames are sampled uniformly.
2. Otherwise every frame is turned grey and resized to 224x224 (OpenCV
   INTER_LINEAR); d[j] = 1 - SSIM(grey[j], grey[j + 1]) with scikit-image's
   defaults; the clip's cumulative sqrt(d), normalised to 1, is cut at the
   centres of num_frames equal slices (MGSampler in test mode).
3. The ids are sorted and deduplicated, padded with the last id, cut to
   num_frames.

Deliberate differences from upstream, each in a case upstream mishandles:

* All-zero differences (a still video) fall back to the uniform rule;
  upstream divides 0 by 0 and returns id 1 nine times.
* Differences below zero (possible only through rounding) count as zero;
  upstream's square root would turn the whole clip into NaN.
* The short-video test uses the number of decoded frames; upstream asks the
  container first (`CAP_PROP_FRAME_COUNT`), which can disagree with it.
"""

import numpy as np

from lary_jax.data import images
from lary_jax.errors import LaryError

_GREY_SIZE = (224, 224)

# scikit-image's structural_similarity defaults for uint8 images.
_SSIM_WINDOW = 7
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
_SSIM_DATA_RANGE = 255

_PAIRS_PER_CHUNK = 4  # Small chunks keep the float temporaries in cache.


def _box_sums(x: np.ndarray, window: int) -> np.ndarray:
  """Exact sums over every full window x window patch of the last two axes."""
  for axis in (x.ndim - 2, x.ndim - 1):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 0)
    c = np.pad(np.cumsum(x, axis=axis, dtype=x.dtype), pad)
    high = [slice(None)] * x.ndim
    low = [slice(None)] * x.ndim
    high[axis] = slice(window, None)
    low[axis] = slice(None, c.shape[axis] - window)
    x = c[tuple(high)] - c[tuple(low)]
  return x


def ssim_differences(grey: np.ndarray) -> np.ndarray:
  """1 - SSIM between each pair of consecutive grey frames.

  Equals `1 - skimage.metrics.structural_similarity(grey[j], grey[j + 1])`
  (7x7 uniform window, data range 255, sample covariance, mean over the
  window-complete interior) to ~1e-13. Pairs are processed together, a few
  at a time: window sums come from integer cumulative sums, so only the
  final formula rounds, and each frame's mean and variance are computed once
  rather than once per pair.

  Args:
    grey: uint8 frames [T, H, W], H and W at least 7.

  Returns:
    float64 [T - 1].
  """
  grey = np.asarray(grey)
  if grey.dtype != np.uint8 or grey.ndim != 3:
    raise TypeError(
        f"expected uint8 grey frames [T, H, W], got {grey.dtype} {grey.shape}")
  _, height, width = grey.shape
  win = _SSIM_WINDOW
  if min(height, width) < win:
    raise ValueError(
        f"frames must be at least {win}x{win}, got {grey.shape[1:]}")
  # int32 holds every cumulative sum of squares unless frames are huge.
  fits = 255 * 255 * max(height, win * width) < 2**31
  int_type = np.int32 if fits else np.int64
  n = win * win
  cov_norm = n / (n - 1)  # Sample covariance, skimage's default.
  c1 = (_SSIM_K1 * _SSIM_DATA_RANGE)**2
  c2 = (_SSIM_K2 * _SSIM_DATA_RANGE)**2
  num_pairs = max(len(grey) - 1, 0)
  out = np.empty(num_pairs, np.float64)
  for start in range(0, num_pairs, _PAIRS_PER_CHUNK):
    stop = min(start + _PAIRS_PER_CHUNK, num_pairs)
    x = grey[start:stop + 1].astype(int_type)  # [P + 1, H, W]
    mean = _box_sums(x, win) / n  # [P + 1, H - 6, W - 6]
    mean_sq = mean * mean
    var = cov_norm * (_box_sums(x * x, win) / n - mean_sq)
    mean_xy = mean[:-1] * mean[1:]  # [P, H - 6, W - 6]
    cov = cov_norm * (_box_sums(x[:-1] * x[1:], win) / n - mean_xy)
    ssim = ((2 * mean_xy + c1) * (2 * cov + c2) /
            ((mean_sq[:-1] + mean_sq[1:] + c1) * (var[:-1] + var[1:] + c2)))
    out[start:stop] = 1.0 - ssim.reshape(stop - start, -1).mean(axis=1)
  return out


def _dedupe_pad(ids: np.ndarray, num_frames: int) -> np.ndarray:
  """Sorted unique ids, padded with the last one, cut to num_frames."""
  unique = np.unique(np.asarray(ids, np.int64))
  pad = np.full(max(num_frames - len(unique), 0), unique[-1], np.int64)
  return np.concatenate([unique, pad])[:num_frames]


def uniform_indices(num_total: int, num_frames: int = 9) -> np.ndarray:
  """Upstream's uniform rule, `int(num_total / num_frames * i)`, post-processed.

  Args:
    num_total: frames in the video, at least 1.
    num_frames: how many ids to return.

  Returns:
    int64 [num_frames], sorted, deduplicated then padded with the last id.
  """
  if num_total < 1:
    raise ValueError(f"num_total must be >= 1, got {num_total}")
  interval = num_total / num_frames
  ids = (interval * np.arange(num_frames)).astype(np.int64)
  return _dedupe_pad(ids, num_frames)


def motion_guided_indices(
    diffs: np.ndarray, num_frames: int = 9
) -> np.ndarray:
  """Upstream's MGSampler (test mode) on frame differences, post-processed.

  Id i is 1 + the first j whose normalised cumulative sqrt(diffs) is nearest
  to (1 / (2 * num_frames) + i / num_frames), so frame 0 is never chosen and
  motion-dense stretches get more ids. The arithmetic follows upstream's
  operation for operation, ties included.

  Args:
    diffs: float [T - 1], d[j] = dissimilarity of frames j and j + 1.
    num_frames: how many ids to return.

  Returns:
    int64 [num_frames] in [1, T - 1], sorted, deduplicated then padded with
    the last id. If every difference is 0 (nothing moves), the uniform rule
    over T frames instead (upstream would divide by zero).
  """
  d = np.asarray(diffs, np.float64)
  if d.ndim != 1 or d.size == 0:
    raise ValueError(f"expected a non-empty 1-D diffs array, got {d.shape}")
  # Rounding can push 1 - SSIM just below 0; its square root would be NaN.
  score = np.power(np.maximum(d, 0.0), 0.5)
  total = np.sum(score)
  if total == 0:
    return uniform_indices(len(d) + 1, num_frames)
  cumulative = np.cumsum(score / total)  # [T - 1]
  targets = 1 / (num_frames * 2) + np.arange(num_frames) / num_frames
  nearest = np.abs(cumulative[None, :] - targets[:, None]).argmin(axis=1)
  return _dedupe_pad(nearest + 1, num_frames)


def sample_frame_ids(
    frames_rgb: np.ndarray, num_frames: int = 9
) -> np.ndarray:
  """Chooses the frames of a clip by upstream's whole rule (see module doc).

  Upstream drops a video whose ids collapse to [0] (a one-frame video); here
  it gets [0] * num_frames and the caller decides.

  Args:
    frames_rgb: uint8 [T, H, W, 3], every decoded frame of the video.
    num_frames: how many ids to return.

  Returns:
    int64 [num_frames], sorted frame ids in [0, T - 1].
  """
  frames = np.asarray(frames_rgb)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise TypeError(
        f"expected uint8 RGB frames [T, H, W, 3], got {frames.dtype} "
        f"{frames.shape}")
  if len(frames) == 0:
    raise LaryError("cannot sample frames from a video with no frames")
  if len(frames) <= 2 * num_frames:
    return uniform_indices(len(frames), num_frames)
  grey = images.rgb_to_grey(frames)  # [T, H, W]
  small = images.resize_linear(grey[..., None], _GREY_SIZE)[..., 0]
  return motion_guided_indices(ssim_differences(small), num_frames)
