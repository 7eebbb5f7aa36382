"""Full-size fp32 parity of the ported encoders against transformers.

    python benchmarks/encoder_parity.py [--models dinov2,dinov3,siglip2,vjepa2]
                                        [--init hf,unit] [--batch 2]

Each model is built at its LARY size with random weights, saved with
`save_pretrained` (safetensors), converted by `lary_jax.encoders.convert`
into an orbax directory and loaded back with `encoders.load`; both sides then
encode the same uint8 input through upstream's preprocessing and token
selection. Two weight draws: "hf" is transformers' own init (std 0.02, under
which attention is nearly uniform), "unit" redraws every matrix at unit gain
(LeCun normal, LayerNorm scales ~1), which makes every layer matter. Needs
~10 GiB of memory and a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time

import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top
from benchmarks import report
from lary_jax import encoders
from lary_jax.encoders import dinov2
from lary_jax.encoders import dinov3
from lary_jax.encoders import registry
from lary_jax.encoders import siglip2
from lary_jax.encoders import vjepa2
# pylint: enable=g-import-not-at-top

_IMAGENET_MEAN = np.float32(vjepa2.IMAGENET_MEAN)
_IMAGENET_STD = np.float32(vjepa2.IMAGENET_STD)


def _dinov2(**kw):
  cfg = transformers.Dinov2Config(**dinov2.VARIANTS["vitl14"].to_dict() | kw)
  return transformers.Dinov2Model(cfg), "ViT-L/14 (518 table, 224 input)"


def _dinov3(**kw):
  cfg = transformers.DINOv3ViTConfig(
      **dinov3.VARIANTS["vitl16"].to_dict() | kw)
  return transformers.DINOv3ViTModel(cfg), "ViT-L/16, 4 registers"


def _siglip2(**kw):
  vision = siglip2.VARIANTS["so400m14-224"].to_dict() | kw
  text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
              num_attention_heads=2, vocab_size=64, bos_token_id=1,
              eos_token_id=2, pad_token_id=0)
  cfg = transformers.SiglipConfig(vision_config=vision, text_config=text)
  return transformers.SiglipModel(cfg), "So400m/14 at 224 (SiglipModel)"


def _vjepa2(**kw):
  # crop_size 224: transformers counts RoPE rows on a crop_size grid, the
  # original code (and lary_jax) on the input's.
  cfg = transformers.VJEPA2Config(crop_size=224, frames_per_clip=16, **kw)
  return transformers.VJEPA2Model(cfg), "ViT-L/16, tubelet 2, 9 frames"


def _patch_tokens(model, x, skip):
  with torch.no_grad():
    return model(pixel_values=x).last_hidden_state[:, skip:].numpy()


def _reference(name, model, u8):
  """Upstream's preprocessing and token selection, in torch."""
  unit = u8.astype(np.float32) / 255.0
  if name == "vjepa2":
    x = torch.from_numpy((unit - _IMAGENET_MEAN) / _IMAGENET_STD)
    with torch.no_grad():
      out = model(pixel_values_videos=x.permute(0, 1, 4, 2, 3),
                  skip_predictor=True)
    return out.last_hidden_state.numpy()
  if name == "siglip2":
    x = torch.from_numpy(unit).permute(0, 3, 1, 2)
    return _patch_tokens(model.vision_model, x, 0)
  x = torch.from_numpy(unit * 2 - 1).permute(0, 3, 1, 2)
  return _patch_tokens(model, x, 1 if name == "dinov2" else 5)


MODELS = {"dinov2": _dinov2, "dinov3": _dinov3, "siglip2": _siglip2,
          "vjepa2": _vjepa2}


def _unit_gain(model: torch.nn.Module) -> None:
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim >= 2:
        p.normal_(0.0, p[0].numel() ** -0.5)
      elif "norm" in name and name.endswith("weight"):
        p.normal_(1.0, 0.2)
      else:
        p.normal_(0.0, 0.2)


def measure(name: str, init: str, batch: int, tmp: str,
            layers: int | None = None) -> dict:
  """Builds, converts and runs one model; returns its row of numbers."""
  torch.manual_seed(0)
  kw = {} if layers is None else {"num_hidden_layers": layers}
  model, what = MODELS[name](**kw)
  model.eval()
  if init == "unit":
    _unit_gain(model)
  hf_dir, out_dir = os.path.join(tmp, "hf"), os.path.join(tmp, "orbax")
  model.save_pretrained(hf_dir)
  registry.convert(name, hf_dir, out_dir)
  enc = encoders.load(name, out_dir)
  shape = (batch, 224, 224, 3)
  if name == "vjepa2":  # a LARY clip: 9 frames, 4 tubelets
    shape = (batch, 9, 224, 224, 3)
  u8 = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
  start = time.perf_counter()
  want = _reference(name, model, u8)
  torch_s = time.perf_counter() - start
  got = np.asarray(enc(u8))  # compiles
  start = time.perf_counter()
  got = np.asarray(enc(u8))
  jax_s = time.perf_counter() - start
  if got.shape != want.shape:
    raise AssertionError(f"{name}: shape {got.shape} vs {want.shape}")
  diff = np.abs(got.astype(np.float64) - want)
  del model, enc
  gc.collect()
  return {"name": name, "what": what, "init": init, "shape": got.shape,
          "max": diff.max(), "mean": diff.mean(),
          "scale": np.abs(want).mean(), "torch_s": torch_s, "jax_s": jax_s}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--init", default="hf,unit")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--layers", type=int, default=None,
                      help="override depth for a quick smoke run")
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())
  rows = []
  for name in args.models.split(","):
    for init in args.init.split(","):
      with tempfile.TemporaryDirectory() as tmp:
        row = measure(name, init, args.batch, tmp, args.layers)
      print(row, flush=True)
      rows.append(row)
  lines = [
      f"| {r['name']} | {r['what']} | {r['init']} | "
      f"{'x'.join(map(str, r['shape']))} | {r['max']:.2e} | {r['mean']:.2e} "
      f"| {r['scale']:.2f} | {r['torch_s']:.1f} / {r['jax_s']:.1f} |"
      for r in rows]
  body = f"""## encoder_parity

`python benchmarks/encoder_parity.py --models {args.models} --init {args.init}
--batch {args.batch}` ({report.machine()}): random-weight full-size encoders,
fp32, HF folder -> `convert` -> orbax -> `encoders.load`, against
transformers on the same uint8 input with upstream's preprocessing and token
selection. "hf" = transformers' init (std 0.02), "unit" = every matrix
redrawn at unit gain. Scale = mean |token| of the reference. Times are one
forward pass each (JAX after compilation), for scale only.

| model | size | init | tokens | max diff | mean diff | scale | torch/JAX s |
|---|---|---|---|---|---|---|---|
""" + "\n".join(lines) + "\n"
  print(body)
  if args.layers is None:  # smoke runs do not overwrite the real numbers
    report.write_section("encoder_parity", body)


if __name__ == "__main__":
  main()
