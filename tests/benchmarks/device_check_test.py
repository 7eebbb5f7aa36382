"""benchmarks/device_check.py in its --smoke mode (tiny shapes on the CPU),
so that the accelerator check cannot rot before a GPU is lent."""

import os
import pathlib
import re
import subprocess
import sys

from benchmarks import chips

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_chips_are_found_by_device_kind():
  expected = {
      "NVIDIA H100 80GB HBM3": "NVIDIA H100 SXM",
      "NVIDIA H100 PCIe": "NVIDIA H100 PCIe",
      "NVIDIA H200": "NVIDIA H200 SXM",
      "NVIDIA A100-SXM4-80GB": "NVIDIA A100 SXM 80GB",
      "NVIDIA A100-SXM4-40GB": "NVIDIA A100 SXM 40GB",
      "NVIDIA L4": "NVIDIA L4",
      "NVIDIA L40S": "NVIDIA L40S",
      "TPU v5 lite": "TPU v5e",
      "TPU v5": "TPU v5p",
      "TPU v4": "TPU v4",
      "TPU v6 lite": "TPU v6e",
  }
  for kind, name in expected.items():
    assert chips.lookup(kind).name == name, kind
  assert chips.lookup("cpu") is None
  assert chips.by_name("TPU v5e").bf16_tflops == 197


def test_smoke_run_writes_its_section(tmp_path):
  md = tmp_path / "BENCHMARKS.md"
  env = dict(os.environ, PYTHONPATH=str(ROOT),
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  result = subprocess.run(
      [sys.executable, "benchmarks/device_check.py", "--smoke",
       "--budget_s=1500", f"--benchmarks_md={md}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
  assert result.returncode == 0, result.stderr[-3000:]
  text = md.read_text()
  assert "<!-- begin device_check cpu -->" in text
  assert "2 local device(s)" in text
  rows = {line.split("|")[1].strip(): line.split("|")[2:-1]
          for line in text.splitlines()
          if re.match(r"\| (encoder|probe|lam|extract|devices) \|", line)}
  assert sorted(rows) == ["devices", "encoder", "extract", "lam", "probe"]
  for name in ("encoder", "probe", "lam", "extract"):
    ours, mfu, compile_s = rows[name][1], rows[name][4], rows[name][6]
    assert re.fullmatch(r" [0-9.]+ (images|steps|pairs)/s.*", ours), ours
    assert float(compile_s) > 0, name
    assert re.search(r"= [0-9.]+%", mfu), (name, mfu)
  # PyTorch (CPU) ran the same encoder and probe steps.
  for name in ("encoder", "probe"):
    assert re.fullmatch(r" \*\*[0-9.]+x\*\* ", rows[name][3]), rows[name]
  assert "devices busy" in rows["extract"][1]
  assert "4 rows on 2 device(s): bitwise equal" in rows["devices"][1]
