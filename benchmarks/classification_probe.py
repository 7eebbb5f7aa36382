"""Attentive-probe training step on CPU: lary-jax vs upstream's PyTorch loop.

  python benchmarks/classification_probe.py [--lam_batch 16]
      [--encoder_batch 1] [--rounds 2] [--sessions 1] [--full]
  python benchmarks/classification_probe.py --memory DIR

Five probes of upstream's size (model_dim 768, 16 heads, depth 4, 54
classes) take one training step on one batch of random features, in fp32,
for two token shapes: LAM-shaped [B, 8, 16, 1024] (128 tokens) and
encoder-shaped [B, 9, 256, 1024] (2304 tokens).

- lary-jax: `multi_head.make_train_step`, the five heads under `lax.map`,
  per-head AdamW, label smoothing 0.1.
- PyTorch: upstream's loop re-created with `tests/probes/torch_probe.py`:
  five `TorchProbe`s, each with its own `torch.optim.AdamW`, forward,
  backward and step per head on the same batch, label smoothing 0.1, torch
  threads = cores.

Each side runs alone in its own process (the same `GLIBC_TUNABLES` for
both), one warm-up step, then `--rounds` timed steps; a
jitted 2048^3 fp32 matmul, measured the same way, is the GEMM peak that the
achieved FLOP/s is compared with. Model FLOPs are counted analytically: 3x
the forward's matmul FLOPs, attention included. `--full` runs the issue's
batch sizes. `--compute_dtype bfloat16 --device cuda` run both sides in bf16
(PyTorch under autocast) on a GPU, `--model_dim/--probe_heads/--depth`
another probe size (benchmarks/device_check.py uses both). Writes the
`classification_probe` section of BENCHMARKS.md.

`--memory DIR` is the protocol's probe where it does not fit at once:
`classify --model pixels --dataset sim_classification` with the default
config on a tiny LARY-Sim (rendered, prepared and extracted into DIR if
missing), run until it has printed its micro-batches and its projection
(timed on its first finished micro-batches), then stopped. Writes the
`classification_probe_memory` section: what it printed, its peak RSS
(VmHWM) and the host's free memory when it started.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import report  # pylint: disable=g-import-not-at-top

SHAPES = {"lam": (8, 16, 1024), "encoder": (9, 256, 1024)}  # [T, N, D]
CLASSES = 54
NUM_HEADS = 5
GEMM_N = report.GEMM_N
FULL = {"lam_batch": 256, "encoder_batch": 8}
# Page faults on freshly mapped buffers are costly on these VMs: glibc keeps
# freed memory instead of returning it, for both sides.
MALLOC_TUNABLES = ("glibc.malloc.mmap_max=0:"
                   "glibc.malloc.trim_threshold=34359738368")


def probe_flops(batch: int, frames: int, tokens: int, dim: int,
                model_dim: int = 768, depth: int = 4,
                classes: int = CLASSES, heads: int = NUM_HEADS) -> float:
  """Training FLOPs of one step: 3x the forward's matmuls, all heads."""
  n, d = frames * tokens, model_dim
  blocks = (depth - 1) * (24 * n * d * d + 4 * n * n * d)
  cross = 2 * d * d + 4 * n * d * d + 4 * n * d + 16 * d * d
  forward = 2 * n * dim * d + blocks + cross + 2 * d * classes
  return 3.0 * heads * batch * forward


def _cpu_s() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


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


def _timed(step, rounds: int, idle_wait: float) -> dict:
  """Runs `step()` once to warm up, then `rounds` times, each timed."""
  step()
  wall, cpu, load = [], [], []
  for _ in range(rounds):
    start = time.time()
    while time.time() - start < idle_wait and _cpu_busy() > 0.1:
      pass
    load.append(os.getloadavg()[0])
    c, t = _cpu_s(), time.perf_counter()
    step()
    wall.append(time.perf_counter() - t)
    cpu.append(_cpu_s() - c)
  return {"times": wall, "cpu": cpu, "load": load}


