"""One command for a GPU or a TPU host: speed and MFU of lary-jax's hot paths.

  python benchmarks/device_check.py [--smoke] [--budget_s 420]
      [--benchmarks_md PATH]

Each check is timed after its compilation, on every local device:

- encoder: the DINOv2 ViT-L/14 forward at 224 (`random_vit` L/14, DINOv2's
  architecture with seeded weights), bf16, attention through
  `jax.nn.dot_product_attention`; against transformers' `Dinov2Model`
  (sdpa, bf16) on the same card.
- probe: the five attentive probes' training step on LAM-shaped features
  at the protocol's batch (`benchmarks/classification_probe.py`), bf16
  compute, against its PyTorch re-creation under bf16 autocast.
- extract: `extract` end to end on prepared image pairs with the same
  ViT-L (`benchmarks/extraction.py`): pairs/s and the share of the wall
  time the devices compute.
- lam: the LAQ training step at upstream's size
  (`benchmarks/lam_training.py`), bf16.
- devices: one batch's features on one device and on all local devices,
  which must be bitwise equal.

MFU is the model's FLOPs (analytic for the ViT and the probe, XLA's count
for the LAQ) per second over the card's published bf16 peak
(`benchmarks/chips.py`, by `device_kind`); on a CPU, over a jitted fp32 GEMM
measured in the same run. PyTorch runs only where it can use the same
device (CUDA PyTorch on a GPU; the CPU in --smoke); elsewhere the section
says that its figures are lary-jax's alone, and why.

The JAX checks run in one worker process, then the PyTorch ones in another
(JAX holds most of a GPU's memory while it lives). A check that fails is
reported and the others go on; a check that would start after --budget_s
is skipped. --smoke runs tiny shapes on the CPU in seconds (CI:
tests/benchmarks_test.py), so that the script cannot rot. Writes the
`device_check <card>` section of BENCHMARKS.md (or of --benchmarks_md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import chips  # pylint: disable=g-import-not-at-top
from benchmarks import classification_probe  # pylint: disable=g-import-not-at-top
from benchmarks import encoder_forward  # pylint: disable=g-import-not-at-top
from benchmarks import report  # pylint: disable=g-import-not-at-top

# Sizes of the checks: on an accelerator, and in --smoke on a CPU.
FULL = {
    "dtype": "bfloat16", "variant": "L/14", "encoder_batch": 64,
    "rounds": 10, "probe_shape": (256, 8, 16, 1024),
    "probe": (768, 16, 4), "extract_rows": 512,
    "extract_batch": 128, "extract_micro": 8, "lam_shape": "lapa",
    "lam_batch": 16, "lam_steps": 5,
}
# (fp32 on a CPU, where bf16 is slow; `dtype` is all that differs.)
SMOKE = {
    "dtype": "float32", "variant": "Ti/16", "encoder_batch": 2, "rounds": 2,
    "probe_shape": (2, 2, 4, 16), "probe": (32, 2, 2), "extract_rows": 8,
    "extract_batch": 4, "extract_micro": 2, "lam_shape": "tiny",
    "lam_batch": 2, "lam_steps": 1,
}
JAX_CHECKS = ("encoder", "probe", "extract", "lam", "devices")


def _times(fn, rounds: int) -> dict[str, float]:
  """Calls `fn` once to warm up, then `rounds` times; best and median s."""
  fn()
  times = []
  for _ in range(rounds):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return {"best": min(times), "median": statistics.median(times)}


def _vit_shape(variant: str) -> dict[str, int]:
  from lary_jax.encoders import baselines  # pylint: disable=g-import-not-at-top
  cfg = baselines.decode_variant(variant)
  return {"width": cfg.hidden_size, "depth": cfg.num_hidden_layers,
          "heads": cfg.num_attention_heads, "patch": cfg.patch_size,
          "tokens": (224 // cfg.patch_size) ** 2}


def vit_flops(variant: str, batch: int) -> float:
  """Matmul FLOPs of a ViT forward at 224 (encoder_forward's count)."""
  s = _vit_shape(variant)
  return encoder_forward.dinov2_flops(batch, s["width"], s["depth"],
                                      s["tokens"] + 1, s["patch"] ** 2 * 3)


# ------------------------------------------------------------- JAX checks


def jax_encoder(plan: dict) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from lary_jax.encoders import registry  # pylint: disable=g-import-not-at-top
  enc = registry.load("random_vit", dtype=getattr(jnp, plan["dtype"]),
                      variant=plan["variant"])
  images = jnp.asarray(np.random.default_rng(0).integers(
      0, 256, (plan["encoder_batch"], 224, 224, 3), dtype=np.uint8))
  t = time.perf_counter()
  compiled = jax.jit(enc.apply).lower(enc.params, images).compile()
  compile_s = time.perf_counter() - t
  out = _times(lambda: compiled(enc.params, images).block_until_ready(),
               plan["rounds"])
  return {**out, "compile_s": compile_s, "xla_flops": report.xla_flops(
      compiled), "flops": vit_flops(plan["variant"], plan["encoder_batch"])}


def _probe_args(plan: dict, device: str) -> types.SimpleNamespace:
  model_dim, heads, depth = plan["probe"]
  return types.SimpleNamespace(
      shape=tuple(plan["probe_shape"]), rounds=plan["rounds"], head_batch=1,
      idle_wait=0.0, compute_dtype=plan["dtype"], device=device,
      model_dim=model_dim, probe_heads=heads, depth=depth)


def _probe_flops(plan: dict) -> float:
  b, t, n, d = plan["probe_shape"]
  model_dim, _, depth = plan["probe"]
  return classification_probe.probe_flops(b, t, n, d, model_dim, depth)


def jax_probe(plan: dict) -> dict:
  out = classification_probe.worker_jax(_probe_args(plan, "cpu"))
  return {"best": min(out["times"]),
          "median": statistics.median(out["times"]),
          "compile_s": out["compile_s"], "xla_flops": out["xla_flops"],
          "flops": _probe_flops(plan)}


def jax_extract(plan: dict, tmp: str) -> dict:
  from benchmarks import extraction  # pylint: disable=g-import-not-at-top
  extraction.make_pairs(tmp, plan["extract_rows"], "200x200")
  out = extraction.worker_jax(types.SimpleNamespace(
      tmp=tmp, encoder="random_vit:" + plan["variant"],
      compute_dtype=plan["dtype"], batch=plan["extract_batch"],
      micro=plan["extract_micro"], dtype="float16"))
  return {"rows_s": out["rows"] / out["wall"], "busy": out["busy"],
          "wall": out["wall"], "compile_s": out["compile"],
          "input_s": out["input"], "step_s": out["step"],
          "flops_s": vit_flops(plan["variant"], 2) * out["rows"] / out["wall"]}


def jax_lam(plan: dict, tmp: str) -> dict:
  from benchmarks import lam_training  # pylint: disable=g-import-not-at-top
  size = lam_training.config(plan["lam_shape"]).image_size
  np.save(os.path.join(tmp, "images.npy"), np.random.default_rng(0).integers(
      0, 256, (plan["lam_batch"], 2, size, size, 3), dtype=np.uint8))
  out = lam_training.worker_jax(types.SimpleNamespace(
      shape=plan["lam_shape"], batch=plan["lam_batch"], tmp=tmp,
      steps=plan["lam_steps"], rounds=plan["rounds"],
      compute_dtype=plan["dtype"]))
  return {"best": min(out["step_s"]),
          "median": statistics.median(out["step_s"]),
          "compile_s": out["setup_s"], "flops": out["xla_flops"],
          "params": out["params"]}


def jax_devices(plan: dict) -> dict:
  """Features of one batch on one device vs on every local device."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  from lary_jax import extract
  from lary_jax import mesh as mesh_lib
  from lary_jax.encoders import registry
  enc = registry.load("random_vit", variant=plan["variant"])
  micro = plan["extract_micro"]
  n = jax.local_device_count()
  frames = np.random.default_rng(1).integers(
      0, 256, (micro * n, 2, 224, 224, 3), dtype=np.uint8)
  out = {}
  for name, mesh in (("one", Mesh(np.array(jax.local_devices()[:1]),
                                  ("data",))),
                     ("all", mesh_lib.make_mesh())):
    step = extract.make_step(enc, mesh, micro_batch=micro,
                             dtype=jnp.float16)
    x = jax.device_put(frames, NamedSharding(mesh, PartitionSpec("data")))
    features, _ = step(extract.replicate(enc.params, mesh), x)
    out[name] = np.asarray(features)
  diff = np.abs(out["one"].astype(np.float32) - out["all"].astype(np.float32))
  return {"devices": n, "rows": len(frames), "max_diff": float(diff.max()),
          "equal": bool(np.array_equal(out["one"], out["all"]))}


def worker_jax(plan: dict, save) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.local_devices()[0]
  result = {"platform": device.platform, "device_kind": device.device_kind,
            "local_devices": jax.local_device_count(),
            "jax": jax.__version__, "checks": {}}
  if device.platform == "cpu":  # no vendor peak: a GEMM measured now
    gemm = _times(report.gemm_step(), 3 * plan["rounds"])
    result["cpu_peak_flops"] = report.GEMM_FLOPS / gemm["best"]
  with tempfile.TemporaryDirectory() as tmp:
    for name in JAX_CHECKS:
      result["checks"][name] = _run_check(
          plan, name, lambda name=name: _JAX[name](plan, tmp))
      save(result)  # what finished survives a timeout
  return result


_JAX = {"encoder": lambda plan, tmp: jax_encoder(plan),
        "probe": lambda plan, tmp: jax_probe(plan),
        "extract": jax_extract, "lam": jax_lam,
        "devices": lambda plan, tmp: jax_devices(plan)}


# --------------------------------------------------------- PyTorch checks


def torch_encoder(plan: dict, device: str) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  s = _vit_shape(plan["variant"])
  torch.manual_seed(0)
  cfg = transformers.Dinov2Config(
      hidden_size=s["width"], num_hidden_layers=s["depth"],
      num_attention_heads=s["heads"], patch_size=s["patch"], image_size=224,
      attn_implementation="sdpa")
  dtype = getattr(torch, plan["dtype"])
  model = transformers.Dinov2Model(cfg).to(device, dtype).eval()
  x = torch.randn(plan["encoder_batch"], 3, 224, 224, device=device,
                  dtype=dtype)

  def forward():
    with torch.inference_mode():
      model(pixel_values=x).last_hidden_state.sum().item()  # waits

  return {**_times(forward, plan["rounds"]),
          "flops": vit_flops(plan["variant"], plan["encoder_batch"])}


def torch_probe(plan: dict, device: str) -> dict:
  out = classification_probe.worker_torch(_probe_args(plan, device))
  return {"best": min(out["times"]),
          "median": statistics.median(out["times"]),
          "flops": _probe_flops(plan)}


def worker_torch(plan: dict, save) -> dict:
  """The PyTorch references, on the device the JAX checks ran on."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {"skipped": "PyTorch is not installed"}
  result = {"torch": torch.__version__, "checks": {}}
  if plan["platform"] == "gpu":
    if not torch.cuda.is_available():
      return {**result, "skipped": f"torch {torch.__version__} has no CUDA "
              "here (a CPU build)"}
    device = "cuda"
  elif plan["platform"] == "cpu":
    device = "cpu"
  else:
    return {**result, "skipped": f"no PyTorch on {plan['platform']}"}
  result["device"] = device
  for name, fn in (("encoder", torch_encoder), ("probe", torch_probe)):
    result["checks"][name] = _run_check(plan, name,
                                        lambda fn=fn: fn(plan, device))
    save(result)
  return result


def _run_check(plan: dict, name: str, fn) -> dict:
  if time.time() > plan["deadline"]:
    return {"skipped": f"over the {plan['budget_s']:.0f} s budget"}
  start = time.perf_counter()
  try:
    out = fn()
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    return {"failed": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
  out["check_s"] = time.perf_counter() - start
  print(f"{name}: {out}", file=sys.stderr, flush=True)
  return out


# ------------------------------------------------------------------ driver


def _worker(side: str, plan: dict, tmp: str) -> dict:
  """Runs one side's worker process; its result, or why there is none."""
  plan_path = os.path.join(tmp, f"{side}_plan.json")
  out = os.path.join(tmp, f"{side}.json")
  with open(plan_path, "w") as f:
    json.dump(plan, f)
  timeout = max(plan["deadline"] - time.time(), 0) + 120
  env = dict(os.environ)
  if plan["smoke"]:
    env["JAX_PLATFORMS"] = "cpu"
  try:
    subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                    side, "--plan", plan_path, "--out", out],
                   check=True, timeout=timeout, cwd=ROOT, env=env)
  except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
    failed = f"the {side} worker stopped: {type(e).__name__}"
  else:
    failed = None
  try:
    with open(out) as f:
      result = json.load(f)
  except (OSError, ValueError):
    result = {"checks": {}}
  return {**result, "failed": failed} if failed else result


