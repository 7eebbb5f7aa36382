"""Regression probe on CPU: lary-jax vs upstream's PyTorch loops.

  python benchmarks/regression_probe.py          # quick (~4 min), prints
  python benchmarks/regression_probe.py --full   # the issue's shapes
      [--only mlp|dit] [--rounds N] [--sessions N] [--dit_batches 32,4]
      [--core_settings 0,1] [--idle_wait S]

Two measurements, fp32, random weights shared by both sides:

- MLP decoder, one training step (upstream's: LayerNorm, Linear to 4096, two
  residual blocks, Linear to the 5 x 7 chunk; Huber loss; AdamW lr 1e-4,
  wd 1e-4, constant after a linear warm-up) on flattened pair tokens,
  [B, 2, 16, 1024] -> 32,768 inputs in `--full`. lary-jax: value_and_grad
  of `mlp_decoder.loss` and `train_regressor`'s optax AdamW under one
  `jax.jit`, parameters and moments donated, with
  `xla_options.training_step`, as `train_regressor.train` builds it.
  PyTorch: upstream's loop over `tests/probes/torch_mlp.py` (zero_grad,
  forward, Huber, backward, `AdamW.step`, diffusers'
  constant-with-warm-up scheduler, `loss.item()`). Model FLOP/s count 3x
  the forward's matmuls; executed FLOP/s (XLA's count for lary-jax) are
  compared with a jitted 2048^3 fp32 matmul measured the same way (the
  GEMM peak).
- DiT decoder, DDPM sampling (upstream's DiT: hidden 512, depth 6, 8 heads;
  squaredcos_cap_v2, 500 "leading" steps in `--full`). lary-jax runs
  `dit_decoder.predict` under one `jax.jit` (the steps are a `lax.scan`, the
  condition embedded once); PyTorch runs upstream's Python `for` over
  diffusers' `DDPMScheduler.timesteps` (DiT with the condition re-embedded,
  then `scheduler.step`) under `torch.inference_mode`.

Each side runs alone in its own process (malloc never unmaps:
`GLIBC_TUNABLES=glibc.malloc.mmap_max=0:...trim_threshold=32G` for both), sides alternating A/B/A/B over sessions, once
per core setting (0: each framework's default threads on all cores; 1: the
process confined to one core). After an untimed warm-up, each timed round
waits (at most `--idle_wait` s) for the other processes on the machine to
quieten and records the CPU share they used. Best = fastest round, median
over all rounds of all sessions. `--full` writes the `regression_probe`
section of BENCHMARKS.md; the quick run only prints.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import report  # pylint: disable=g-import-not-at-top

MLP_HIDDEN, MLP_BLOCKS = 4096, 2
STEPS, ACTION = 5, 7  # upstream's action chunk: 5 steps x 7 dims
DIT_HIDDEN, DIT_DEPTH, DIT_HEADS = 512, 6, 8
WARMUP_STEPS = 4  # short, so that the timed steps run at the full lr
GEMM_N = report.GEMM_N
# Page faults on freshly mapped buffers are costly on these VMs.
MALLOC_TUNABLES = ("glibc.malloc.mmap_max=0:"
                   "glibc.malloc.trim_threshold=34359738368")
MODES = {
    "quick": {"mlp_tokens": "2,4,1024", "mlp_batch": 256, "rounds": 2,
              "sessions": 2, "dit_batches": "8", "dit_rounds": 2,
              "dit_sessions": 1, "inference_steps": 50, "latent": 2048,
              "idle_wait": 3.0, "core_settings": "0"},
    "full": {"mlp_tokens": "2,16,1024", "mlp_batch": 256, "rounds": 3,
             "sessions": 3, "dit_batches": "32,4", "dit_rounds": 1,
             "dit_sessions": 2, "inference_steps": 500, "latent": 2048,
             "idle_wait": 10.0, "core_settings": "0,1"},
}


# ---------------------------------------------------------------- measuring


def _cpu_s() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def _peak_gib() -> float:
  """This process's peak RSS. (getrusage's ru_maxrss would do, but it keeps
  the parent's peak across fork + exec.)"""
  with open("/proc/self/status") as f:
    hwm = next(line for line in f if line.startswith("VmHWM:"))
  return int(hwm.split()[1]) / 2**20