def _inputs(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  return (rng.standard_normal(shape, np.float32),
          rng.integers(0, CLASSES, shape[0]))


def worker_jax(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from lary_jax.probes import attentive_probe  # pylint: disable=g-import-not-at-top
  from lary_jax.probes import multi_head  # pylint: disable=g-import-not-at-top
  x, y = _inputs(args.shape)
  config = attentive_probe.Config(
      dim=args.shape[-1], num_classes=CLASSES, model_dim=args.model_dim,
      num_heads=args.probe_heads, depth=args.depth)
  options = multi_head.StepOptions(total_steps=1000,
                                   compute_dtype=args.compute_dtype,
                                   head_batch=args.head_batch)
  graphdef, params = multi_head.init_heads(config, NUM_HEADS, seed=0)
  opt_state = multi_head.init_optimizer(params, options)
  x, y = jnp.asarray(x), jnp.asarray(y)
  t = time.perf_counter()
  step_fn = multi_head.make_train_step(graphdef, options).lower(
      params, opt_state, jnp.int32(0), x, y).compile()
  compile_s = time.perf_counter() - t
  state = {"params": params, "opt": opt_state, "i": 0, "loss": []}

  def step():
    state["params"], state["opt"], loss, _, _ = step_fn(
        state["params"], state["opt"], jnp.int32(state["i"]), x, y)
    state["loss"].append(np.asarray(loss).tolist())
    state["i"] += 1

  out = _timed(step, args.rounds, args.idle_wait)
  return {**out, "compile_s": compile_s, "peak": _peak_gib(),
          "first_loss": state["loss"][0], "threads": os.cpu_count(),
          "xla_flops": report.xla_flops(step_fn)}


def worker_torch(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from tests.probes import torch_probe  # pylint: disable=g-import-not-at-top
  from lary_jax.probes import multi_head  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  x, y = (torch.from_numpy(a).to(args.device) for a in _inputs(args.shape))
  probes = [torch_probe.TorchProbe(args.shape[-1], CLASSES, args.model_dim,
                                   args.probe_heads, args.depth
                                   ).to(args.device)
            for _ in range(NUM_HEADS)]
  optimizers = [torch.optim.AdamW(p.parameters(), lr=lr, weight_decay=wd)
                for p, (lr, wd) in zip(probes, multi_head.HEADS)]
  criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
  # bf16 as upstream trains: autocast, fp32 parameters.
  autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16,
                            enabled=args.compute_dtype == "bfloat16")
  losses = []

  def step():
    row = []
    for probe, opt in zip(probes, optimizers):
      opt.zero_grad(set_to_none=True)
      with autocast:
        loss = criterion(probe(x), y)
      loss.backward()
      opt.step()
      row.append(loss.item())
    losses.append(row)

  out = _timed(step, args.rounds, args.idle_wait)
  return {**out, "peak": _peak_gib(), "first_loss": losses[0],
          "threads": torch.get_num_threads()}


def worker_gemm(args) -> dict:
  return _timed(report.gemm_step(), 8 * args.rounds, args.idle_wait)


def _run_worker(side: str, args, shape: tuple[int, ...] = ()) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", side,
         "--rounds", str(args.rounds), "--head_batch", str(args.head_batch),
         "--idle_wait", str(args.idle_wait), "--compute_dtype",
         args.compute_dtype, "--device", args.device, "--model_dim",
         str(args.model_dim), "--probe_heads", str(args.probe_heads),
         "--depth", str(args.depth)]
  if shape:
    cmd += ["--shape", ",".join(map(str, shape))]
  env = dict(os.environ)
  env.setdefault("GLIBC_TUNABLES", MALLOC_TUNABLES)
  out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, env=env,
                       text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def _row(name: str, runs: list[dict], flops: float, peak: float) -> dict:
  times = [t for r in runs for t in r["times"]]
  cpu = [t for r in runs for t in r["cpu"]]
  return {"name": name, "best": min(times),
          "median": statistics.median(times), "cpu": min(cpu),
          "rss": max(r["peak"] for r in runs),
          "gflops": flops / min(times) / 1e9,
          "of_peak": flops / min(times) / peak,
          "load": [x for r in runs for x in r["load"]]}


def _cli(*argv: str) -> list[str]:
  return [sys.executable, "-m", "lary_jax.main", *argv]


def _memory_section(args) -> str:
  """Runs the protocol's classify on pixels features until it has shown
  its micro-batches and its projection."""
  import threading  # pylint: disable=g-import-not-at-top
  from lary_jax import feature_store  # pylint: disable=g-import-not-at-top
  from lary_jax import workdir_layout  # pylint: disable=g-import-not-at-top
  from lary_jax.probes import memory_fit  # pylint: disable=g-import-not-at-top
  root = os.path.abspath(args.memory)
  data, work = os.path.join(root, "data"), os.path.join(root, "work")
  store = os.path.join(workdir_layout.features_dir(
      workdir_layout.features_root(work), "sim_classification", "train",
      "pixels"), feature_store.MANIFEST)
  if not os.path.exists(store):
    for argv in (("simulate", "--out", data, "--tiny"),
                 ("prepare", "--dataset", "sim", "--data_dir", data,
                  "--workdir", work),
                 ("extract", "--model", "pixels", "--dataset",
                  "sim_classification", "--data_dir", data,
                  "--workdir", work)):
      subprocess.run(_cli(*argv), check=True)
  subprocess.run(["rm", "-rf", workdir_layout.probe_root(
      work, workdir_layout.CLASSIFY)], check=True)
  free = memory_fit.host_free_bytes()
  command = ("classify", "--model", "pixels", "--dataset",
             "sim_classification", "--workdir", work)
  start = time.time()
  proc = subprocess.Popen(_cli(*command), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
  peak = [0.0]
  loads = []

  def watch():
    while proc.poll() is None:
      try:
        with open(f"/proc/{proc.pid}/status") as f:
          hwm = next(x for x in f if x.startswith("VmHWM:"))
        peak[0] = max(peak[0], int(hwm.split()[1]) / 2**20)
      except (OSError, StopIteration):
        pass
      loads.append(os.getloadavg()[0])
      time.sleep(1.0)

  watcher = threading.Thread(target=watch, daemon=True)
  watcher.start()
  shown = []
  for line in iter(proc.stdout.readline, ""):
    text = line.strip()
    print(text, file=sys.stderr)
    if "micro-batches of" in text or "training steps at" in text:
      shown.append((time.time() - start, text))
    if "training steps at" in text:
      break
  stopped = time.time() - start
  proc.kill()
  proc.wait()
  watcher.join()
  lines = "\n".join(f"    [{t:5.0f} s] {text}" for t, text in shown)
  return f"""## classification_probe_memory: the protocol's probe where it does not fit at once

`python benchmarks/classification_probe.py --memory DIR`
({report.machine()}): `{" ".join(command[:5])}` with the default config
(upstream's probe, global batch 256, 20 epochs) on the `--tiny` LARY-Sim's
`pixels` features ([9, 256, 588] a clip, 2304 tokens), stopped once it had
printed its projection ({stopped:.0f} s after it started, seconds below
likewise). The host had {free / 2**30:.1f} GiB free at the start; load
average {min(loads or [0]):.1f}-{max(loads or [0]):.1f} (other processes
share the machine). It printed:

{lines}

Peak RSS (VmHWM) of the run: **{peak[0]:.1f} GiB**.
"""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lam_batch", type=int, default=16)
  parser.add_argument("--encoder_batch", type=int, default=1)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--sessions", type=int, default=1)
  parser.add_argument("--shapes", default=",".join(SHAPES),
                      help="which token shapes to run (comma-separated)")
  parser.add_argument("--head_batch", type=int, default=1)
  parser.add_argument("--compute_dtype", default="float32",
                      choices=["float32", "bfloat16"])
  parser.add_argument("--device", default="cpu",
                      help="the PyTorch side's device (cpu, cuda)")
  parser.add_argument("--model_dim", type=int, default=768,
                      help="probe width (upstream's 768)")
  parser.add_argument("--probe_heads", type=int, default=16)
  parser.add_argument("--depth", type=int, default=4)
  parser.add_argument("--idle_wait", type=float, default=10.0,
                      help="most seconds to wait for an idle CPU per round")
  parser.add_argument("--full", action="store_true",
                      help=f"the issue's batch sizes: {FULL}")
  parser.add_argument("--print_only", action="store_true",
                      help="print the section, leave BENCHMARKS.md alone")
  parser.add_argument("--memory", metavar="DIR",
                      help="run the memory proof in DIR instead")
  parser.add_argument("--worker", choices=["jax", "torch", "gemm"])
  parser.add_argument("--shape", type=lambda s: tuple(map(int, s.split(","))))
  args = parser.parse_args()
  if args.worker:
    fn = {"jax": worker_jax, "torch": worker_torch, "gemm": worker_gemm}
    print(json.dumps(fn[args.worker](args)))
    return
  if args.memory:
    body = _memory_section(args)
    print(body)
    if not args.print_only:
      report.write_section("classification_probe_memory", body)
    return
  if args.full:
    for key, value in FULL.items():
      setattr(args, key, value)

  batches = {"lam": args.lam_batch, "encoder": args.encoder_batch}
  shapes = {s: SHAPES[s] for s in args.shapes.split(",")}
  runs = {(s, k): [] for s in shapes for k in ("jax", "torch")}
  gemm = []
  for _ in range(args.sessions):
    gemm.append(_run_worker("gemm", args))
    for name, tnd in shapes.items():
      for side in ("jax", "torch"):
        runs[name, side].append(
            _run_worker(side, args, (batches[name], *tnd)))
        print(name, side, runs[name, side][-1]["times"], file=sys.stderr)
  gemm_times = [t for r in gemm for t in r["times"]]
  peak = 2 * GEMM_N**3 / min(gemm_times)

  lines = []
  for name, (t, n, d) in shapes.items():
    b = batches[name]
    flops = probe_flops(b, t, n, d, args.model_dim, args.depth)
    ours = _row("lary-jax", runs[name, "jax"], flops, peak)
    theirs = _row("PyTorch", runs[name, "torch"], flops, peak)
    jax_run, torch_run = runs[name, "jax"][-1], runs[name, "torch"][-1]
    loss_diff = float(np.abs(np.subtract(jax_run["first_loss"],
                                         torch_run["first_loss"])).max())
    lines.append(f"### {name}-shaped tokens [{b}, {t}, {n}, {d}] "
                 f"({t * n} tokens)\n")
    lines.append("| | step s (best) | step s (median) | CPU s (best) | "
                 "GFLOP/s | % of GEMM peak | peak RSS |")
    lines.append("|---|---|---|---|---|---|---|")
    for row in (ours, theirs):
      lines.append(f"| {row['name']} | {row['best']:.2f} | "
                   f"{row['median']:.2f} | {row['cpu']:.1f} | "
                   f"{row['gflops']:.0f} | {row['of_peak']:.0%} | "
                   f"{row['rss']:.1f} GiB |")
    loads = ours["load"] + theirs["load"]
    lines.append(
        f"\n- Speed-up, lary-jax / PyTorch: "
        f"**{theirs['best'] / ours['best']:.2f}x** (best), "
        f"{theirs['median'] / ours['median']:.2f}x (median), "
        f"{theirs['cpu'] / ours['cpu']:.2f}x in CPU seconds.\n"
        f"- {flops / 1e12:.2f} TFLOP a step. lary-jax compiles in "
        f"{jax_run['compile_s']:.0f} s (once per shape). First-step losses "
        f"agree within {loss_diff:.2f} (both ~ln {CLASSES} = "
        f"{np.log(CLASSES):.2f}; different random weights). Load average "
        f"during the timed steps: {min(loads):.1f}-{max(loads):.1f}.\n")
  command = "python benchmarks/classification_probe.py" + (
      " --full" if args.full else
      f" --lam_batch {args.lam_batch} --encoder_batch {args.encoder_batch}")
  if args.shapes != ",".join(SHAPES):
    command += f" --shapes {args.shapes}"
  body = f"""## classification_probe: five attentive probes, one training step, CPU fp32

`{command} --rounds {args.rounds} --sessions {args.sessions}`
({report.machine()}). Upstream's probe size (model_dim 768, 16 heads, depth
4, {CLASSES} classes), five heads with their own AdamW on the same batch;
each side alone in its own process, one warm-up step, then {args.rounds}
timed steps x {args.sessions} session(s). GEMM peak (jitted {GEMM_N}^3 fp32
matmul, same conditions): {peak / 1e9:.0f} GFLOP/s best,
{2 * GEMM_N**3 / statistics.median(gemm_times) / 1e9:.0f} median.

""" + "\n".join(lines)
  print(body)
  if not args.print_only:
    report.write_section("classification_probe", body)


if __name__ == "__main__":
  main()
