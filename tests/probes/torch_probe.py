"""Upstream's attentive probe re-created in PyTorch from its
classification/src/models/attentive_pooler.py.

The parity oracle for `lary_jax.probes.attentive_probe`: written from the
protocol's description (projector, temporal embedding, pre-norm blocks, a
one-query cross-attention block without output projection, classifier, and
upstream's initialisation), not from upstream's code.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def _trunc_normal(t: torch.Tensor) -> None:
  nn.init.trunc_normal_(t, std=0.02, a=-2.0, b=2.0)


class Mlp(nn.Module):

  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x)))


class SelfBlock(nn.Module):

  def __init__(self, dim: int, heads: int, hidden: int):
    super().__init__()
    self.heads = heads
    self.norm1 = nn.LayerNorm(dim)
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)
    self.norm2 = nn.LayerNorm(dim)
    self.mlp = Mlp(dim, hidden)

  def forward(self, x):
    b, n, d = x.shape
    qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v)
    x = x + self.proj(y.transpose(1, 2).reshape(b, n, d))
    return x + self.mlp(self.norm2(x))


class CrossBlock(nn.Module):

  def __init__(self, dim: int, heads: int, hidden: int):
    super().__init__()
    self.heads = heads
    self.norm1 = nn.LayerNorm(dim)
    self.q = nn.Linear(dim, dim)
    self.kv = nn.Linear(dim, 2 * dim)
    self.norm2 = nn.LayerNorm(dim)
    self.mlp = Mlp(dim, hidden)

  def forward(self, query, x):
    b, n, d = x.shape
    h = self.heads
    q = self.q(query).reshape(b, -1, h, d // h).transpose(1, 2)
    kv = self.kv(self.norm1(x)).reshape(b, n, 2, h, d // h)
    k, v = kv.permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v)
    query = query + y.transpose(1, 2).reshape(query.shape)
    return query + self.mlp(self.norm2(query))


class TorchProbe(nn.Module):
  """The probe as upstream builds it (FeatureEvaluator), for one head."""

  def __init__(self, dim: int, classes: int, model_dim: int = 768,
               heads: int = 16, depth: int = 4, max_frames: int = 128):
    super().__init__()
    hidden = 4 * model_dim
    self.proj = nn.Linear(dim, model_dim)
    self.proj_norm = nn.LayerNorm(model_dim)
    self.temporal_embed = nn.Parameter(torch.zeros(1, max_frames, 1, model_dim))
    self.query = nn.Parameter(torch.zeros(1, 1, model_dim))
    self.blocks = nn.ModuleList(
        [SelfBlock(model_dim, heads, hidden) for _ in range(depth - 1)])
    self.cross = CrossBlock(model_dim, heads, hidden)
    self.head = nn.Linear(model_dim, classes)  # PyTorch's default init
    for module in [self.proj, *self.blocks.modules(), *self.cross.modules()]:
      if isinstance(module, nn.Linear):
        _trunc_normal(module.weight)
        nn.init.zeros_(module.bias)
    _trunc_normal(self.query)
    _trunc_normal(self.temporal_embed)
    with torch.no_grad():
      for i, block in enumerate(self.blocks):
        block.proj.weight /= math.sqrt(2.0 * (i + 1))
        block.mlp.fc2.weight /= math.sqrt(2.0 * (i + 1))
      self.cross.mlp.fc2.weight /= math.sqrt(2.0 * max(depth - 1, 1))

  def forward(self, x):
    x = F.gelu(self.proj_norm(self.proj(x)))
    if x.dim() == 4:
      b, t, n, d = x.shape
      x = (x + self.temporal_embed[:, :t]).flatten(1, 2)
    query = self.query.repeat(len(x), 1, 1)
    return self.head(self.cross(query, self._blocks(x)).squeeze(1))

  def _blocks(self, x):
    for block in self.blocks:
      x = block(x)
    return x


def _value(p: torch.Tensor) -> np.ndarray:
  return p.detach().numpy().copy()


def jax_params(probe: TorchProbe, value=_value) -> dict[str, np.ndarray]:
  """Our probe's parameters (dotted nnx paths) from the torch probe's.

  `value(parameter)` picks what is read (default the weights; e.g.
  `lambda p: p.grad.numpy()` for the gradients).
  """
  def linear(prefix, module):
    return {f"{prefix}.kernel": value(module.weight).T,
            f"{prefix}.bias": value(module.bias)}

  def norm(prefix, module):
    return {f"{prefix}.scale": value(module.weight),
            f"{prefix}.bias": value(module.bias)}

  def mlp(prefix, module):
    return {**linear(f"{prefix}.fc1", module.fc1),
            **linear(f"{prefix}.fc2", module.fc2)}

  out = {**linear("proj", probe.proj), **norm("proj_norm", probe.proj_norm),
         "temporal_embed": value(probe.temporal_embed)[0, :, 0],
         "query": value(probe.query)[0], **linear("head", probe.head)}
  for i, b in enumerate(probe.blocks):
    p = f"blocks.{i}"
    out.update({**norm(f"{p}.norm1", b.norm1), **norm(f"{p}.norm2", b.norm2),
                **linear(f"{p}.attn.qkv", b.qkv),
                **linear(f"{p}.attn.proj", b.proj), **mlp(f"{p}.mlp", b.mlp)})
  c = probe.cross
  out.update({**norm("cross.norm1", c.norm1), **norm("cross.norm2", c.norm2),
              **linear("cross.q", c.q), **linear("cross.kv", c.kv),
              **mlp("cross.mlp", c.mlp)})
  return out


def load_into(state, params: dict[str, np.ndarray]):
  """`state` (an nnx.State) with every leaf replaced from dotted `params`."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  flat = nnx.to_flat_state(state)
  paths = {".".join(map(str, path)): path for path, _ in flat}
  if set(paths) != set(params):
    raise KeyError(f"only ours: {sorted(set(paths) - set(params))}; only "
                   f"torch's: {sorted(set(params) - set(paths))}")
  leaves = []
  for path, var in flat:
    value = params[".".join(map(str, path))]
    if value.shape != var.shape:
      raise ValueError(f"{path}: {value.shape} vs {var.shape}")
    leaves.append((path, var.replace(jnp.asarray(value))))
  return nnx.from_flat_state(leaves)