def _status(check: dict | None) -> str | None:
  """Why a check has no numbers (None: it has)."""
  if not check:
    return "-"
  if "skipped" in check:
    return check["skipped"]
  if "failed" in check:
    return "failed: " + check["failed"]
  return None


def _per_s(check: dict | None, per: float, unit: str) -> str:
  return _status(check) or f"{per / check['best']:.1f} {unit}"


def _mfu(flops_s: float | None, peak: float | None) -> str:
  if not flops_s or not peak:
    return "-"
  rate = (f"{flops_s / 1e12:.1f} TFLOP/s" if flops_s >= 1e12 else
          f"{flops_s / 1e9:.1f} GFLOP/s")
  return f"{rate} = {flops_s / peak:.1%}"


def _flops_s(check: dict | None) -> float | None:
  """Model FLOP/s of a check: its FLOPs over its best time, or as given."""
  if _status(check):
    return None
  if "flops_s" in check:
    return check["flops_s"]
  return check["flops"] / check["best"] if check.get("flops") else None


def _peak(jax_out: dict) -> tuple[float | None, str]:
  """(peak FLOP/s, what it is) for the device the JAX checks ran on."""
  kind = jax_out.get("device_kind", "")
  if "cpu_peak_flops" in jax_out:
    peak = jax_out["cpu_peak_flops"]
    return peak, (f"a CPU, which has no published peak: MFU against a "
                  f"jitted {report.GEMM_N}^3 fp32 GEMM measured in this run, "
                  f"{peak / 1e9:.0f} GFLOP/s")
  chip = chips.lookup(kind)
  if chip is None:
    return None, f"`{kind}` is not in benchmarks/chips.py: no MFU"
  return chip.bf16_tflops * 1e12, (
      f"{chip.name}, published dense bf16 peak {chip.bf16_tflops:g} TFLOP/s "
      "(benchmarks/chips.py)")