def _rss_gib() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def _others_busy(dt: float = 1.0) -> float:
  """Share of all cores that other processes kept busy over `dt` seconds."""
  hz = os.sysconf("SC_CLK_TCK")

  def read():
    with open("/proc/stat") as f:
      v = [int(x) for x in f.readline().split()[1:9]]  # up to steal
    return sum(v) - v[3] - v[4], sum(v), _cpu_s() * hz

  try:
    (b0, t0, own0), _, (b1, t1, own1) = read(), time.sleep(dt), read()
  except OSError:
    return 0.0
  return max(0.0, (b1 - b0) - (own1 - own0)) / max(t1 - t0, 1)


def _wait_idle(timeout: float) -> float:
  """Waits (at most `timeout` s) for the others to use < 10% of the cores;
  returns their last measured share."""
  start = time.time()
  busy = _others_busy()
  while busy > 0.1 and time.time() - start < timeout:
    busy = _others_busy()
  return busy


def _timed(fn, rounds: int, idle_wait: float) -> dict[str, list[float]]:
  """Wall and CPU seconds of `rounds` calls, and the others' CPU share."""
  out = {"times": [], "cpu": [], "busy": []}
  for _ in range(rounds):
    out["busy"].append(_wait_idle(idle_wait))
    c, t = _cpu_s(), time.perf_counter()
    fn()
    out["times"].append(time.perf_counter() - t)
    out["cpu"].append(_cpu_s() - c)
  return out


# ------------------------------------------------------------------ workers


def _mlp_inputs(tmp: str) -> tuple[np.ndarray, np.ndarray]:
  return (np.load(os.path.join(tmp, "features.npy")),  # [B, T, N, D]
          np.load(os.path.join(tmp, "target.npy")))  # [B, S * A]


def worker_mlp_jax(args) -> dict:
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx
  from lary_jax import xla_options
  from lary_jax.probes import mlp_decoder
  from lary_jax.probes import train_regressor as tr
  from tests.probes import torch_probe
  features, target = (jnp.asarray(a) for a in _mlp_inputs(args.tmp))
  config = mlp_decoder.Config(tr.input_dim(features.shape[1:], 0),
                              target.shape[1], hidden=MLP_HIDDEN,
                              blocks=MLP_BLOCKS)
  graphdef, params = nnx.split(nnx.eval_shape(
      lambda: mlp_decoder.make(config, seed=0)))
  params = torch_probe.load_into(
      params, dict(np.load(os.path.join(args.tmp, "mlp.npz"))))
  # pylint: disable-next=protected-access
  tx = tr._optimizer(tr.Options(), WARMUP_STEPS)
  opt_state = tx.init(params)
  loaded = _rss_gib()

  # train_regressor.train's step, on one device, without the data loader.
  def step_fn(params, opt_state, step, features, target):
    del step  # the MLP's loss takes no noise key
    z = tr.flatten_features(features, 0)

    def loss_fn(p):
      return mlp_decoder.loss(nnx.merge(graphdef, p), z, target, None)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  t = time.perf_counter()
  compiled = jax.jit(
      step_fn, donate_argnums=(0, 1),
      compiler_options=xla_options.training_step(jax.default_backend())).lower(
          params, opt_state, jnp.int32(0), features, target).compile()
  compile_s = time.perf_counter() - t
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  state, losses = {"params": params, "opt": opt_state}, []
  del params, opt_state

  def one_step():
    state["params"], state["opt"], loss = compiled(
        state["params"], state["opt"], jnp.int32(len(losses)), features,
        target)
    losses.append(float(loss))  # waits for the step, like `.item()`

  one_step()
  out = _timed(one_step, args.rounds, args.idle_wait)
  return {**out, "compile_s": compile_s, "rss_loaded": loaded,
          "peak": _peak_gib(), "losses": losses,
          "threads": len(os.sched_getaffinity(0)),
          "xla_flops": float(cost.get("flops", 0))}


