"""DomainStats: per-domain token-loss sums and token counts, plus named per-domain extra sums.

One float64 tensor of shape (2 + extras, K) on the training device: row 0 the token-loss
sums, row 1 the token counts, then one row per extra signal summed per token (e.g. the
excess loss over a reference model). A step, a logging interval, a phase and an
evaluation each keep one; they are summed over ranks with one ``all_reduce`` and turned
into per-domain means with ``mean`` / ``per_token`` — the only places that know the layout.
"""

from __future__ import annotations

import numpy as np
import torch

from megamix.training.distributed import all_reduce_sum, to_host


class DomainStats:
    """Per-domain sums over tokens: loss, token count, and the named ``extras``."""

    def __init__(self, num_domains: int, device: torch.device, extras: tuple[str, ...] = (),
                 data: torch.Tensor | None = None) -> None:
        self.extras = tuple(extras)
        shape = (2 + len(self.extras), num_domains)
        self.data = torch.zeros(shape, dtype=torch.float64, device=device) if data is None else data
        if tuple(self.data.shape) != shape:
            raise ValueError(f"DomainStats: expected data of shape {shape}, got {tuple(self.data.shape)}")

    @property
    def num_domains(self) -> int:
        """K."""
        return self.data.shape[1]

    def add_tokens(self, domain_id: torch.Tensor, loss_sums: torch.Tensor, tokens: torch.Tensor) -> None:
        """Add samples' token-loss sums and token counts to their domains."""
        self.data[0].index_add_(0, domain_id, loss_sums.double())
        self.data[1].index_add_(0, domain_id, tokens.double())

    def add_extra(self, name: str, domain_id: torch.Tensor, values: torch.Tensor) -> None:
        """Add samples' sums of the extra signal ``name`` to their domains."""
        self.data[2 + self.extras.index(name)].index_add_(0, domain_id, values.double())

    def add_(self, other: "DomainStats") -> "DomainStats":
        """Add ``other``'s loss sums and counts, and those of its extras this one also keeps (in place)."""
        self.data[:2] += other.data[:2]
        for i, name in enumerate(self.extras):
            if name in other.extras:
                self.data[2 + i] += other.data[2 + other.extras.index(name)]
        return self

    def all_reduce(self) -> "DomainStats":
        """Sum over the data-parallel ranks, in place (one collective)."""
        self.data = all_reduce_sum(self.data)
        return self

    def to_cpu(self) -> "DomainStats":
        """A host copy (one device-to-host transfer); its means then cost no further sync."""
        return DomainStats(self.num_domains, torch.device("cpu"), self.extras, self.data.cpu())

    def mean(self) -> np.ndarray:
        """Per-domain mean token loss (K,) on the host; NaN where a domain had no tokens."""
        host = to_host(self.data)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(host[1] > 0, host[0] / np.maximum(host[1], 1), np.nan)

    def per_token(self, name: str) -> np.ndarray:
        """Per-domain mean of the extra ``name`` over tokens (K,); 0 where a domain had no tokens."""
        host = to_host(self.data)
        return np.where(host[1] > 0, host[2 + self.extras.index(name)] / np.maximum(host[1], 1), 0.0)

    def totals(self) -> tuple[float, np.ndarray]:
        """The token-mean loss over all domains and the per-domain token counts (K,)."""
        host = to_host(self.data)
        return float(host[0].sum() / max(host[1].sum(), 1)), host[1]

    def to_dict(self) -> dict:
        """JSON form (for checkpoints)."""
        return {"extras": list(self.extras), "data": to_host(self.data).tolist()}

    @classmethod
    def from_dict(cls, d: dict, device: torch.device) -> "DomainStats":
        """Inverse of :meth:`to_dict`, on ``device``."""
        data = torch.tensor(np.asarray(d["data"], dtype=np.float64), dtype=torch.float64, device=device)
        return cls(data.shape[1], device, tuple(d["extras"]), data)