def section(plan: dict, jax_out: dict, torch_out: dict, smoke: bool) -> str:
  """The BENCHMARKS.md section for the card the checks ran on."""
  kind = jax_out.get("device_kind", "unknown device")
  peak, peak_text = _peak(jax_out)
  j, t = jax_out.get("checks", {}), torch_out.get("checks", {})
  b, frames, tokens, dim = plan["probe_shape"]
  rows = []
  for name, what, per, unit in (
      ("encoder", f"DINOv2 ViT-{plan['variant']} forward at 224, batch "
       f"{plan['encoder_batch']}, {plan['dtype']}", plan["encoder_batch"],
       "images/s"),
      ("probe", f"5 attentive probes, a training step on [{b}, {frames}, "
       f"{tokens}, {dim}], width {plan['probe'][0]}, {plan['dtype']}", 1,
       "steps/s"),
      ("lam", f"LAQ `{plan['lam_shape']}` training step, batch "
       f"{plan['lam_batch']}, {plan['dtype']}", 1, "steps/s")):
    ours, theirs = j.get(name), t.get(name)
    ratio = "-"
    if not _status(ours) and not _status(theirs):
      ratio = f"**{theirs['best'] / ours['best']:.2f}x**"
    compile_s = "-" if _status(ours) else f"{ours['compile_s']:.1f}"
    rows.append(f"| {name} | {what} | {_per_s(ours, per, unit)} | "
                f"{_per_s(theirs, per, unit) if theirs else '-'} | {ratio} | "
                f"{_mfu(_flops_s(ours), peak)} | "
                f"{_mfu(_flops_s(theirs), peak)} | {compile_s} |")
  ex = j.get("extract")
  ex_text = _status(ex) or (f"{ex['rows_s']:.1f} pairs/s, devices busy "
                            f"{ex['busy']:.0%}")
  rows.append(
      f"| extract | `extract` of {plan['extract_rows']} prepared pairs, "
      f"ViT-{plan['variant']}, global batch {plan['extract_batch']}, "
      f"micro-batch {plan['extract_micro']} | {ex_text} | - | - | "
      f"{_mfu(_flops_s(ex), peak)} | - | "
      f"{'-' if _status(ex) else format(ex['compile_s'], '.1f')} |")
  dev = j.get("devices")
  dev_text = _status(dev) or (
      f"{dev['rows']} rows on {dev['devices']} device(s): "
      f"{'bitwise equal' if dev['equal'] else 'DIFFERENT'} (max diff "
      f"{dev['max_diff']:.1e})")
  rows.append(f"| devices | one batch's features, 1 device vs all local "
              f"devices | {dev_text} | - | - | - | - | - |")
  if jax_out.get("failed"):
    peak_text += f". **{jax_out['failed']}**"
  why = torch_out.get("skipped") or torch_out.get("failed")
  torch_note = (f"**lary-jax figures only**: {why}" if why else
                f"torch {torch_out.get('torch')} on {torch_out.get('device')}")
  command = "python benchmarks/device_check.py" + (" --smoke" if smoke
                                                   else "")
  load = ", ".join(f"{x:.1f}" for x in plan["load"])
  note = (" Smoke sizes: this proves the script runs, it measures nothing."
          if smoke else "")
  return f"""## device_check: {kind}

`{command}` ({platform.machine()}, Python {platform.python_version()}, \
{time.strftime('%Y-%m-%d')}, jax {jax_out.get('jax', '?')}, \
{jax_out.get('local_devices', '?')} local device(s); load average at the \
start {load}). Peak: {peak_text}. PyTorch: {torch_note}. Times are the best \
of {plan['rounds']} after a warm-up, compilation not included; MFU = the \
model's FLOPs a second over the peak.{note}

| check | what | lary-jax | PyTorch | speed-up | lary-jax MFU | PyTorch MFU | compile s |
|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true",
                      help="tiny shapes on the CPU, seconds (CI)")
  parser.add_argument("--budget_s", type=float, default=420.0,
                      help="start no check after this many seconds")
  parser.add_argument("--benchmarks_md", default=report.BENCHMARKS_MD)
  parser.add_argument("--worker", choices=["jax", "torch"])
  parser.add_argument("--plan")
  parser.add_argument("--out")
  args = parser.parse_args()
  if args.worker:
    with open(args.plan) as f:
      plan = json.load(f)
    def save(result: dict) -> None:
      with open(args.out + ".tmp", "w") as f:
        json.dump(result, f)
      os.replace(args.out + ".tmp", args.out)

    save((worker_jax if args.worker == "jax" else worker_torch)(plan, save))
    return

  start = time.time()
  plan = {**(SMOKE if args.smoke else FULL), "smoke": args.smoke,
          "budget_s": args.budget_s,
          "deadline": start + args.budget_s, "load": os.getloadavg()}
  with tempfile.TemporaryDirectory() as tmp:
    jax_out = _worker("jax", plan, tmp)
    plan["platform"] = jax_out.get("platform", "unknown")
    torch_out = _worker("torch", plan, tmp)
  body = section(plan, jax_out, torch_out, args.smoke)
  print(body)
  slug = re.sub(r"[^a-z0-9]+", "_", jax_out.get("device_kind",
                                                "unknown").lower()).strip("_")
  report.write_section(f"device_check {slug}", body, args.benchmarks_md)
  print(f"device_check: {time.time() - start:.0f} s; section "
        f"'device_check {slug}' in {args.benchmarks_md}", file=sys.stderr)


if __name__ == "__main__":
  main()
