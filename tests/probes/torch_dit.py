"""Upstream's DiT action decoder re-created in PyTorch from its description.

The parity oracle for `lary_jax.probes.dit_decoder`, written from the task's
description of upstream's `ActionExpertDiT` (not from its code): tokens
[t_emb + z_emb, x_emb...] plus a learned positional embedding, pre-norm
blocks with affine-free LayerNorms (eps 1e-6), timm-style attention and tanh
GELU MLP, an affine-free LayerNorm and Linear on every token, the action
tokens out. Upstream also builds an unused history embedder; it is left out
here since it never touches the output or the gradients.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

FREQ_DIM = 256


def timestep_features(t: torch.Tensor, dim: int = FREQ_DIM) -> torch.Tensor:
  half = dim // 2
  freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32)
                    / half)
  args = t.float()[:, None] * freqs[None]
  return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Block(nn.Module):

  def __init__(self, dim: int, heads: int, hidden: int):
    super().__init__()
    self.heads = heads
    self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)
    self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
    self.fc1 = nn.Linear(dim, hidden)
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    b, n, d = x.shape
    qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # [B, heads, N, Dh] each
    y = F.scaled_dot_product_attention(q, k, v)
    x = x + self.proj(y.transpose(1, 2).reshape(b, n, d))
    h = F.gelu(self.fc1(self.norm2(x)), approximate="tanh")
    return x + self.fc2(h)


class TorchDiT(nn.Module):
  """The decoder as upstream builds it (hidden/depth/heads configurable)."""

  def __init__(self, latent_dim: int, action_dim: int, steps: int,
               hidden: int = 512, depth: int = 6, heads: int = 8,
               mlp_ratio: float = 4.0, cond_dropout: float = 0.1):
    super().__init__()
    self.cond_dropout = cond_dropout
    self.x_embedder = nn.Linear(action_dim, hidden)
    self.t_fc1 = nn.Linear(FREQ_DIM, hidden)
    self.t_fc2 = nn.Linear(hidden, hidden)
    self.z_embedder = nn.Linear(latent_dim, hidden)
    self.uncondition = nn.Parameter(torch.empty(1, latent_dim))
    self.pos_embed = nn.Parameter(hidden**-0.5 * torch.randn(1 + steps,
                                                             hidden))
    self.blocks = nn.ModuleList([Block(hidden, heads, int(hidden * mlp_ratio))
                                 for _ in range(depth)])
    self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
    self.final = nn.Linear(hidden, action_dim)
    for module in self.modules():
      if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
    for p in (self.x_embedder.weight, self.z_embedder.weight,
              self.t_fc1.weight, self.t_fc2.weight, self.uncondition):
      nn.init.normal_(p, std=0.02)
    nn.init.zeros_(self.final.weight)

  def forward(self, x, t, z, drop=None):
    """x [B, S, A], t [B] (or [1]), z [B, latent], drop [B] bool or None."""
    if drop is not None:
      z = torch.where(drop[:, None], self.uncondition, z)
    t_emb = self.t_fc2(F.silu(self.t_fc1(timestep_features(t))))
    first = (t_emb + self.z_embedder(z))[:, None]  # [B, 1, H]
    tokens = torch.cat([first, self.x_embedder(x)], dim=1) + self.pos_embed
    for block in self.blocks:
      tokens = block(tokens)
    return self.final(self.norm_final(tokens))[:, 1:]


def huber_loss(model: TorchDiT, scheduler, z, target, t, noise, drop=None):
  """Upstream's training loss with the randomness given."""
  x0 = target.view(len(target), *noise.shape[1:])
  noisy = scheduler.add_noise(x0, noise, t)
  return F.huber_loss(model(noisy, t, z, drop), noise, delta=1.0)


def _value(p: torch.Tensor) -> np.ndarray:
  return p.detach().numpy().copy()


def jax_params(model: TorchDiT, value=_value) -> dict[str, np.ndarray]:
  """Our DiT's parameters (dotted nnx paths) from the torch model's.

  `value(parameter)` picks what is read (default the weights; e.g.
  `lambda p: p.grad.numpy()` for the gradients).
  """
  def linear(prefix, module):
    return {f"{prefix}.kernel": value(module.weight).T,
            f"{prefix}.bias": value(module.bias)}

  out = {**linear("x_embedder", model.x_embedder),
         **linear("t_embedder.fc1", model.t_fc1),
         **linear("t_embedder.fc2", model.t_fc2),
         **linear("z_embedder", model.z_embedder),
         "uncondition": value(model.uncondition)[0],
         "pos_embed": value(model.pos_embed),
         **linear("final", model.final)}
  for i, b in enumerate(model.blocks):
    p = f"blocks.{i}"
    out.update({**linear(f"{p}.attn.qkv", b.qkv),
                **linear(f"{p}.attn.proj", b.proj),
                **linear(f"{p}.mlp.fc1", b.fc1),
                **linear(f"{p}.mlp.fc2", b.fc2)})
  return out
