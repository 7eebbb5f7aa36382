"""The `flow` encoder on CPU: lary-jax (jitted) vs scikit-image's iLK.

  python benchmarks/optical_flow.py [--rounds 10] [--batches 8,64]

Input: a photo (scikit-image's astronaut) panned 3 px right and 1 px up a
frame, as 224 x 224 uint8 frame pairs; the cost does not depend on the
content (fixed pyramid levels and warps).
- lary-jax: `encoders.load("flow", **config)` under jit, uint8 pairs ->
  tokens, `--batches` pairs a call (extraction calls the encoder with its
  micro-batch: 8 pairs in image mode, 8 clips = 64 pairs in video mode).
- Reference: scikit-image's `optical_flow_ilk` with the same settings, one
  pair at a time (it takes one), on the same grey frames at the working
  size (grey and block mean in numpy, not timed), float32.
Rounds interleave the two sides; each side's best and median seconds a
batch, as wall time and as this process's CPU time (all threads): on a
machine other processes keep busy the CPU time shows the work, the wall
time what a user waits. The load average is read before and after. Also
checks that both sides' tokens agree, and estimates the flow extraction of
the default `run` (~500 clips x 8 pairs + ~500 pairs). Writes the
`optical_flow` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import report  # pylint: disable=g-import-not-at-top

# (label, encoder options); the first is the default encoder.
CONFIGS = (
    ("defaults (size 112, 3 warps, Gaussian window)", {}),
    ("10 warps (scikit-image's default count)", {"num_warp": 10}),
    ("full resolution (size 224)", {"size": 224}),
)
# The default `run` on LARY-Sim: clips x 8 pairs + regression pairs.
RUN_PAIRS = 500 * 8 + 500


def _pairs(n: int) -> np.ndarray:
  """uint8 [n, 2, 224, 224, 3]: consecutive frames of a pan."""
  from skimage import data, transform  # pylint: disable=g-import-not-at-top
  photo = (transform.resize(data.astronaut(), (320, 320)) * 255).round()
  photo = photo.astype(np.uint8)
  frames = [photo[8 + t % 80:232 + t % 80, 90 - 3 * (t % 28):
                  314 - 3 * (t % 28)] for t in range(n + 1)]
  return np.stack([np.stack(frames[:-1]), np.stack(frames[1:])], 1)


def _reference_tokens(pairs: np.ndarray, options: dict):
  """(grey pairs, a function: grey pairs -> tokens by scikit-image)."""
  # pylint: disable=g-import-not-at-top
  from skimage.color import rgb2gray
  from skimage.registration import optical_flow_ilk
  from lary_jax.encoders import optical_flow
  c = optical_flow.make_config(**options)
  f = 224 // c.size
  grey = np.stack([rgb2gray(p).reshape(*p.shape[:-3], c.size, f, c.size, f)
                   .mean(axis=(-3, -1)) for p in pairs]).astype(np.float32)

  def tokens(grey_pairs):
    out = []
    for src, tgt in grey_pairs:
      flow = optical_flow_ilk(src, tgt, radius=c.radius, num_warp=c.num_warp,
                              gaussian=c.gaussian) * f
      dy, dx = flow / optical_flow.FLOW_SCALE
      m = np.stack([dx, dy, dx * dx, dy * dy, dx * dy], -1)
      g = c.grid
      out.append(m.reshape(g, c.size // g, g, c.size // g, 5)
                 .mean(axis=(1, 3)).reshape(g * g, 5))
    return np.stack(out)

  return grey, tokens


def _time(fn) -> tuple[float, float]:
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--batches", default="8,64")
  args = parser.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  from lary_jax import encoders  # pylint: disable=g-import-not-at-top

  batches = [int(b) for b in args.batches.split(",")]
  load_before = os.getloadavg()
  rows, notes = [], []
  for ci, (label, options) in enumerate(CONFIGS):
    enc = encoders.load("flow", **options)
    # Non-default settings: the smallest batch only.
    for batch in batches if ci == 0 else batches[:1]:
      pairs = _pairs(batch)
      x = jax.device_put(pairs)
      t = time.perf_counter()
      ours = np.asarray(enc(x))
      compile_s = time.perf_counter() - t
      grey, reference = _reference_tokens(pairs, options)
      # The reference costs about 30 ms a pair: time it on 8 pairs.
      ref_grey = grey[:8]
      diff = np.abs(ours[:8] - reference(ref_grey)).max()
      jax_t, ref_t = [], []
      for _ in range(args.rounds):
        jax_t.append(_time(lambda: enc(x).block_until_ready()))
        ref_t.append(_time(lambda: reference(ref_grey)))
      jax_wall = [w / batch for w, _ in jax_t]
      jax_cpu = [c / batch for _, c in jax_t]
      ref_wall = [w / len(ref_grey) for w, _ in ref_t]
      ref_cpu = [c / len(ref_grey) for _, c in ref_t]
      rows.append((label, batch, jax_wall, jax_cpu, ref_wall, ref_cpu,
                   compile_s, diff))
  load_after = os.getloadavg()

  def rate(seconds):
    return 1 / min(seconds), 1 / statistics.median(seconds)

  lines = [
      "## optical_flow: the `flow` encoder, lary-jax vs scikit-image, CPU",
      "",
      f"`python benchmarks/optical_flow.py --rounds {args.rounds} "
      f"--batches {args.batches}` ({report.machine()}). uint8 224 x 224 "
      "frame pairs of a panned photo -> [64, 5] tokens; scikit-image's "
      "`optical_flow_ilk` (same settings, float32, one pair a call, 8 pairs "
      "a round) on the same grey frames, rounds interleaved. Pairs per "
      "second, best / median; wall time and this process's CPU time (both "
      "cores). Load average (1, 5, 15 min) before: "
      f"{', '.join(f'{v:.1f}' for v in load_before)}; after: "
      f"{', '.join(f'{v:.1f}' for v in load_after)}.",
      "",
      "| settings | pairs a call | lary-jax pairs/s, wall | scikit-image "
      "pairs/s, wall | speed-up (best) | lary-jax pairs per CPU-s | "
      "scikit-image pairs per CPU-s | CPU ratio (best) | compile | max "
      "abs diff of tokens |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for (label, batch, jw, jc, rw, rc, compile_s, diff) in rows:
    (jb, jm), (rb, rm) = rate(jw), rate(rw)
    (cb, cm), (sb, sm) = rate(jc), rate(rc)
    lines.append(
        f"| {label} | {batch} | {jb:.0f} / {jm:.0f} | {rb:.1f} / {rm:.1f} | "
        f"**{jb / rb:.1f}x** | {cb:.0f} / {cm:.0f} | {sb:.1f} / {sm:.1f} | "
        f"{cb / sb:.1f}x | {compile_s:.1f} s | {diff:.1e} |")
  label, batch, jw, jc = rows[0][:4]
  best, median = rate(jw)
  notes.append(
      f"- The default `run`'s flow extraction, {RUN_PAIRS} pairs (~500 clips "
      f"x 8 + ~500 pairs), at the batch-{batch} rate: "
      f"{RUN_PAIRS / best:.0f} s best, {RUN_PAIRS / median:.0f} s median, "
      "plus one compile per mode; the CPU-time rate "
      f"({rate(jc)[0]:.0f} pairs per CPU-second) puts it near "
      f"{RUN_PAIRS / rate(jc)[0] / 2:.0f} s on 2 otherwise idle cores.")
  notes.append(
      "- Tokens: lary-jax in float32 against scikit-image's float32 flow "
      "pooled the same way (units of FLOW_SCALE px); differences are "
      "float32 rounding fed back through the warps (tests/encoders/"
      "optical_flow_test.py bounds the flow itself).")
  text = "\n".join(lines + [""] + notes)
  print(text)
  report.write_section("optical_flow", text)


if __name__ == "__main__":
  main()
