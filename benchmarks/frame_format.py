"""What storing frames as JPEG instead of PNG costs: bytes, pixels, features.

    python benchmarks/frame_format.py [--data_dir DIR] [--qualities 95,90]

Prepares LARY-Sim (the tiny set is rendered into a temporary folder unless
`--data_dir` points at a rendered one) once with lossless PNG frames and once
per JPEG quality, then compares every stored frame of the regression and
classification splits: bytes per frame, PSNR against the PNG frame, and the
relative error and cosine similarity of the tokens of the `pixels` and
`random_vit` (ViT-S/16, seed 0) baselines.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report  # pylint: disable=g-import-not-at-top
from lary_jax import encoders
from lary_jax.data import images
from lary_jax.sim import render
from tfds_builders import metadata
from tfds_builders import prepare


def stored_frames(builder) -> list[bytes]:
  """Every encoded frame of every split, in a fixed order."""
  frames = []
  for source in builder.as_data_source().values():
    for i in range(len(source)):
      record = source[i]
      if "frames" in record:
        frames += list(record["frames"])
      else:
        frames += [record["src_image"], record["tgt_image"]]
  return frames


def features(encoder, pixels: np.ndarray, batch: int = 16) -> np.ndarray:
  out = [np.asarray(encoder(pixels[i:i + batch]))
         for i in range(0, len(pixels), batch)]
  return np.concatenate(out).astype(np.float64)


def compare(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
  """Mean relative L2 error and mean cosine similarity per example."""
  ref, oth = reference.reshape(len(reference), -1), other.reshape(
      len(other), -1)
  rel = np.linalg.norm(oth - ref, axis=1) / np.linalg.norm(ref, axis=1)
  cos = (ref * oth).sum(1) / (np.linalg.norm(ref, axis=1) *
                              np.linalg.norm(oth, axis=1))
  return float(rel.mean()), float(cos.mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float(10 * np.log10(255.0 ** 2 / mse))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--qualities", default="95,90")
  args = parser.parse_args()
  qualities = [int(q) for q in args.qualities.split(",")]
  encs = {"pixels": encoders.load("pixels"),
          "random_vit": encoders.load("random_vit")}
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir or os.path.join(tmp, "lary_sim_tiny")
    if not args.data_dir:
      render.simulate(data_dir, tiny=True, progress=False)
    formats = [("png", 95)] + [("jpeg", q) for q in qualities]
    frames = {}
    for fmt, quality in formats:
      encoded = []
      for spec in metadata.resolve_datasets("sim"):
        b = prepare.prepare(
            spec, data_dir, os.path.join(tmp, f"tfds_{fmt}{quality}"),
            options=prepare.PrepareOptions(frame_format=fmt,
                                           jpeg_quality=quality))
        encoded += stored_frames(b)
      frames[(fmt, quality)] = encoded
  png = np.stack([images.decode_image(f) for f in frames[("png", 95)]])
  reference = {name: features(e, png) for name, e in encs.items()}
  rows = []
  for (fmt, quality), encoded in frames.items():
    decoded = np.stack([images.decode_image(f) for f in encoded])
    size = np.mean([len(f) for f in encoded]) / 1024
    if fmt == "png":
      rows.append(f"| PNG (lossless, default) | {size:.1f} | inf | 0 | 1 | "
                  "0 | 1 |")
      continue
    cells = []
    for name, enc in encs.items():
      rel, cos = compare(reference[name], features(enc, decoded))
      cells += [f"{rel:.4f}", f"{cos:.5f}"]
    rows.append(f"| JPEG quality {quality} | {size:.1f} | "
                f"{psnr(png, decoded):.1f} | " + " | ".join(cells) + " |")
  body = f"""## frame_format

`python benchmarks/frame_format.py` ({report.machine()}): every stored frame of
the tiny LARY-Sim ({len(png)} frames of 224x224, classification and
regression), prepared with PNG and with JPEG. Feature error is the mean over
frames of ||f_jpeg - f_png|| / ||f_png|| and the mean cosine similarity, for
the `pixels` tokens and `random_vit` (ViT-S/16, seed 0) patch tokens.

| frames | KiB/frame | PSNR (dB) | pixels rel. error | pixels cosine | random_vit rel. error | random_vit cosine |
|---|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n"
  print(body)
  report.write_section("frame_format", body)


if __name__ == "__main__":
  main()
