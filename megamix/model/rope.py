"""Rotary position embeddings (RoPE, Su et al. 2021), in the rotate-half layout Megatron-LM uses."""

from __future__ import annotations

import torch
from torch import nn


def rotary_tables(head_dim: int, max_positions: int, base: float,
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 cos and sin tables, each [max_positions, head_dim], for positions 0..max_positions-1."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    positions = torch.arange(max_positions, device=device, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [..., S, head_dim] by the angles of positions 0..S-1 (tables [S, head_dim])."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """Holds the cos/sin tables (non-persistent, always float32) and rotates queries and keys."""

    def __init__(self, head_dim: int, max_positions: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
        self.head_dim, self.max_positions, self.base = head_dim, max_positions, base
        cos, sin = rotary_tables(head_dim, max_positions, base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _apply(self, fn, recurse: bool = True):
        # Module casts (.bfloat16(), .half(), DeepSpeed's bf16 set-up) would round the tables;
        # recompute them in float32 on whatever device the cast moved them to.
        super()._apply(fn, recurse)
        if self.cos.dtype != torch.float32:
            cos, sin = rotary_tables(self.head_dim, self.max_positions, self.base, device=self.cos.device)
            self.cos, self.sin = cos, sin
        return self

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q and k, each [B, heads, S, head_dim], by their positions 0..S-1."""
        seq = q.shape[-2]
        cos, sin = self.cos[:seq], self.sin[:seq]
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