def worker_mlp_torch(args) -> dict:
  # pylint: disable=g-import-not-at-top
  import torch
  from diffusers.optimization import get_constant_schedule_with_warmup
  from torch.nn import functional as F
  from tests.probes import torch_mlp
  features, target = _mlp_inputs(args.tmp)
  x = torch.from_numpy(features.reshape(len(features), -1))  # upstream's flat
  y = torch.from_numpy(target)
  model = torch_mlp.TorchMlp(x.shape[1], y.shape[1], MLP_HIDDEN, MLP_BLOCKS)
  model.load_state_dict(torch.load(os.path.join(args.tmp, "mlp.pt")))
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4,
                                weight_decay=1e-4)
  scheduler = get_constant_schedule_with_warmup(optimizer, WARMUP_STEPS)
  loaded = _rss_gib()
  losses = []

  def one_step():
    optimizer.zero_grad()
    loss = F.huber_loss(model(x), y, delta=1.0)
    loss.backward()
    optimizer.step()
    scheduler.step()
    losses.append(loss.item())

  one_step()
  out = _timed(one_step, args.rounds, args.idle_wait)
  return {**out, "rss_loaded": loaded, "peak": _peak_gib(),
          "losses": losses, "threads": torch.get_num_threads()}


def worker_gemm(args) -> dict:
  mm = report.gemm_step()
  _wait_idle(args.idle_wait)  # once: its rounds are short
  return _timed(mm, 4 * args.rounds, 0.0)


def worker_dit_jax(args) -> dict:
  # pylint: disable=g-import-not-at-top
  import jax
  from flax import nnx
  from lary_jax.probes import dit_decoder
  from tests.probes import torch_probe
  z = np.load(os.path.join(args.tmp, "latents.npy"))[:args.batch]
  config = dit_decoder.Config(latent_dim=z.shape[1], action_dim=ACTION,
                              steps=STEPS, hidden=DIT_HIDDEN,
                              depth=DIT_DEPTH, num_heads=DIT_HEADS,
                              sample_timesteps=args.inference_steps)
  graphdef, state = nnx.split(nnx.eval_shape(
      lambda: dit_decoder.make(config, seed=0)))
  state = torch_probe.load_into(
      state, dict(np.load(os.path.join(args.tmp, "dit.npz"))))
  loaded = _rss_gib()

  def predict(state, z, key):
    return dit_decoder.predict(nnx.merge(graphdef, state), z, key)

  key = jax.random.key(0)
  t = time.perf_counter()
  compiled = jax.jit(predict).lower(state, z, key).compile()
  compile_s = time.perf_counter() - t
  sample = np.asarray(compiled(state, z, key))
  out = _timed(lambda: compiled(state, z, key).block_until_ready(),
               args.rounds, args.idle_wait)
  return {**out, "compile_s": compile_s, "rss_loaded": loaded,
          "peak": _peak_gib(), "max_abs": float(np.abs(sample).max())}


def worker_dit_torch(args) -> dict:
  # pylint: disable=g-import-not-at-top
  import torch
  from diffusers import DDPMScheduler
  from tests.probes import torch_dit
  z = torch.from_numpy(
      np.load(os.path.join(args.tmp, "latents.npy"))[:args.batch])
  model = torch_dit.TorchDiT(z.shape[1], ACTION, STEPS, DIT_HIDDEN,
                             DIT_DEPTH, DIT_HEADS)
  model.load_state_dict(torch.load(os.path.join(args.tmp, "dit.pt")))
  model.eval()
  scheduler = DDPMScheduler(num_train_timesteps=1000,
                            beta_schedule="squaredcos_cap_v2",
                            clip_sample=True, prediction_type="epsilon")
  loaded = _rss_gib()

  def sample(steps=args.inference_steps):
    with torch.inference_mode():
      x = torch.randn(len(z), STEPS, ACTION)
      scheduler.set_timesteps(steps)
      for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.unsqueeze(0), z), t, x).prev_sample
    return x

  first = sample(steps=10)  # warm-up: every op, fewer steps
  out = _timed(sample, args.rounds, args.idle_wait)
  return {**out, "rss_loaded": loaded, "peak": _peak_gib(),
          "threads": torch.get_num_threads(),
          "max_abs": float(first.abs().max())}


WORKERS = {"mlp_jax": worker_mlp_jax, "mlp_torch": worker_mlp_torch,
           "gemm": worker_gemm, "dit_jax": worker_dit_jax,
           "dit_torch": worker_dit_torch}


# ------------------------------------------------------------------- driver


def _make_mlp_inputs(tmp: str, tokens: tuple[int, ...], batch: int) -> None:
  # pylint: disable=g-import-not-at-top
  import torch
  from tests.probes import torch_mlp
  torch.manual_seed(0)
  model = torch_mlp.TorchMlp(int(np.prod(tokens)), STEPS * ACTION,
                             MLP_HIDDEN, MLP_BLOCKS)
  torch.save(model.state_dict(), os.path.join(tmp, "mlp.pt"))
  np.savez(os.path.join(tmp, "mlp.npz"), **torch_mlp.jax_params(model))
  rng = np.random.default_rng(0)
  np.save(os.path.join(tmp, "features.npy"),
          rng.standard_normal((batch, *tokens), np.float32))
  np.save(os.path.join(tmp, "target.npy"),
          rng.standard_normal((batch, STEPS * ACTION), np.float32))


