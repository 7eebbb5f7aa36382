"""Turning one checked CSV row into one TFDS example (run in worker processes).

Each loader opens the row's files, validates what it reads and returns either
the example's features or a `BadRow` saying why it cannot be used. `check`
runs exactly these functions without writing anything, so it reports the same
problems as `prepare`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from lary_jax.data import images
from lary_jax.data import sampler
from lary_jax.data import video
from lary_jax.errors import LaryError
from tfds_builders import metadata

FRAME_SIZE = (224, 224)
NUM_FRAMES = 9
# V-JEPA 2's view of the full-resolution frames (short side 256, centre crop
# 224), stored beside the squashed frames under `<key>_vjepa2`.
VJEPA2_SHORT_SIDE = 256
VJEPA2_SUFFIX = "_vjepa2"


@dataclasses.dataclass(frozen=True)
class FrameOptions:
  """How frames are stored: lossless PNG by default, JPEG as an option.

  `vjepa2_view` also stores V-JEPA 2's own view of every frame, which the
  squashed 224 x 224 frames cannot give (it needs the full resolution).
  """

  frame_format: str = "png"
  jpeg_quality: int = 95
  vjepa2_view: bool = False
  png_level: int = 6  # zlib level: bytes against time, same pixels

  def __post_init__(self):
    if self.frame_format not in ("png", "jpeg"):
      raise LaryError(f"frame_format must be 'png' or 'jpeg', not "
                      f"{self.frame_format!r}")
    if not 0 <= self.png_level <= 9:
      raise LaryError(f"png_level must be a zlib level 0-9, not "
                      f"{self.png_level!r}")

  def encode(self, img: np.ndarray) -> bytes:
    if self.frame_format == "png":
      return images.encode_png(img, self.png_level)
    return images.encode_jpeg(img, quality=self.jpeg_quality)


Example = dict[str, Any]


def load_example(spec: metadata.DatasetSpec, row: metadata.Row,
                 options: FrameOptions) -> Example | metadata.BadRow:
  """Loads the features of `row`, or says why it is bad."""
  for column, path in row.paths.items():
    if not os.path.isfile(path):
      return row.bad(f"missing file ({column} -> {path})", column)
  try:
    if spec.kind == "classification":
      return _load_clip(spec, row, options)
    return _load_pair(spec, row, options)
  except _Bad as bad:
    return row.bad(bad.reason, bad.column)


class _Bad(Exception):

  def __init__(self, reason: str, column: str | None = None):
    super().__init__(reason)
    self.reason, self.column = reason, column


def _views(frames: np.ndarray, key: str, options: FrameOptions
           ) -> dict[str, np.ndarray]:
  """The stored views of full-resolution frames [T, H, W, 3], by key."""
  views = {key: images.resize_bicubic(frames, FRAME_SIZE)}
  if options.vjepa2_view:
    views[key + VJEPA2_SUFFIX] = images.resize_short_side_center_crop(
        frames, VJEPA2_SHORT_SIDE, FRAME_SIZE[0])
  return views


def _image_views(path: str, column: str, key: str,
                 options: FrameOptions) -> dict[str, bytes]:
  try:
    img = images.load_image(path)
  except LaryError as e:
    raise _Bad(f"unreadable image ({column}): {e}", column) from None
  return {k: options.encode(v[0])
          for k, v in _views(img[None], key, options).items()}


def load_array(path: str, column: str) -> np.ndarray:
  """Loads a numeric `.npy` without unpickling; raises _Bad if unusable."""
  try:
    arr = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise _Bad(f"unreadable {column} .npy: {e}", column) from None
  if not isinstance(arr, np.ndarray) or not np.issubdtype(
      arr.dtype, np.number):
    raise _Bad(f"{column} .npy is not a numeric array (dtype {arr.dtype})",
               column)
  arr = arr.astype(np.float32)
  if not np.all(np.isfinite(arr)):
    raise _Bad(f"{column} contains NaN or inf", column)
  return arr


def load_action(spec: metadata.DatasetSpec, path: str) -> np.ndarray:
  """Loads an action chunk as float32 [stride, action_dim]."""
  action = load_array(path, "action")
  expected = (spec.stride, spec.action_dim)
  # Upstream flattens every chunk, so any layout of the right size is read.
  if action.size != spec.stride * spec.action_dim:
    raise _Bad(f"wrong action shape {action.shape}: expected {expected} "
               f"(stride {spec.stride} x action_dim {spec.action_dim})",
               "action")
  return action.reshape(expected)


def _load_pair(spec: metadata.DatasetSpec, row: metadata.Row,
               options: FrameOptions) -> Example:
  ex: Example = {
      **_image_views(row.paths["src_img"], "src_img", "src_image", options),
      **_image_views(row.paths["tgt_img"], "tgt_img", "tgt_image", options),
      "dataset": row.fields.get("dataset", spec.name),
      "src_path": row.fields["src_img"],
  }
  if spec.label_action:
    ex["action"] = row.fields["action"]
    return ex
  ex["action"] = load_action(spec, row.paths["action"])
  ex["robot_type"] = row.fields.get("robot_type", "")
  if spec.has_states:
    for column in ("src_state", "tgt_state"):
      ex[column] = load_array(row.paths[column], column).reshape(-1)
  return ex


def _load_clip(spec: metadata.DatasetSpec, row: metadata.Row,
               options: FrameOptions) -> Example:
  ids_text = row.fields.get("sample_indices", "")
  ids = metadata.parse_indices(ids_text, NUM_FRAMES) if ids_text else None
  try:
    # With upstream's frame ids only the frames up to the last one are needed.
    frames = video.read_video(row.paths["video_path"],
                              max_frames=max(ids) + 1 if ids else None)
  except LaryError as e:
    raise _Bad(f"unreadable video: {e}", "video_path") from None
  if ids is None:
    ids = sampler.sample_frame_ids(frames, NUM_FRAMES)
  # Like upstream, ids past the end of the video repeat the last frame.
  ids = np.clip(np.asarray(ids), 0, len(frames) - 1)
  views = _views(frames[ids], "frames", options)
  ex = {
      **{k: np.array([options.encode(f) for f in clip], dtype=object)
         for k, clip in views.items()},
      "action": row.fields["action"],
      "dataset": row.fields.get("dataset", spec.name),
      "video_path": row.fields["video_path"],
  }
  if spec.has_states:
    ex["states"] = _frame_states(row.paths["state_path"], len(frames))[ids]
  return ex


def _frame_states(path: str, num_frames: int) -> np.ndarray:
  """A clip's per-frame states [num_frames, S]; raises _Bad if unusable."""
  states = load_array(path, "state_path")
  if states.ndim != 2 or len(states) != num_frames:
    raise _Bad(f"state_path .npy has shape {states.shape}: expected one "
               f"state per video frame ({num_frames}, S)", "state_path")
  return states
