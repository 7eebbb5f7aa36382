"""Rows/s of `prepare` (worker pool + TFDS writer) against a plain loop.

    python benchmarks/prepare_throughput.py [--rows 240] [--size 480x640]

The reference is the same per-row work (decode, bicubic resize to 224, PNG
encode, action load) done in a sequential Python loop in this process,
without writing anything; `prepare` additionally serialises and writes the
array_record files. Both run on the same synthetic CALVIN-schema DATA_DIR.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report  # pylint: disable=g-import-not-at-top
from tests.builders import fake_data_dir
from tfds_builders import loaders
from tfds_builders import metadata
from tfds_builders import parallel
from tfds_builders import prepare

SPEC = metadata.DATASETS["vlabench"]


def make_data_dir(root: str, rows: int, size: tuple[int, int]) -> None:
  rng = np.random.default_rng(0)
  meta = os.path.join(root, "metadata")
  data = os.path.join(root, *SPEC.root)
  lines = []
  # Smooth images compress like camera frames; random noise would not.
  base = rng.integers(0, 256, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
  for i in range(rows):
    for kind in ("src", "tgt"):
      img = Image.fromarray(np.roll(base, i, axis=1)).resize(size[::-1])
      os.makedirs(os.path.join(data, "images", f"ep_{i}"), exist_ok=True)
      img.save(os.path.join(data, "images", f"ep_{i}", f"{kind}.png"))
    for name, shape in (("actions", (5, 7)), ("states", (15,))):
      os.makedirs(os.path.join(data, name, f"ep_{i}"), exist_ok=True)
      np.save(os.path.join(data, name, f"ep_{i}", "x.npy"),
              rng.normal(size=shape).astype(np.float32))
    lines.append(["VLABench", "robot", "3rd", f"images/ep_{i}/src.png",
                  f"states/ep_{i}/x.npy", f"images/ep_{i}/tgt.png",
                  f"states/ep_{i}/x.npy", f"actions/ep_{i}/x.npy"])
  fake_data_dir.write_csv(os.path.join(meta, SPEC.csv_name("train")),
                          list(SPEC.columns), lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--rows", type=int, default=240)
  parser.add_argument("--size", default="480x640")
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  size = tuple(int(s) for s in args.size.split("x"))
  load = os.getloadavg()[0]
  workers = parallel.default_workers()
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = os.path.join(tmp, "data")
    make_data_dir(data_dir, args.rows, size)
    rows, _ = metadata.read_split(
        SPEC, os.path.join(data_dir, "metadata", SPEC.csv_name("train")),
        data_dir)
    loop, pool = [], []
    for r in range(args.rounds):
      start = time.perf_counter()
      for row in rows:
        loaders.load_example(SPEC, row, loaders.FrameOptions())
      loop.append(args.rows / (time.perf_counter() - start))
      start = time.perf_counter()
      prepare.prepare(SPEC, data_dir, os.path.join(tmp, f"tfds{r}"),
                      options=prepare.PrepareOptions(num_workers=workers))
      pool.append(args.rows / (time.perf_counter() - start))
  body = f"""## prepare_throughput

`python benchmarks/prepare_throughput.py --rows {args.rows} --size {args.size}`
({report.machine()}): CALVIN-schema rows, two {args.size} PNG frames each,
resized to 224x224 and stored as PNG. Load average when it started: {load:.2f}.

| what | rows/s (best of {args.rounds}) | ratio |
|---|---|---|
| plain sequential loop (decode + resize + encode, nothing written) | {max(loop):.1f} | 1.00 |
| `prepare`, {workers} worker processes, incl. TFDS array_record writing | {max(pool):.1f} | {max(pool) / max(loop):.2f} |
"""
  print(body)
  report.write_section("prepare_throughput", body)


if __name__ == "__main__":
  main()