def _make_dit_inputs(tmp: str, latent: int, batch: int) -> None:
  # pylint: disable=g-import-not-at-top
  import torch
  from tests.probes import torch_dit
  torch.manual_seed(0)
  model = torch_dit.TorchDiT(latent, ACTION, STEPS, DIT_HIDDEN, DIT_DEPTH,
                             DIT_HEADS)
  # Upstream's init has a zero final layer (eps = 0); random weights make
  # the sampled values depend on the network, as after training.
  with torch.no_grad():
    model.final.weight.normal_(std=0.02)
  torch.save(model.state_dict(), os.path.join(tmp, "dit.pt"))
  np.savez(os.path.join(tmp, "dit.npz"), **torch_dit.jax_params(model))
  z = np.random.default_rng(0).standard_normal((batch, latent), np.float32)
  np.save(os.path.join(tmp, "latents.npy"), z)


def _run_worker(name: str, args, tmp: str, cores: int, **extra) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", name,
         "--tmp", tmp, "--rounds", str(extra.pop("rounds", args.rounds)),
         "--idle_wait", str(args.idle_wait),
         "--inference_steps", str(args.inference_steps),
         "--cores", str(cores)]
  for k, v in extra.items():
    cmd += [f"--{k}", str(v)]
  env = dict(os.environ)
  env.setdefault("GLIBC_TUNABLES", MALLOC_TUNABLES)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, env=env,
                       cwd=ROOT).stdout
  result = json.loads(out.decode().strip().splitlines()[-1])
  print(name, f"cores={cores or 'all'}", extra or "",
        [round(t, 3) for t in result["times"]], file=sys.stderr, flush=True)
  return result


def _pooled(runs: list[dict], key: str) -> list[float]:
  return [v for r in runs for v in r[key]]


def _cores_label(cores: int) -> str:
  return "all cores" if cores == 0 else f"{cores} core" + "s" * (cores != 1)


def _threads_label(threads: int) -> str:
  return f"{threads} thread" + "s" * (threads != 1)


def mlp_flops(batch: int, input_dim: int, hidden: int = MLP_HIDDEN,
              blocks: int = MLP_BLOCKS, output: int = STEPS * ACTION
              ) -> float:
  """Matmul FLOPs of one training step: 3x the forward's."""
  forward = 2 * batch * (input_dim * hidden + blocks * hidden**2
                         + hidden * output)
  return 3.0 * forward


def dit_step_flops(batch: int, latent: int, condition: bool) -> float:
  """Matmul FLOPs of one DiT evaluation (condition: include z's Linear)."""
  tokens = batch * (1 + STEPS)
  per_layer = (2 * tokens * 12 * DIT_HIDDEN**2
               + 4 * batch * (1 + STEPS)**2 * DIT_HIDDEN)
  embed = 2 * batch * (256 * DIT_HIDDEN + DIT_HIDDEN**2
                       + STEPS * ACTION * DIT_HIDDEN)
  head = 2 * batch * STEPS * DIT_HIDDEN * ACTION
  cond = 2 * batch * latent * DIT_HIDDEN if condition else 0
  return DIT_DEPTH * per_layer + embed + head + cond


