"""Reading and writing videos as uint8 RGB frame arrays, through PyAV.

Upstream reads every frame with `cv2.VideoCapture` and converts BGR to RGB.
PyAV decodes with the same FFmpeg, and its YUV -> RGB conversion gives the
same pixels as the OpenCV wheels from 4.13 on, which honour the stream's
colour matrix tag. OpenCV 4.12 and older ignore the tag and always use
BT.601, so for BT.709-tagged videos their RGB differs from ours (by up to
~25 levels on saturated colours); untagged and BT.601 videos are identical.
"""

import os
import tempfile
from fractions import Fraction

import av
import numpy as np

from lary_jax.errors import LaryError

# mbtree=0: x264's macroblock-tree rate control, with threads=1 as well, still
# gave different bytes for the same frames now and then on this CPU; without
# it the output was byte-identical in every trial.
_X264_OPTIONS = {"threads": "1", "x264-params": "mbtree=0"}


def _reason(error: Exception) -> str:
  return getattr(error, "strerror", None) or str(error)


def read_video(
    path: str | os.PathLike[str], max_frames: int | None = None
) -> np.ndarray:
  """Decodes the first video stream of a file into RGB frames.

  Args:
    path: video file (any container and codec FFmpeg reads).
    max_frames: stop after this many frames; None reads them all.

  Returns:
    uint8 array [T, H, W, 3], frames in display order.

  Raises:
    LaryError: the file is missing, has no video stream, cannot be decoded
      (a decoding error part-way through is an error too, where upstream would
      keep the frames read so far) or holds no frames.
  """
  path = os.fspath(path)
  if max_frames is not None and max_frames < 1:
    raise ValueError(f"max_frames must be >= 1, got {max_frames}")
  if not os.path.isfile(path):
    raise LaryError(f"{path}: video file not found")
  frames = []
  try:
    with av.open(path, mode="r") as container:
      if not container.streams.video:
        raise LaryError(f"{path}: no video stream")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      for frame in container.decode(stream):
        frames.append(frame.to_ndarray(format="rgb24"))  # [H, W, 3]
        if max_frames is not None and len(frames) >= max_frames:
          break
  except av.FFmpegError as e:
    raise LaryError(f"{path}: cannot decode video ({_reason(e)})") from e
  if not frames:
    raise LaryError(f"{path}: video has no frames")
  return np.stack(frames)


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    fps: int = 10,
    *,
    crf: int = 18,
) -> None:
  """Writes RGB frames as an H.264 (libx264, yuv420p) mp4, atomically.

  The file appears complete or not at all: frames go to a temporary file in
  the same folder, which then replaces `path`. The same frames, fps and crf
  give a byte-identical file with the same PyAV build.

  Args:
    path: destination .mp4; missing parent folders are created.
    frames: uint8 array [T, H, W, 3] in RGB order, H and W even (yuv420p
      halves the chroma planes).
    fps: frame rate.
    crf: x264 constant rate factor; 18 is close to visually lossless.

  Raises:
    LaryError: the frames cannot be written as asked.
  """
  path = os.fspath(path)
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise LaryError(
        f"{path}: expected uint8 frames [T, H, W, 3], got {frames.dtype} "
        f"{frames.shape}")
  num_frames, height, width, _ = frames.shape
  if num_frames == 0:
    raise LaryError(f"{path}: no frames to write")
  if height % 2 or width % 2:
    raise LaryError(
        f"{path}: yuv420p needs an even frame size, got {height}x{width}")
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(
      dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  os.close(fd)
  rate = Fraction(fps)
  try:
    with av.open(tmp_path, mode="w", format="mp4") as container:
      stream = container.add_stream("libx264", rate=rate)
      stream.width = width
      stream.height = height
      stream.pix_fmt = "yuv420p"
      stream.time_base = 1 / rate
      stream.options = {**_X264_OPTIONS, "crf": str(crf)}
      for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(
            np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = i
        frame.time_base = 1 / rate
        container.mux(stream.encode(frame))
      container.mux(stream.encode(None))
    # mkstemp makes the file private (0600); give it the usual umask mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    os.replace(tmp_path, path)
  except (av.FFmpegError, OSError) as e:
    raise LaryError(f"{path}: cannot write video ({_reason(e)})") from e
  finally:
    if os.path.exists(tmp_path):
      os.unlink(tmp_path)
