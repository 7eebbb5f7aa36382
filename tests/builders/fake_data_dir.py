"""Synthetic LARYBench DATA_DIRs built from real upstream metadata rows.

The CSV rows in tests/fixtures/upstream_csv are real upstream rows (their
README names the upstream files); this module creates, at exactly the paths
those rows name, small files of the right kind (PNG frames, `.npy` action
chunks and states, mp4 clips), so the builders run on upstream's schema and
path layout without the real data.
"""

from __future__ import annotations

import csv
import os

import av
import numpy as np
from PIL import Image

from tfds_builders import metadata

UPSTREAM_CSV = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures",
    "upstream_csv")

# dataset -> {upstream split: upstream CSV it is made from (and row slice)}.
SOURCES = {
    "calvin": {"train": ("val_la_calvin_5_dinov2", slice(0, 40)),
               "val": ("calvin_metadata_val", slice(0, 30))},
    "vlabench": {"val": ("vlabench_15_metadata_val", slice(0, 20))},
    "vlabench_15": {"val": ("vlabench_15_metadata_val", slice(0, 20))},
    "vlabench_30": {"train": ("vlabench_30_metadata_train", slice(0, 30)),
                    "val": ("vlabench_30_metadata_val", slice(0, 20))},
    "agibotbeta": {"seen_train": ("agibotbeta_metadata_unseen", slice(0, 30)),
                   "unseen": ("agibotbeta_metadata_unseen", slice(30, 50))},
    "robocoin": {"seen_train": ("robocoin_metadata_unseen", slice(0, 120)),
                 "unseen": ("robocoin_metadata_unseen", slice(120, 150))},
    "libero": {"val": ("libero_metadata_val", slice(0, 30))},
}

CLASSES = ("pick up the cup", "open the drawer", "wipe the table")


def read_upstream(name: str) -> tuple[list[str], list[list[str]]]:
  """The header and rows of the kept upstream CSV `name`."""
  with open(os.path.join(UPSTREAM_CSV, f"{name}.csv"), newline="") as f:
    lines = list(csv.reader(f))
  return lines[0], lines[1:]


def write_csv(path: str, header: list[str], rows: list[list[str]]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)


def _png(path: str, rng: np.random.Generator, size=(48, 64)) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _npy(path: str, array: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.save(path, array)


def write_mp4(path: str, frames: np.ndarray, fps: int = 10) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(path, "w") as out:
    stream = out.add_stream("libx264", rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    for f in frames:
      out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
    out.mux(stream.encode())


def make_regression(data_dir: str, name: str, seed: int = 0) -> str:
  """Creates `name`'s CSVs (under data_dir/metadata) and every file they name.

  Returns:
    The metadata directory.
  """
  spec = metadata.DATASETS[name]
  rng = np.random.default_rng(seed)
  meta_dir = os.path.join(data_dir, "metadata")
  for split, (source, rows_slice) in SOURCES[name].items():
    header, rows = read_upstream(source)
    rows = rows[rows_slice]
    write_csv(os.path.join(meta_dir, spec.csv_name(split)), header, rows)
    root = spec.data_root(data_dir, split)
    for values in rows:
      fields = dict(zip(header, values))
      for column in spec.path_columns:
        path = metadata.resolve_path(root, fields[column],
                                     spec.column_dirs.get(column))
        if column in ("src_img", "tgt_img"):
          _png(path, rng)
        elif column == "action":
          _npy(path, rng.normal(size=(spec.stride, spec.action_dim))
               .astype(np.float32))
        else:
          _npy(path, rng.normal(size=(15,)).astype(np.float32))
  return meta_dir


def make_classification(data_dir: str, name: str, *, clips_per_class=(3, 1),
                        with_indices: bool = True, seed: int = 0) -> str:
  """Creates a classification CSV pair in upstream's schema and its mp4s."""
  spec = metadata.DATASETS[name]
  rng = np.random.default_rng(seed)
  meta_dir = os.path.join(data_dir, "metadata")
  header = ["dataset", "video_path", "action"]
  if spec.has_states:  # LARY-Sim: each clip's per-frame robot states
    header.append("state_path")
  if with_indices:
    header.append("sample_indices")
  for split, per_class in zip(("train", "val"), clips_per_class):
    rows = []
    for c, action in enumerate(CLASSES):
      for i in range(per_class):
        # Upstream's clip names, <source video>_<line>.mp4: every clip a
        # source of its own.
        rel = f"SSv2/{split}/{100 * c + i}_0.mp4"
        num_frames = 20 + 4 * i
        frames = rng.integers(0, 256, (num_frames, 40, 48, 3), dtype=np.uint8)
        write_mp4(os.path.join(data_dir, *spec.root, rel), frames)
        row = ["SSv2", rel, action]
        if spec.has_states:
          row.append(rel.replace(".mp4", "_states.npy"))
          _npy(os.path.join(data_dir, *spec.root, row[-1]),
               rng.normal(size=(num_frames, 15)).astype(np.float32))
        if with_indices:
          row.append(",".join(str(j) for j in range(0, 18, 2)))
        rows.append(row)
    write_csv(os.path.join(meta_dir, spec.csv_name(split)), header, rows)
  return meta_dir