def _mlp_section(args, results: dict[int, dict[str, list[dict]]]) -> str:
  tokens = tuple(int(t) for t in args.mlp_tokens.split(","))
  flops = mlp_flops(args.mlp_batch, int(np.prod(tokens)))
  first = next(iter(results.values()))
  executed = {"mlp_jax": first["mlp_jax"][0]["xla_flops"],
              "mlp_torch": flops}
  rows, notes = [], []
  for cores, runs in results.items():
    times = {s: _pooled(v, "times") for s, v in runs.items()}
    best = {s: min(v) for s, v in times.items()}
    med = {s: statistics.median(v) for s, v in times.items()}
    cpu = {s: statistics.median(_pooled(v, "cpu")) for s, v in runs.items()}
    busy = {s: statistics.mean(_pooled(v, "busy")) for s, v in runs.items()}
    peak = 2 * GEMM_N**3 / best["gemm"]
    for side, name in (("mlp_jax", "lary-jax"), ("mlp_torch", "PyTorch")):
      rate = executed[side] / best[side]
      rows.append(
          f"| {name}, {_cores_label(cores)} "
          f"({_threads_label(runs[side][-1]['threads'])}) | "
          f"{1 / best[side]:.3f} / {1 / med[side]:.3f} | "
          f"{cpu[side]:.2f} | {flops / best[side] / 1e9:.0f} | "
          f"{rate / 1e9:.0f} = {rate / peak:.0%} | "
          f"{max(r['peak'] for r in runs[side]):.2f} / "
          f"{runs[side][-1]['rss_loaded']:.2f} | {busy[side]:.0%} |")
    loss_diff = max(
        float(np.abs(np.subtract(a["losses"], b["losses"])).max())
        for a, b in zip(runs["mlp_jax"], runs["mlp_torch"]))
    notes.append(
        f"- {_cores_label(cores).capitalize()}: lary-jax / PyTorch "
        f"**{best['mlp_torch'] / best['mlp_jax']:.2f}x** (best), "
        f"{med['mlp_torch'] / med['mlp_jax']:.2f}x (median), "
        f"{cpu['mlp_torch'] / cpu['mlp_jax']:.2f}x in CPU seconds; GEMM peak "
        f"{peak / 1e9:.0f} GFLOP/s best, "
        f"{2 * GEMM_N**3 / med['gemm'] / 1e9:.0f} median "
        f"({len(times['gemm'])} rounds). Losses of every step, same weights "
        f"and batch: max |JAX - torch| {loss_diff:.1e}.")
  jax_rt = first["mlp_jax"][-1]
  n_steps = len(_pooled(first["mlp_jax"], "times"))
  return f"""### MLP decoder: one training step

Input {' x '.join(map(str, tokens))} = {int(np.prod(tokens)):,} floats per \
example, batch {args.mlp_batch}, hidden {MLP_HIDDEN}, {MLP_BLOCKS} residual \
blocks, output {STEPS} x {ACTION}; forward + backward + AdamW. Model FLOPs: \
{flops / 1e9:.0f} GFLOP a step (3x the forward's matmuls), which PyTorch \
executes; lary-jax executes {executed["mlp_jax"] / 1e9:.0f} (XLA's count), \
since its input LayerNorm -> Linear pair (`mlp_decoder.norm_linear`) gets \
every parameter gradient from one matmul where autodiff takes two. \
{n_steps} timed steps a side and setting ({args.sessions} sessions x \
{args.rounds}), after one warm-up step per session.

| side, cores | steps/s (best / median) | CPU s a step (median) \
| model GFLOP/s (best) | executed GFLOP/s (best) = of GEMM peak \
| peak / after-load RSS GiB | others' CPU share |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

{chr(10).join(notes)}
- JAX compile {jax_rt["compile_s"]:.1f} s (once per shape).
"""


