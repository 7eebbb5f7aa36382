"""Small in-memory splits shaped like the prepared TFDS records.

Images are 8x8 PNGs (written by Pillow, independently of the codec under
test) whose pixels are a pure function of (record, frame), so a test can
recompute what decoding must return.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence

import numpy as np
from PIL import Image

IMAGE_SIZE = 8
NUM_FRAMES = 9


def _pillow_png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def pixels(record: int, frame: int) -> np.ndarray:
  """The uint8 [8, 8, 3] image stored as `frame` of `record`."""
  rng = np.random.default_rng([record, frame])
  return rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


def classification_records(labels: Sequence[int]) -> list[dict]:
  """One clip record per label, in the classification record format."""
  return [{
      "frames": np.array([_pillow_png(pixels(i, t)) for t in range(NUM_FRAMES)],
                         dtype=object),
      "label": int(label),
      "action": f"class {label}".encode(),
      "dataset": b"fake",
      "video_path": f"clips/{i}.mp4".encode(),
  } for i, label in enumerate(labels)]


def regression_records(n: int, stride: int = 3, dim: int = 4,
                       robot_types: Sequence[bytes] = (b"a", b"b", b""),
                       seed: int = 0) -> list[dict]:
  """n image-pair records with [stride, dim] actions, robot types cycling."""
  rng = np.random.default_rng(seed)
  return [{
      "src_image": _pillow_png(pixels(i, 0)),
      "tgt_image": _pillow_png(pixels(i, 1)),
      "action": rng.normal(size=(stride, dim)).astype(np.float32),
      "robot_type": robot_types[i % len(robot_types)],
      "dataset": b"fake",
      "src_path": f"images/{i}.png".encode(),
  } for i in range(n)]


class RecordingSource(Sequence):
  """A random-access source that remembers which records were read."""

  def __init__(self, records: Sequence[dict]):
    self._records = records
    self._lock = threading.Lock()
    self.reads: list[int] = []

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index):
    with self._lock:
      self.reads.append(int(index))
    return self._records[index]
