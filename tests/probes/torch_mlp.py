"""Upstream's MLP action decoder re-created in PyTorch from its
regression/main.py."""

from __future__ import annotations

import numpy as np
from torch import nn


class TorchMlp(nn.Module):
  """LayerNorm -> Linear -> ReLU -> residual blocks -> LayerNorm -> Linear."""

  def __init__(self, input_dim: int, output_dim: int, hidden: int,
               blocks: int = 2):
    super().__init__()
    self.norm_in = nn.LayerNorm(input_dim)
    self.fc1 = nn.Linear(input_dim, hidden)
    self.blocks = nn.ModuleList(
        [nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden))
         for _ in range(blocks)])
    self.norm_out = nn.LayerNorm(hidden)
    self.fc2 = nn.Linear(hidden, output_dim)

  def forward(self, x):
    x = self.fc1(self.norm_in(x)).relu()
    for block in self.blocks:
      x = block(x).relu() + x
    return self.fc2(self.norm_out(x))


def jax_params(mlp: TorchMlp, value=lambda p: p.detach().numpy().copy()
               ) -> dict[str, np.ndarray]:
  """Our decoder's parameters (dotted nnx paths) from the torch one's."""
  def linear(prefix, m):
    return {f"{prefix}.kernel": value(m.weight).T,
            f"{prefix}.bias": value(m.bias)}

  def norm(prefix, m):
    return {f"{prefix}.scale": value(m.weight), f"{prefix}.bias": value(m.bias)}

  out = {**norm("norm_in", mlp.norm_in), **linear("fc1", mlp.fc1),
         **norm("norm_out", mlp.norm_out), **linear("fc2", mlp.fc2)}
  for i, block in enumerate(mlp.blocks):
    out.update({**norm(f"blocks.{i}.norm", block[0]),
                **linear(f"blocks.{i}.linear", block[1])})
  return out
