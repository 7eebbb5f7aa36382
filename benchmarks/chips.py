"""Published peak throughput of accelerators, keyed by JAX's `device_kind`.

Dense (no structured sparsity) tensor-core / MXU peaks per chip from the
vendors' data sheets: NVIDIA's H100, H200, A100, L4 and L40S data sheets
(SXM and PCIe/NVL forms differ), Google Cloud's TPU v4, v5e, v5p and v6e
system-architecture pages. `fp32` is NVIDIA's non-tensor FP32 peak (TPUs
publish none). `host_cores` is the physical CPU cores per chip of the usual
cloud VM (GCP a3-highgpu: 26 vCPUs a GPU; ct5lp-hightpu: 28 vCPUs a v5e
chip; two vCPUs a core), which decode the frames.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip."""

  name: str
  bf16_tflops: float
  fp32_tflops: float | None  # non-tensor FP32; None where unpublished
  hbm_gib: float
  hbm_tb_s: float  # memory bandwidth, TB/s
  host_cores: float  # physical host CPU cores per chip (see module doc)


# (substring of device_kind, lower case) -> chip; the first match wins, so
# the more specific names come first.
CHIPS: tuple[tuple[str, Chip], ...] = (
    ("h100 pcie", Chip("NVIDIA H100 PCIe", 756.5, 51.2, 80, 2.0, 13)),
    ("h100 nvl", Chip("NVIDIA H100 NVL", 835.5, 59.8, 94, 3.9, 13)),
    ("h100", Chip("NVIDIA H100 SXM", 989.4, 66.9, 80, 3.35, 13)),
    ("h200 nvl", Chip("NVIDIA H200 NVL", 835.5, 59.8, 141, 4.8, 13)),
    ("h200", Chip("NVIDIA H200 SXM", 989.4, 66.9, 141, 4.8, 13)),
    ("a100-sxm4-40gb", Chip("NVIDIA A100 SXM 40GB", 312, 19.5, 40, 1.555,
                            6)),
    ("a100-pcie-40gb", Chip("NVIDIA A100 PCIe 40GB", 312, 19.5, 40, 1.555,
                            6)),
    ("a100 80gb pcie", Chip("NVIDIA A100 PCIe 80GB", 312, 19.5, 80, 1.935,
                            6)),
    ("a100", Chip("NVIDIA A100 SXM 80GB", 312, 19.5, 80, 2.039, 6)),
    ("l40s", Chip("NVIDIA L40S", 362.05, 91.6, 48, 0.864, 8)),
    ("nvidia l4", Chip("NVIDIA L4", 121, 30.3, 24, 0.3, 8)),
    ("tpu v5 lite", Chip("TPU v5e", 197, None, 16, 0.819, 14)),
    ("tpu v5e", Chip("TPU v5e", 197, None, 16, 0.819, 14)),
    ("tpu v6 lite", Chip("TPU v6e", 918, None, 32, 1.64, 11)),
    ("tpu v6e", Chip("TPU v6e", 918, None, 32, 1.64, 11)),
    ("tpu v5p", Chip("TPU v5p", 459, None, 95, 2.765, 26)),
    ("tpu v5", Chip("TPU v5p", 459, None, 95, 2.765, 26)),
    ("tpu v4", Chip("TPU v4", 275, None, 32, 1.2, 30)),
)


def lookup(device_kind: str) -> Chip | None:
  """The chip whose name `device_kind` contains (None: not in the table)."""
  kind = device_kind.lower()
  for key, chip in CHIPS:
    if key in kind:
      return chip
  return None


def by_name(name: str) -> Chip:
  """The chip called `name` (e.g. "TPU v5e", "NVIDIA H100 SXM")."""
  for _, chip in CHIPS:
    if chip.name == name:
      return chip
  raise KeyError(f"{name!r}: known chips are "
                 f"{sorted({c.name for _, c in CHIPS})}")
