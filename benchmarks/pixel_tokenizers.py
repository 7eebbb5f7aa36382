"""Pixel tokenizer encoders on CPU: lary-jax (jitted) vs their PyTorch code.

  python benchmarks/pixel_tokenizers.py [--upstream path/to/LARYBench]
      [--quick] [--rounds 3] [--sessions 1] [--threads N]
      [--models magvit2,flux2,wan2_2]

For each encoder, in one run: the PyTorch reference is built with seeded
random weights, its state dict is converted with the module's converter, and
both encode the same uint8 input through upstream's path, fp32:
  flux2   diffusers `AutoencoderKLFlux2` (FLUX.2's config): posterior mean,
          2x2 patches, BatchNorm statistics; batch of 224 frames.
  wan2_2  diffusers `AutoencoderKLWan` (Wan2.2's config): a 9-frame clip at
          224, chunked causal encode, normalised mean.
  magvit2 upstream's Open-MAGVIT2 `Encoder` (`--upstream`, a LARYBench
          checkout; skipped without it), frames in [0, 1].
Each side is timed alone (the other idle), best and median of `--rounds`
after a warm-up call; the jitted side's compile time is reported apart. The
jitted side is compiled with the XLA options extraction gives these encoders
(`xla_options.CONVOLUTIONAL`: on CPU, convolutions and reductions on XLA's
own kernels rather than YNNPACK's).
`--threads N` gives both sides N threads (torch.set_num_threads; XLA's CPU
intra-op pool): on a machine other processes keep busy, torch's OpenMP
threads slow down 20-100x at 2 threads on 2 cores, so run such a machine with
`--threads 1`; default: each framework's own choice (all cores).
`--quick` shrinks widths, depth and images so the whole run takes a few
minutes on 2 cores (not the released sizes: a smoke number).
Writes the `pixel_tokenizers` section of BENCHMARKS.md.
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


def _timed(fn, rounds: int) -> list[float]:
  fn()  # warm-up (and, for jax, the compiled call's first run)
  times = []
  for _ in range(rounds):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return times


def _spread(model) -> None:
  """Unit-gain random weights (norm gains near 1), seeded."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim >= 2:
        p.normal_(0.0, p[0].numel() ** -0.5)
      elif "norm" in name or "gamma" in name:
        p.normal_(1.0, 0.1)
      else:
        p.normal_(0.0, 0.1)


