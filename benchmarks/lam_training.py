"""LAM training steps/s: lary-jax's train_lam step vs upstream's PyTorch LAQ.

  pip install einops beartype   # upstream's imports, not lary-jax's
  python benchmarks/lam_training.py --upstream path/to/LARYBench
      [--shape sim_small|lapa] [--batch N] [--steps N] [--rounds N]
      [--sessions N] [--write]

`--upstream` is a checkout of meituan-longcat/LARYBench (or a `git archive`
of its `get_latent_action/models/laq_model`); its LAQ modules are imported
as tests/fixtures/make_lam_fixtures.py imports them (NSVQ on the CPU).

Both sides train the same pixel LAQ (`--shape`: `lapa.Config.sim_small()`,
the LARY-Sim config, or upstream's `lapa` at 224) on the same random pair
batch, fp32:

- lary-jax: `train_lam.make_train_step`, the step `train_lam` runs (loss,
  gradients, code usage, global-norm clipping 0.5, Adam betas (0.9, 0.99),
  parameters and optimizer state donated), one jitted call per step; the
  frames cross to the device as uint8.
- PyTorch: upstream's `LAQTrainer.train_step` without logging: the LAQ's
  forward (`laq(video, step=s)`), `backward`, `clip_grad_norm_(0.5)`, its
  `get_optimizer(wd=0)` (Adam betas (0.9, 0.99)) `step` and `zero_grad`,
  then `loss.item()`.

Steps are numbered from 5001 on both sides, past LAPA's last dead-code
re-seeding. Each side runs alone in its own process, the sides alternating
A/B/A/B over `--sessions`; each timed round (`--steps` steps after a warm-up
step) records wall and CPU seconds and the share of the cores other
processes used just before it. Best = fastest round, median over all rounds.
`--write` puts the `lam_training` section into BENCHMARKS.md.
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

FIRST_STEP = 5001  # past LAPA's re-seeding schedule
SHAPES = {"sim_small": 32, "lapa": 4, "tiny": 4}  # shape -> default batch


def _cpu_s() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def _others_busy(dt: float = 1.0) -> float:
  """Share of all cores that other processes kept busy over `dt` seconds."""
  hz = os.sysconf("SC_CLK_TCK")

  def read():
    with open("/proc/stat") as f:
      v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v), _cpu_s() * hz

  (b0, t0, own0), _, (b1, t1, own1) = read(), time.sleep(dt), read()
  return max(0.0, (b1 - b0) - (own1 - own0)) / max(t1 - t0, 1)


def config(shape: str):
  """The LAQ config of `--shape` (`tiny`: device_check.py's smoke size)."""
  from lary_jax.lams import lapa  # pylint: disable=g-import-not-at-top
  if shape == "tiny":
    return lapa.Config.sim_small(image_size=28, patch_size=4, dim=32,
                                 quant_dim=8, spatial_depth=1,
                                 temporal_depth=1, dim_head=16, heads=2)
  return getattr(lapa.Config, shape)()


def _timed(one_step, steps: int, rounds: int) -> dict[str, list[float]]:
  out = {"step_s": [], "cpu_s": [], "busy": [], "losses": []}
  out["losses"].append(one_step(0))  # warm-up (and compilation)
  for r in range(rounds):
    out["busy"].append(_others_busy())
    c, t = _cpu_s(), time.perf_counter()
    for i in range(steps):
      loss = one_step(1 + r * steps + i)
    out["step_s"].append((time.perf_counter() - t) / steps)
    out["cpu_s"].append((_cpu_s() - c) / steps)
    out["losses"].append(loss)
  return out


# ------------------------------------------------------------------ workers


def worker_jax(args) -> dict:
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from lary_jax import mesh as mesh_lib
  from lary_jax.lams import lapa
  from lary_jax.lams import train_lam
  cfg = config(args.shape)
  options = train_lam.Options(global_batch=args.batch, lr=1e-4,
                              schedule="constant",
                              compute_dtype=args.compute_dtype)
  mesh = mesh_lib.make_mesh()
  t = time.perf_counter()
  graphdef, state = train_lam.init_state(
      lapa, cfg, options,
      train_lam.compute_dtype(args.compute_dtype, jax.default_backend()),
      mesh)
  step = train_lam.make_train_step(lapa, cfg, graphdef, state, options, mesh)
  images = jax.device_put(np.load(os.path.join(args.tmp, "images.npy")))
  compiled = step.lower(state, images, jnp.int32(FIRST_STEP)).compile()
  compile_s = time.perf_counter() - t
  holder = {"state": state}
  del state

  def one_step(i):
    holder["state"], out = compiled(holder["state"], images,
                                    jnp.int32(FIRST_STEP + i))
    return float(out["loss"])  # waits for the step, like `.item()`

  return {**_timed(one_step, args.steps, args.rounds),
          "setup_s": compile_s, "xla_flops": report.xla_flops(compiled),
          "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(
              holder["state"]["params"])))}


