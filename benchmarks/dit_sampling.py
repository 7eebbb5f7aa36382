"""DiT decoder sampling: lary-jax's one-scan sampler vs upstream's loop.

  python benchmarks/dit_sampling.py [--batches 256,32] [--rounds 2]
      [--sessions 2] [--latent 2048] [--inference_steps 500]
  python benchmarks/dit_sampling.py --quick   # smoke run, writes nothing

Both sides load the same random weights into upstream's DiT shape (hidden
512, depth 6, 8 heads; action chunk 5 x 7) and sample a batch of latents with
the squaredcos_cap_v2 DDPM, 500 "leading" steps. lary-jax runs
`dit_decoder.predict` under one `jax.jit` (the steps are a `lax.scan`, the
condition embedded once); PyTorch runs upstream's loop: a Python `for` over
diffusers' `DDPMScheduler.timesteps`, the DiT (condition re-embedded) and
`scheduler.step` each step, under `torch.inference_mode`. Each side runs
alone in its own process, in alternating sessions, with the glibc setting of
design/FACTS.md, each round started when no other process kept the CPU busy
(waits at most 30 s). Writes the `dit_sampling` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import report  # pylint: disable=g-import-not-at-top

STEPS, ACTION = 5, 7
HIDDEN, DEPTH, HEADS = 512, 6, 8
MALLOC_TUNABLES = ("glibc.malloc.mmap_max=0:"
                   "glibc.malloc.trim_threshold=34359738368")


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


def _timed(fn, rounds: int) -> list[float]:
  times = []
  for _ in range(rounds):
    start = time.time()
    while time.time() - start < 30 and _cpu_busy() > 0.1:
      pass
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return times


def worker_jax(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from lary_jax.probes import dit_decoder  # pylint: disable=g-import-not-at-top
  from tests.probes import torch_probe  # pylint: disable=g-import-not-at-top
  z = np.load(args.latents)[:args.batch]
  config = dit_decoder.Config(latent_dim=z.shape[1], action_dim=ACTION,
                              steps=STEPS, hidden=HIDDEN, depth=DEPTH,
                              num_heads=HEADS,
                              sample_timesteps=args.inference_steps)
  graphdef, state = nnx.split(nnx.eval_shape(
      lambda: dit_decoder.make(config, seed=0)))
  state = torch_probe.load_into(state,
                                dict(np.load(args.weights + ".npz")))

  def predict(state, z, key):
    return dit_decoder.predict(nnx.merge(graphdef, state), z, key)

  key = jax.random.key(0)
  t = time.perf_counter()
  compiled = jax.jit(predict).lower(state, z, key).compile()
  compile_s = time.perf_counter() - t
  out = np.asarray(compiled(state, z, key))
  times = _timed(lambda: compiled(state, z, key).block_until_ready(),
                 args.rounds)
  return {"times": times, "compile_s": compile_s,
          "max_abs": float(np.abs(out).max())}


def worker_torch(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from diffusers import DDPMScheduler  # pylint: disable=g-import-not-at-top
  from tests.probes import torch_dit  # pylint: disable=g-import-not-at-top
  z = torch.from_numpy(np.load(args.latents)[:args.batch])
  model = torch_dit.TorchDiT(z.shape[1], ACTION, STEPS, HIDDEN, DEPTH, HEADS)
  model.load_state_dict(torch.load(args.weights + ".pt"))
  model.eval()
  scheduler = DDPMScheduler(num_train_timesteps=1000,
                            beta_schedule="squaredcos_cap_v2",
                            clip_sample=True, prediction_type="epsilon")

  def run():
    with torch.inference_mode():
      x = torch.randn(len(z), STEPS, ACTION)
      scheduler.set_timesteps(args.inference_steps)
      for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.unsqueeze(0), z), t, x).prev_sample
    return x

  out = run()
  times = _timed(run, args.rounds)
  return {"times": times, "threads": torch.get_num_threads(),
          "max_abs": float(out.abs().max())}


def _make_inputs(tmp: str, latent: int, batch: int) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  from tests.probes import torch_dit  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = torch_dit.TorchDiT(latent, ACTION, STEPS, HIDDEN, DEPTH, HEADS)
  # Upstream's init has a zero final layer (eps = 0); random weights make
  # the sampled values depend on the network, as after training.
  with torch.no_grad():
    model.final.weight.normal_(std=0.02)
  torch.save(model.state_dict(), os.path.join(tmp, "weights.pt"))
  np.savez(os.path.join(tmp, "weights.npz"), **torch_dit.jax_params(model))
  z = np.random.default_rng(0).standard_normal((batch, latent))
  np.save(os.path.join(tmp, "latents.npy"), z.astype(np.float32))


def _run_worker(side: str, batch: int, args, tmp: str) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", side,
         "--batch", str(batch), "--rounds", str(args.rounds),
         "--inference_steps", str(args.inference_steps),
         "--weights", os.path.join(tmp, "weights"),
         "--latents", os.path.join(tmp, "latents.npy")]
  env = dict(os.environ)
  env.setdefault("GLIBC_TUNABLES", MALLOC_TUNABLES)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, env=env,
                       cwd=ROOT).stdout
  return json.loads(out.decode().strip().splitlines()[-1])


def step_flops(batch: int, latent: int, condition: bool) -> float:
  """Matmul FLOPs of one DiT evaluation (condition: include z's Linear)."""
  tokens = batch * (1 + STEPS)
  per_layer = 2 * tokens * 12 * HIDDEN**2 + 4 * batch * (1 + STEPS)**2 * HIDDEN
  embed = 2 * batch * (256 * HIDDEN + HIDDEN**2 + STEPS * ACTION * HIDDEN)
  head = 2 * batch * STEPS * HIDDEN * ACTION
  cond = 2 * batch * latent * HIDDEN if condition else 0
  return DEPTH * per_layer + embed + head + cond


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", default="256,32")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--sessions", type=int, default=2)
  parser.add_argument("--latent", type=int, default=2048)
  parser.add_argument("--inference_steps", type=int, default=500)
  parser.add_argument("--quick", action="store_true",
                      help="batch 8, 10 steps, one round; prints only")
  parser.add_argument("--worker", choices=["jax", "torch"])
  parser.add_argument("--batch", type=int)
  parser.add_argument("--weights")
  parser.add_argument("--latents")
  args = parser.parse_args()
  if args.worker:
    fn = {"jax": worker_jax, "torch": worker_torch}[args.worker]
    print(json.dumps(fn(args)))
    return
  if args.quick:
    args.batches, args.inference_steps = "8", 10
    args.rounds = args.sessions = 1
  batches = [int(b) for b in args.batches.split(",")]

  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    _make_inputs(tmp, args.latent, max(batches))
    for batch in batches:
      runs = {"jax": [], "torch": []}
      for _ in range(args.sessions):
        for side in runs:
          runs[side].append(_run_worker(side, batch, args, tmp))
          print(batch, side, runs[side][-1]["times"], file=sys.stderr)
      times = {s: [t for r in v for t in r["times"]] for s, v in runs.items()}
      rows.append((batch, runs, times))

  n = args.inference_steps
  lines = []
  for batch, runs, times in rows:
    best = {s: min(v) for s, v in times.items()}
    med = {s: statistics.median(v) for s, v in times.items()}
    flops = {"jax": n * step_flops(batch, args.latent, False),
             "torch": n * step_flops(batch, args.latent, True)}
    lines.append(
        f"| {batch} | {batch / best['jax']:.2f} / {batch / med['jax']:.2f} | "
        f"{batch / best['torch']:.2f} / {batch / med['torch']:.2f} | "
        f"**{best['torch'] / best['jax']:.2f}x** / "
        f"{med['torch'] / med['jax']:.2f}x | "
        f"{1e3 * best['jax'] / n:.1f} / {1e3 * best['torch'] / n:.1f} | "
        f"{flops['jax'] / best['jax'] / 1e9:.0f} / "
        f"{flops['torch'] / best['torch'] / 1e9:.0f} | "
        f"{runs['jax'][-1]['compile_s']:.1f} |")
  threads = rows[0][1]["torch"][-1]["threads"]
  body = f"""## dit_sampling: DiT decoder, {n}-step DDPM sampling, CPU fp32

`python benchmarks/dit_sampling.py --batches {args.batches} --rounds \
{args.rounds} --sessions {args.sessions} --latent {args.latent} \
--inference_steps {n}` ({report.machine()}).
Upstream's DiT (hidden {HIDDEN}, depth {DEPTH}, {HEADS} heads), chunk \
{STEPS} x {ACTION}, latent {args.latent}, random weights shared by both \
sides; {args.rounds * args.sessions} timed rounds a side, each side alone in \
its own process. lary-jax: `dit_decoder.predict` jitted, the {n} steps one \
`lax.scan`, the condition embedded once. PyTorch ({threads} threads): \
upstream's Python loop over diffusers' `DDPMScheduler.step`, the condition \
re-embedded every step.

| batch | lary-jax samples/s (best / median) \
| PyTorch samples/s (best / median) | speed-up (best / median) \
| ms a step, JAX / torch | GFLOP/s, JAX / torch | JAX compile s |
|---|---|---|---|---|---|---|
{chr(10).join(lines)}
"""
  print(body)
  if args.quick:
    print("(quick run: BENCHMARKS.md left as it was)", file=sys.stderr)
  else:
    report.write_section("dit_sampling", body)


if __name__ == "__main__":
  main()