def _flux2(quick: bool):
  import diffusers  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from lary_jax.encoders import flux2_vae  # pylint: disable=g-import-not-at-top
  kw = dict(block_out_channels=(32, 64, 64), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3) if quick else {}
  model = diffusers.AutoencoderKLFlux2(**kw).eval()
  _spread(model)
  cfg = flux2_vae.config_from_hf(dict(model.config))
  weights = {k: v.numpy() for k, v in model.state_dict().items()}
  size, batch = (64, 2) if quick else (224, 8)
  images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3),
                                             dtype=np.uint8)
  x = torch.from_numpy(images.astype(np.float32) / 127.5 - 1)
  x = x.permute(0, 3, 1, 2).contiguous()

  def run_torch():
    with torch.inference_mode():
      mean = model.encode(x).latent_dist.mode()
      b, c, h, w = mean.shape
      z = mean.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
      z = z.reshape(b, c * 4, h // 2, w // 2)
      z = (z - model.bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
          model.bn.running_var.view(1, -1, 1, 1) + model.bn.eps)
      return z.permute(0, 2, 3, 1).reshape(b, -1, c * 4).numpy()

  return (flux2_vae, cfg, flux2_vae.params_from_torch(weights, cfg), "image",
          images, run_torch, f"diffusers AutoencoderKLFlux2, {batch} x "
          f"{size}^2 frames")


def _wan(quick: bool):
  import diffusers  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from lary_jax.encoders import wan_vae  # pylint: disable=g-import-not-at-top
  kw = dict(base_dim=16, decoder_base_dim=16) if quick else dict(
      base_dim=160, decoder_base_dim=256)
  model = diffusers.AutoencoderKLWan(
      z_dim=48, is_residual=True, in_channels=12, out_channels=12,
      patch_size=2, temperal_downsample=[False, True, True],
      latents_mean=list(wan_vae.LATENTS_MEAN),
      latents_std=list(wan_vae.LATENTS_STD), **kw).eval()
  _spread(model)
  cfg = wan_vae.config_from_hf(dict(model.config))
  weights = {k: v.numpy() for k, v in model.state_dict().items()}
  size = 64 if quick else 224
  clips = np.random.default_rng(0).integers(0, 256, (1, 9, size, size, 3),
                                            dtype=np.uint8)
  x = torch.from_numpy(clips.astype(np.float32) / 127.5 - 1)
  x = x.permute(0, 4, 1, 2, 3).contiguous()
  mean = torch.tensor(wan_vae.LATENTS_MEAN).view(1, -1, 1, 1, 1)
  inv_std = 1 / torch.tensor(wan_vae.LATENTS_STD).view(1, -1, 1, 1, 1)

  def run_torch():
    with torch.inference_mode():
      mu = (model.encode(x).latent_dist.mode() - mean) * inv_std
      return mu.permute(0, 2, 3, 4, 1).reshape(1, mu.shape[2], -1, 48).numpy()

  return (wan_vae, cfg, wan_vae.params_from_torch(weights, cfg), "video",
          clips, run_torch, f"diffusers AutoencoderKLWan, one 9 x {size}^2 "
          "clip")


def _magvit2(quick: bool, upstream: str):
  import torch  # pylint: disable=g-import-not-at-top
  from lary_jax.encoders import magvit2  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(upstream, "get_latent_action", "models",
                                  "magvit2"))
  from improved_model import Encoder  # pylint: disable=g-import-not-at-top
  dd = dict(ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1) if quick else (
      dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=4))
  model = Encoder(out_ch=3, in_channels=3, z_channels=18, resolution=256,
                  model_type="en18", **dd).eval()
  _spread(model)
  weights = {"encoder." + k: v.numpy() for k, v in model.state_dict().items()}
  cfg = magvit2.load_options(magvit2.config_from_pt(weights),
                             upstream_range=True)
  size, batch = (64, 2) if quick else (224, 8)
  images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3),
                                             dtype=np.uint8)
  x = torch.from_numpy(images.astype(np.float32) / 255.0)
  x = x.permute(0, 3, 1, 2).contiguous()

  def run_torch():
    with torch.inference_mode():
      z = model(x)
      return z.permute(0, 2, 3, 1).reshape(z.shape[0], -1, 18).numpy()

  return (magvit2, cfg, magvit2.params_from_pt(weights, cfg), "image",
          images, run_torch, f"upstream Open-MAGVIT2 Encoder, {batch} x "
          f"{size}^2 frames")


def bench(name: str, spec, rounds: int) -> dict:
  """Times one encoder on both sides; returns the numbers of one row."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from lary_jax.encoders import convert  # pylint: disable=g-import-not-at-top
  from lary_jax.encoders import registry  # pylint: disable=g-import-not-at-top
  from lary_jax import xla_options  # pylint: disable=g-import-not-at-top
  module, cfg, params, mode, inputs, run_torch, what = spec
  enc = registry.make_encoder(name, convert.build(module.Model, cfg, params),
                              preprocess=module.preprocess,
                              select_tokens=module.select_tokens, mode=mode,
                              xla_profile=module.XLA_PROFILE)
  t = time.perf_counter()
  # Compiled as extraction compiles this encoder (its XLA options).
  compiled = jax.jit(enc.apply, compiler_options=xla_options.encoder_forward(
      jax.default_backend(), enc.xla_profile)).lower(enc.params,
                                                     inputs).compile()
  compile_s = time.perf_counter() - t
  ours = np.asarray(compiled(enc.params, inputs))
  jax_times = _timed(lambda: compiled(enc.params, inputs).block_until_ready(),
                     rounds)
  theirs = run_torch()
  torch_times = _timed(run_torch, rounds)
  diff = float(np.abs(ours - theirs).max())
  scale = float(np.abs(theirs).max())
  row = {"name": name, "what": what, "compile_s": compile_s, "diff": diff,
         "scale": scale, "jax": jax_times, "torch": torch_times,
         "threads": torch.get_num_threads(), "shape": tuple(ours.shape)}
  print(name, {k: v for k, v in row.items() if k not in ("what",)},
        file=sys.stderr)
  return row


def _specs(args) -> dict:
  """name -> the encoder's spec (reference model, converted weights, input)."""
  specs = {}
  for name in args.models.split(","):
    if name == "magvit2":
      if not args.upstream:
        print("magvit2: skipped (no --upstream)", file=sys.stderr)
        continue
      specs[name] = _magvit2(args.quick, args.upstream)
    elif name == "flux2":
      specs[name] = _flux2(args.quick)
    elif name == "wan2_2":
      specs[name] = _wan(args.quick)
    else:
      raise SystemExit(f"unknown model {name!r}")
  return specs


