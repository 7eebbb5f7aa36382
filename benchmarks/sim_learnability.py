"""LARY-Sim's classes are learnable from motion and not from appearance.

    python benchmarks/sim_learnability.py [--data_dir DIR] [--seed 0]

Renders the default LARY-Sim into --data_dir unless it is already there,
then fits a small numpy softmax regression (and a nearest-centroid
classifier) on seen_train with three hand-made feature sets and reports
top-1 accuracy on seen_val (Panda, seen scenes) and unseen (KUKA iiwa, held-
out scenes):

- appearance: the first frame alone (8x8 RGB thumbnail + colour histograms);
  must stay near chance, or colour/camera/start pose would give the class away.
- motion, pixels: thumbnails of |frame[t + 4] - frame[t]| over the clip and
  of frame[-1] - frame[0]; generic, but tied to where things are in the image.
- motion, flow: per frame pair, one least-squares (Lucas-Kanade) velocity of
  everything that moves, its motion-energy centroid and amount, resampled
  to 8 time bins and scale-normalised.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report  # pylint: disable=g-import-not-at-top
from lary_jax.data import video
from lary_jax.sim import layout
from lary_jax.sim import render

_BINS = 8
_HEADER = ("| features | softmax reg., seen_val | softmax reg., unseen | "
           "nearest centroid, seen_val | nearest centroid, unseen |\n"
           "|---|---|---|---|---|")


def _pool(x: np.ndarray, size: int) -> np.ndarray:
  """Block-mean [..., H, W, C] down to [..., size, size, C]."""
  *lead, h, w, c = x.shape
  return x.reshape(*lead, size, h // size, size, w // size, c).mean((-4, -2))


def _grey(frames: np.ndarray) -> np.ndarray:
  return frames.astype(np.float32).mean(-1)  # [T, H, W]


def appearance_features(frames: np.ndarray) -> np.ndarray:
  """First frame only: thumbnail and per-channel histograms."""
  first = frames[0].astype(np.float32) / 255.0  # [H, W, 3]
  thumb = _pool(first, 8).ravel()  # [192]
  hist = [np.histogram(first[..., c], _BINS, (0.0, 1.0))[0] / first[..., c].size
          for c in range(3)]
  return np.concatenate([thumb, *hist])


def motion_pixel_features(frames: np.ndarray) -> np.ndarray:
  """Thumbnails of frame differences (4 frames apart) and last - first."""
  g = _grey(frames) / 255.0  # [T, H, W]
  diffs = np.abs(g[4::4] - g[:-4:4])  # [K, H, W]
  thumbs = _pool(diffs[..., None], 8)[..., 0]  # [K, 8, 8]
  signed = _pool((g[-1] - g[0])[..., None], 8)[..., 0]  # [8, 8]
  return np.concatenate([thumbs.ravel(), signed.ravel()])


def _resample(x: np.ndarray, bins: int) -> np.ndarray:
  """Means of `bins` equal time slices of x [T, ...]."""
  edges = np.linspace(0, len(x), bins + 1).round().astype(int)
  return np.stack([x[a:max(b, a + 1)].mean(0)
                   for a, b in zip(edges, edges[1:])])


def motion_flow_features(frames: np.ndarray) -> np.ndarray:
  """Dominant image velocity, energy centroid and energy over time."""
  g = _grey(frames)[:, ::2, ::2]  # [T, 112, 112]
  gy, gx = np.gradient(g, axis=(1, 2))
  it = g[1:] - g[:-1]  # [T-1, h, w]
  ix = 0.5 * (gx[1:] + gx[:-1])
  iy = 0.5 * (gy[1:] + gy[:-1])
  # Only pixels that change take part; codec noise stays below the cut.
  w = (np.abs(it) > 6.0).astype(np.float32)
  a11, a12, a22 = [(w * p).sum((1, 2)) for p in (ix * ix, ix * iy, iy * iy)]
  b1, b2 = [-(w * p * it).sum((1, 2)) for p in (ix, iy)]
  det = a11 * a22 - a12**2 + 1e-3
  vel = np.stack([(a22 * b1 - a12 * b2) / det,
                  (a11 * b2 - a12 * b1) / det], -1)  # [T-1, 2]
  energy = np.abs(it) * w
  mass = energy.sum((1, 2)) + 1e-6  # [T-1]
  ys, xs = np.mgrid[0:g.shape[1], 0:g.shape[2]] / g.shape[1]
  centroid = np.stack([(energy * xs).sum((1, 2)) / mass,
                       (energy * ys).sum((1, 2)) / mass], -1)
  weight = mass / mass.sum()
  centre = (centroid * weight[:, None]).sum(0)
  path = _resample((centroid - centre) * (mass > mass.max() * 0.05)[:, None],
                   _BINS)
  vel_bins = _resample(vel * weight[:, None] * len(weight), _BINS)
  vel_bins /= np.abs(vel_bins).max() + 1e-6
  path /= np.abs(path).max() + 1e-6
  energy_bins = _resample(mass, _BINS)
  energy_bins /= energy_bins.max()
  return np.concatenate([vel_bins.ravel(), path.ravel(), energy_bins,
                         [np.log(mass.mean())]])


def _softmax_regression(x, y, classes, l2=1e-2, steps=800, lr=0.5):
  """Full-batch gradient descent; returns (weights, bias)."""
  n, d = x.shape
  w, b = np.zeros((d, classes)), np.zeros(classes)
  onehot = np.eye(classes)[y]
  for _ in range(steps):
    z = x @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - onehot) / n
    w -= lr * (x.T @ g + l2 * w)
    b -= lr * g.sum(0)
  return w, b


def _evaluate(feats: dict, labels: dict, classes: int) -> dict:
  mean, std = feats["seen_train"].mean(0), feats["seen_train"].std(0) + 1e-6
  z = {s: (f - mean) / std for s, f in feats.items()}
  w, b = _softmax_regression(z["seen_train"], labels["seen_train"], classes)
  centroids = np.stack([z["seen_train"][labels["seen_train"] == c].mean(0)
                        for c in range(classes)])
  out = {}
  for split in ("seen_val", "unseen"):
    logreg = (np.argmax(z[split] @ w + b, 1) == labels[split]).mean()
    dist = ((z[split][:, None] - centroids[None]) ** 2).sum(-1)
    nearest = (np.argmin(dist, 1) == labels[split]).mean()
    out[split] = (100 * logreg, 100 * nearest)
  return out


FEATURES = {
    "appearance: first frame (thumbnail + colour histograms)":
        appearance_features,
    "motion: frame-difference thumbnails": motion_pixel_features,
    "motion: dominant flow + energy centroid path": motion_flow_features,
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--data_dir",
                      default=os.path.join(tempfile.gettempdir(), "lary_sim"))
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  summary = render.simulate(args.data_dir, seed=args.seed)
  classes = summary["classes"]
  feats = {name: {} for name in FEATURES}
  labels = {}
  for split in layout.SPLITS:
    path = os.path.join(args.data_dir, layout.METADATA_DIR,
                        layout.csv_name("classification", split))
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
    labels[split] = np.array([classes.index(r["action"]) for r in rows])
    per = {name: [] for name in FEATURES}
    for r in rows:
      frames = video.read_video(os.path.join(
          args.data_dir, layout.CLASSIFICATION_DIR, r["video_path"]))
      for name, fn in FEATURES.items():
        per[name].append(fn(frames))
    for name in FEATURES:
      feats[name][split] = np.stack(per[name])
  n = {s: len(v) for s, v in labels.items()}
  lines = []
  for name in FEATURES:
    acc = _evaluate(feats[name], labels, len(classes))
    lines.append(f"| {name} | {acc['seen_val'][0]:.1f} | "
                 f"{acc['unseen'][0]:.1f} | {acc['seen_val'][1]:.1f} | "
                 f"{acc['unseen'][1]:.1f} |")
  table = "\n".join(lines)
  body = f"""## sim_learnability

`python benchmarks/sim_learnability.py --seed {args.seed}` ({report.machine()}):
the default LARY-Sim ({len(classes)} classes; {n['seen_train']} seen_train,
{n['seen_val']} seen_val Panda clips, {n['unseen']} unseen KUKA iiwa clips in
held-out scenes). Top-1 accuracy (%) of classifiers fitted on seen_train;
chance is {100 / len(classes):.1f}%.

{_HEADER}
{table}
"""
  print(body)
  report.write_section("sim_learnability", body)


if __name__ == "__main__":
  main()