def worker_torch(args) -> dict:
  # pylint: disable=g-import-not-at-top
  import importlib
  import torch
  from tests.fixtures import make_lam_fixtures
  cfg = config(args.shape)
  # (import_laq also saves the tiny feature-variant backbones it imports.)
  mods = make_lam_fixtures.import_laq(os.path.abspath(args.upstream),
                                      os.path.join(args.tmp, "backbones"))
  optimizer = importlib.import_module(
      "get_latent_action.models.laq_model.optimizer")
  torch.manual_seed(0)
  t = time.perf_counter()
  laq = mods["lapa"].LatentActionQuantization(
      dim=cfg.dim, quant_dim=cfg.quant_dim, codebook_size=cfg.codebook_size,
      image_size=cfg.image_size, patch_size=cfg.patch_size,
      spatial_depth=cfg.spatial_depth, temporal_depth=cfg.temporal_depth,
      dim_head=cfg.dim_head, heads=cfg.heads, code_seq_len=cfg.code_seq_len)
  laq.train()
  params = list(laq.parameters())
  opt = optimizer.get_optimizer(params, lr=1e-4, wd=0.0)
  images = np.load(os.path.join(args.tmp, "images.npy"))  # [B, 2, H, W, 3]
  video = torch.from_numpy(images).permute(0, 4, 1, 2, 3).float() / 255
  setup_s = time.perf_counter() - t

  def one_step(i):
    loss, _ = laq(video, step=FIRST_STEP + i)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 0.5)
    opt.step()
    opt.zero_grad()
    return loss.item()

  return {**_timed(one_step, args.steps, args.rounds), "setup_s": setup_s,
          "params": int(sum(p.numel() for p in params)),
          "threads": torch.get_num_threads()}


# ------------------------------------------------------------------- driver


def _run_worker(side: str, args, tmp: str) -> dict:
  out = os.path.join(tmp, f"{side}.json")
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", side,
         "--tmp", tmp, "--shape", args.shape, "--batch", str(args.batch),
         "--steps", str(args.steps), "--rounds", str(args.rounds),
         "--upstream", args.upstream or "", "--out", out,
         "--compute_dtype", args.compute_dtype]
  path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
  env = dict(os.environ, PYTHONPATH=path, JAX_PLATFORMS="cpu")
  subprocess.run(cmd, check=True, env=env, cwd=ROOT)
  with open(out) as f:
    return json.load(f)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--upstream", default=None)
  parser.add_argument("--shape", default="sim_small", choices=list(SHAPES))
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--sessions", type=int, default=2)
  parser.add_argument("--write", action="store_true")
  parser.add_argument("--compute_dtype", default="float32",
                      choices=["float32", "bfloat16"],
                      help="lary-jax side (PyTorch: float32)")
  parser.add_argument("--worker", choices=["jax", "torch"], default=None)
  parser.add_argument("--tmp", default=None)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  args.batch = args.batch or SHAPES[args.shape]
  if args.worker:
    result = (worker_jax if args.worker == "jax" else worker_torch)(args)
    with open(args.out, "w") as f:
      json.dump(result, f)
    return
  if not args.upstream:
    parser.error("--upstream DIR (a LARYBench checkout) is required")
  cfg = config(args.shape)
  rng = np.random.default_rng(0)
  runs = {"jax": [], "torch": []}
  with tempfile.TemporaryDirectory() as tmp:
    np.save(os.path.join(tmp, "images.npy"), rng.integers(
        0, 256, (args.batch, 2, cfg.image_size, cfg.image_size, 3),
        dtype=np.uint8))
    for session in range(args.sessions):
      for side in ("jax", "torch") if session % 2 == 0 else ("torch", "jax"):
        runs[side].append(_run_worker(side, args, tmp))
        print(side, json.dumps(runs[side][-1]), flush=True)
  pooled = {s: {k: [v for r in rs for v in r[k]]
                for k in ("step_s", "cpu_s", "busy")}
            for s, rs in runs.items()}
  best = {s: min(p["step_s"]) for s, p in pooled.items()}
  med = {s: statistics.median(p["step_s"]) for s, p in pooled.items()}
  cpu = {s: statistics.median(p["cpu_s"]) for s, p in pooled.items()}
  busy = statistics.mean(pooled["jax"]["busy"] + pooled["torch"]["busy"])
  params = runs["jax"][0]["params"]
  # Upstream also builds parameters it never uses (the self-attention's
  # context norm), so its count is a little higher.
  torch_params = runs["torch"][0]["params"]
  body = f"""## lam_training: LAM training step, lary-jax vs upstream PyTorch LAQ, CPU fp32

`python benchmarks/lam_training.py --upstream LARYBench --shape {args.shape} \
--batch {args.batch} --steps {args.steps} --rounds {args.rounds} \
--sessions {args.sessions} --write` ({report.machine()}). One training step of \
the pixel LAQ `lapa.Config.{args.shape}()` ({params:,} parameters; \
upstream's module {torch_params:,}, with unused ones), batch {args.batch} of {cfg.image_size} x {cfg.image_size} pairs: \
lary-jax's `train_lam` step (one jitted call: loss, gradients, code usage, \
clipping, Adam) against upstream's `LAQTrainer.train_step` (forward, \
backward, `clip_grad_norm_`, Adam, `loss.item()`). Each side alone in its \
own process, sides alternating, {args.rounds} rounds of {args.steps} steps \
per session after a warm-up step. Others' CPU share before the rounds: \
{busy:.0%} of the cores (the machine is shared; compare the sides through \
the ratios and the CPU seconds).

| side | steps/s (best / median) | CPU s a step (median) | set-up + compile s |
|---|---|---|---|
| lary-jax | {1 / best['jax']:.2f} / {1 / med['jax']:.2f} | {cpu['jax']:.2f} | \
{statistics.median(r['setup_s'] for r in runs['jax']):.1f} |
| PyTorch (upstream) | {1 / best['torch']:.2f} / {1 / med['torch']:.2f} | \
{cpu['torch']:.2f} | {statistics.median(r['setup_s'] for r in runs['torch']):.1f} |

Speed-up of lary-jax: {best['torch'] / best['jax']:.2f}x (best), \
{med['torch'] / med['jax']:.2f}x (median), \
{cpu['torch'] / cpu['jax']:.2f}x in CPU seconds.
"""
  print(body)
  if args.write:
    report.write_section("lam_training", body)


if __name__ == "__main__":
  main()