def _dit_section(args, rows: list[tuple[int, int, dict[str, list[dict]]]]
                 ) -> str:
  n = args.inference_steps
  lines = []
  for cores, batch, runs in rows:
    times = {s: _pooled(v, "times") for s, v in runs.items()}
    best = {s: min(v) for s, v in times.items()}
    med = {s: statistics.median(v) for s, v in times.items()}
    flops = {"dit_jax": n * dit_step_flops(batch, args.latent, False),
             "dit_torch": n * dit_step_flops(batch, args.latent, True)}
    peak = {s: max(r["peak"] for r in v) for s, v in runs.items()}
    busy = statistics.mean(_pooled(runs["dit_jax"] + runs["dit_torch"],
                                   "busy"))
    lines.append(
        f"| {batch} | {_cores_label(cores)} | "
        f"{batch / best['dit_jax']:.2f} / {batch / med['dit_jax']:.2f} | "
        f"{batch / best['dit_torch']:.2f} / "
        f"{batch / med['dit_torch']:.2f} | "
        f"**{best['dit_torch'] / best['dit_jax']:.2f}x** / "
        f"{med['dit_torch'] / med['dit_jax']:.2f}x | "
        f"{1e3 * best['dit_jax'] / n:.1f} / "
        f"{1e3 * best['dit_torch'] / n:.1f} | "
        f"{flops['dit_jax'] / best['dit_jax'] / 1e9:.0f} / "
        f"{flops['dit_torch'] / best['dit_torch'] / 1e9:.0f} | "
        f"{peak['dit_jax']:.2f} / {peak['dit_torch']:.2f} | "
        f"{runs['dit_jax'][-1]['compile_s']:.1f} | {busy:.0%} |")
  return f"""### DiT decoder: {n}-step DDPM sampling

Upstream's DiT (hidden {DIT_HIDDEN}, depth {DIT_DEPTH}, {DIT_HEADS} heads), \
chunk {STEPS} x {ACTION}, latent {args.latent}; \
{args.dit_sessions * args.dit_rounds} timed samplings a side, batch and \
setting ({args.dit_sessions} sessions x {args.dit_rounds}). lary-jax: \
`dit_decoder.predict` jitted, the {n} steps one `lax.scan`, the condition \
embedded once. PyTorch: upstream's Python loop over diffusers' \
`DDPMScheduler.step`, the condition re-embedded every step. GFLOP/s count \
each side's own matmuls.

| batch | cores | lary-jax samples/s (best / median) \
| PyTorch samples/s (best / median) | speed-up (best / median) \
| ms a step, JAX / torch (best) | GFLOP/s, JAX / torch | peak RSS GiB, \
JAX / torch | JAX compile s | others' CPU share |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(lines)}
"""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--full", action="store_true",
                      help="the issue's shapes; writes BENCHMARKS.md")
  parser.add_argument("--only", choices=["mlp", "dit"])
  for key, value in MODES["full"].items():
    parser.add_argument(f"--{key}", type=type(value))
  parser.add_argument("--worker", choices=sorted(WORKERS))
  parser.add_argument("--tmp")
  parser.add_argument("--batch", type=int)
  parser.add_argument("--cores", type=int, default=0)
  args = parser.parse_args()
  if args.worker:
    if args.cores:  # before any import sizes a thread pool
      os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[-args.cores:])
    print(json.dumps(WORKERS[args.worker](args)))
    return
  command = " ".join(["python benchmarks/regression_probe.py", *sys.argv[1:]])
  for key, value in MODES["full" if args.full else "quick"].items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  settings = [int(c) for c in args.core_settings.split(",")]

  sections = []
  with tempfile.TemporaryDirectory() as tmp:
    if args.only in (None, "mlp"):
      tokens = tuple(int(t) for t in args.mlp_tokens.split(","))
      _make_mlp_inputs(tmp, tokens, args.mlp_batch)
      results = {}
      for cores in settings:
        runs = results[cores] = {"mlp_jax": [], "mlp_torch": [], "gemm": []}
        for _ in range(args.sessions):
          for side in runs:
            runs[side].append(_run_worker(side, args, tmp, cores))
      sections.append(_mlp_section(args, results))
    if args.only in (None, "dit"):
      batches = [int(b) for b in args.dit_batches.split(",")]
      _make_dit_inputs(tmp, args.latent, max(batches))
      rows = []
      for batch in batches:
        for cores in settings:
          runs = {"dit_jax": [], "dit_torch": []}
          for _ in range(args.dit_sessions):
            for side in runs:
              runs[side].append(_run_worker(side, args, tmp, cores,
                                            batch=batch,
                                            rounds=args.dit_rounds))
          rows.append((cores, batch, runs))
      sections.append(_dit_section(args, rows))

  body = f"""## regression_probe: MLP training and DiT sampling, CPU fp32

`{command}` ({report.machine()}). Each side runs alone in its own process, \
the sides alternating (A/B/A/B), malloc never unmapping \
(`GLIBC_TUNABLES={MALLOC_TUNABLES}`) for both; "1 core" confines a \
worker to one core (both frameworks then size their thread pools to it), "all cores" leaves each framework its default. \
The machine is shared and was loaded: each timed round first waited (at \
most {args.idle_wait:.0f} s) for the other processes to quieten, and \
"others' CPU share" is the mean share of both cores that they still used \
just before the rounds. Under such load two threads that must meet at every \
op often wait for a core, so wall-clock figures (and the GEMM peak) move \
with it, "all cores" runs more than "1 core" ones; compare the two sides \
within a setting, through the ratios and the CPU seconds.

{chr(10).join(sections)}"""
  print(body)
  if args.full:
    report.write_section("regression_probe", body)
  else:
    print("(quick run: BENCHMARKS.md left as it was)", file=sys.stderr)


if __name__ == "__main__":
  main()
