"""DINOv2 ViT-L/14 forward on CPU: lary-jax (jitted) vs transformers.

  python benchmarks/encoder_forward.py [--batch 8] [--rounds 4] [--sessions 2]

Both sides load the same random weights (a `Dinov2Model` saved once with
torch.manual_seed(0)) and encode the same uint8 batch at 224 in fp32 through
upstream's path (2x - 1, patch tokens after the final LayerNorm). Each side
runs alone in its own process, in alternating sessions, so neither shares
cores or memory with the other and peak RSS is per side. A jitted
2048^3 fp32 matmul, measured the same way, is the GEMM peak that the achieved
FLOP/s is compared with. Writes the `encoder_forward` section of
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import report  # pylint: disable=g-import-not-at-top

GEMM_N = report.GEMM_N
# Both sides run with this glibc setting: page faults on freshly mapped
# buffers are costly on these VMs, for either framework.
MALLOC_TUNABLES = ("glibc.malloc.mmap_max=0:"
                   "glibc.malloc.trim_threshold=34359738368")


def _rss_gib() -> float:
  import psutil  # pylint: disable=g-import-not-at-top
  return psutil.Process().memory_info().rss / 2**30


def _peak_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _cpu_busy(dt: float = 1.0) -> float:
  """Fraction of all cores busy over `dt` seconds (0 when unknown)."""
  def read():
    with open("/proc/stat") as f:
      v = [int(x) for x in f.readline().split()[1:]]
    return v[3] + v[4], sum(v)
  try:
    (i0, t0), _, (i1, t1) = read(), time.sleep(dt), read()
  except OSError:
    return 0.0
  return 1 - (i1 - i0) / max(t1 - t0, 1)


def _wait_idle(timeout: float = 30.0) -> None:
  """Waits (bounded) until no other process keeps the CPU busy."""
  start = time.time()
  while time.time() - start < timeout and _cpu_busy() > 0.1:
    pass


def _timed(fn, rounds: int) -> list[float]:
  times = []
  for _ in range(rounds):
    _wait_idle()
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return times


def worker_jax(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from lary_jax import encoders  # pylint: disable=g-import-not-at-top
  images = np.load(args.images)
  enc = encoders.load("dinov2", args.hf)
  loaded = _rss_gib()
  t = time.perf_counter()
  compiled = jax.jit(enc.apply).lower(enc.params, images).compile()
  compile_s = time.perf_counter() - t
  tokens = compiled(enc.params, images).block_until_ready()
  times = _timed(lambda: compiled(enc.params, images).block_until_ready(),
                 args.rounds)
  np.save(args.out + ".npy", np.asarray(tokens[:2]))
  return {"times": times, "compile_s": compile_s, "rss_loaded": loaded,
          "peak": _peak_gib(), "xla_flops": report.xla_flops(compiled)}


def worker_torch(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  images = np.load(args.images)
  model = transformers.Dinov2Model.from_pretrained(args.hf).eval()
  loaded = _rss_gib()
  x = torch.from_numpy(images.astype(np.float32) / 255.0 * 2 - 1)
  x = x.permute(0, 3, 1, 2).contiguous()

  def run():
    with torch.inference_mode():
      return model(pixel_values=x).last_hidden_state[:, 1:]

  tokens = run()
  times = _timed(run, args.rounds)
  np.save(args.out + ".npy", tokens[:2].numpy())
  return {"times": times, "rss_loaded": loaded, "peak": _peak_gib(),
          "threads": torch.get_num_threads(),
          "attn": getattr(model.config, "_attn_implementation", "?")}


def worker_gemm(args) -> dict:
  return {"times": _timed(report.gemm_step(), 4 * args.rounds)}


def dinov2_flops(batch: int, d: int = 1024, layers: int = 24, n: int = 257,
                 patch_dim: int = 14 * 14 * 3) -> float:
  """Matmul FLOPs of a DINOv2 forward (qkv, proj, MLP 4x, attention, embed)."""
  per_layer = 24 * d * d * n + 4 * n * n * d
  return batch * (layers * per_layer + 2 * (n - 1) * patch_dim * d)


def _run_worker(side: str, args, tmp: str) -> dict:
  out = os.path.join(tmp, f"{side}.json")
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", side,
         "--hf", os.path.join(tmp, "hf"), "--images",
         os.path.join(tmp, "images.npy"), "--rounds", str(args.rounds),
         "--out", os.path.join(tmp, side)]
  env = dict(os.environ)
  env.setdefault("GLIBC_TUNABLES", MALLOC_TUNABLES)
  with open(out, "w") as f:
    subprocess.run(cmd, check=True, stdout=f, env=env)
  with open(out) as f:
    return json.load(f)


def _make_inputs(tmp: str, batch: int) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  cfg = transformers.Dinov2Config(hidden_size=1024, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=518,
                                  patch_size=14)
  transformers.Dinov2Model(cfg).save_pretrained(os.path.join(tmp, "hf"))
  images = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3),
                                             dtype=np.uint8)
  np.save(os.path.join(tmp, "images.npy"), images)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--sessions", type=int, default=2)
  parser.add_argument("--worker", choices=["jax", "torch", "gemm"])
  parser.add_argument("--hf")
  parser.add_argument("--images")
  parser.add_argument("--out")
  args = parser.parse_args()
  if args.worker:
    fn = {"jax": worker_jax, "torch": worker_torch, "gemm": worker_gemm}
    print(json.dumps(fn[args.worker](args)))
    return

  with tempfile.TemporaryDirectory() as tmp:
    _make_inputs(tmp, args.batch)
    runs = {"jax": [], "torch": [], "gemm": []}
    for _ in range(args.sessions):
      for side in runs:
        runs[side].append(_run_worker(side, args, tmp))
        print(side, runs[side][-1]["times"], file=sys.stderr)
    ours, theirs = (np.load(os.path.join(tmp, s + ".npy"))
                    for s in ("jax", "torch"))
  diff = float(np.abs(ours - theirs).max())

  times = {s: [t for r in runs[s] for t in r["times"]] for s in runs}
  best = {s: min(v) for s, v in times.items()}
  median = {s: statistics.median(v) for s, v in times.items()}
  peak = 2 * GEMM_N**3 / best["gemm"]
  flops = dinov2_flops(args.batch)
  ips = {s: args.batch / best[s] for s in ("jax", "torch")}
  ips_med = {s: args.batch / median[s] for s in ("jax", "torch")}
  jax_rt, torch_rt = runs["jax"][-1], runs["torch"][-1]
  body = f"""## encoder_forward: DINOv2 ViT-L/14 forward, CPU fp32