def _row(runs: list[dict]) -> str:
  """One encoder's table row from its sessions' measurements."""
  r = runs[0]
  jax_s = [t for run in runs for t in run["jax"]]
  torch_s = [t for run in runs for t in run["torch"]]
  per_session = ", ".join(f"{min(run['torch']) / min(run['jax']):.2f}x"
                          for run in runs)
  worst = min(min(run["torch"]) / min(run["jax"]) for run in runs)
  median = statistics.median(torch_s) / statistics.median(jax_s)
  return (f"| {r['name']} | {r['what']} ({r['threads']} torch threads) | "
          f"{list(r['shape'])} | {min(jax_s):.3f} / "
          f"{statistics.median(jax_s):.3f} s | {min(torch_s):.3f} / "
          f"{statistics.median(torch_s):.3f} s | {per_session} | "
          f"**{worst:.2f}x** | {median:.2f}x | "
          f"{max(run['compile_s'] for run in runs):.1f} s | "
          f"{max(run['diff'] for run in runs):.1e} (of {r['scale']:.1f}) |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--upstream", help="LARYBench checkout, for magvit2")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--sessions", type=int, default=1)
  parser.add_argument("--models", default="magvit2,flux2,wan2_2")
  parser.add_argument("--threads", type=int, default=0)
  args = parser.parse_args()
  if args.threads:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads)
    # Before jax is imported (bench() imports it).
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + (
        " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        if args.threads == 1 else "")).strip()
  load = os.getloadavg()[0]  # other processes' share of the cores
  specs = _specs(args)
  runs = {name: [] for name in specs}
  for _ in range(args.sessions):  # encoders interleaved, session by session
    for name, spec in specs.items():
      runs[name].append(bench(name, spec, args.rounds))

  cmd = "python benchmarks/pixel_tokenizers.py" + (
      " --quick" if args.quick else "") + f" --rounds {args.rounds}" + (
          f" --sessions {args.sessions}" if args.sessions > 1 else "") + (
          f" --threads {args.threads}" if args.threads else "") + (
              " --upstream LARYBench" if args.upstream else "")
  size = ("--quick: shrunken widths and 64-pixel frames, a smoke number, not "
          "the released models" if args.quick else "released sizes")
  lines = [
      "## pixel_tokenizers: MAGVIT2 / FLUX.2 VAE / Wan2.2 VAE encoders, "
      "CPU fp32", "",
      f"`{cmd}` ({report.machine()}); {size}. Random weights shared by both "
      "sides, same uint8 input, upstream's preprocessing; each side timed "
      f"alone in one process, warm-up then {args.rounds} rounds, in each of "
      f"{args.sessions} session(s) (the encoders in turn); seconds a batch, "
      "best and median over every round. Speed-up: PyTorch's best over "
      "lary-jax's best in each session, the lowest of them in bold, and the "
      "ratio of the medians. Load average at the start: "
      f"{load:.1f} (other processes).", "",
      "| encoder | reference, input | tokens | lary-jax best / median | "
      "PyTorch best / median | speed-up (best) per session | lowest | "
      "medians | compile | max abs diff |",
      "|---|---|---|---|---|---|---|---|---|---|"]
  lines += [_row(r) for r in runs.values()]
  body = "\n".join(lines) + "\n"
  print(body)
  report.write_section("pixel_tokenizers", body)


if __name__ == "__main__":
  main()