`python benchmarks/encoder_forward.py --batch {args.batch} --rounds \
{args.rounds} --sessions {args.sessions}` ({report.machine()}).
Batch {args.batch} at 224 (257 tokens), random weights shared by both sides,
each side alone in its own process (malloc never unmapping:
`GLIBC_TUNABLES={MALLOC_TUNABLES}` for both), each round started
when no other process kept the CPU busy (waits at most 30 s); {len(times["jax"])} timed rounds a side.

| | images/s (best) | images/s (median) | peak RSS | RSS after load |
|---|---|---|---|---|
| lary-jax, `jax.jit` | {ips["jax"]:.2f} | {ips_med["jax"]:.2f} | \
{max(r["peak"] for r in runs["jax"]):.2f} GiB | {jax_rt["rss_loaded"]:.2f} GiB |
| transformers {torch_rt["attn"]}, {torch_rt["threads"]} threads | \
{ips["torch"]:.2f} | {ips_med["torch"]:.2f} | \
{max(r["peak"] for r in runs["torch"]):.2f} GiB | \
{torch_rt["rss_loaded"]:.2f} GiB |

- Speed-up, lary-jax / PyTorch: **{ips["jax"] / ips["torch"]:.2f}x** (best), \
{ips_med["jax"] / ips_med["torch"]:.2f}x (median).
- GEMM peak (jitted {GEMM_N}^3 fp32 matmul): {peak / 1e9:.0f} GFLOP/s best, \
{2 * GEMM_N**3 / median["gemm"] / 1e9:.0f} median.
- Forward: {flops / 1e12:.2f} TFLOP a batch (matmuls; XLA counts \
{jax_rt["xla_flops"] / 1e12:.2f}); lary-jax reaches \
{flops / best["jax"] / 1e9:.0f} GFLOP/s = **{flops / best["jax"] / peak:.0%} \
of GEMM peak**; PyTorch {flops / best["torch"] / 1e9:.0f} GFLOP/s.
- Compile {jax_rt["compile_s"]:.1f} s (once per shape). Max |diff| of the \
tokens, lary-jax vs PyTorch: {diff:.1e}.
"""
  print(body)
  report.write_section("encoder_forward", body)


if __name__ == "__main__":
  main()
