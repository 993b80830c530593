"""Per-domain loss on fixed evaluation sets, sharded over ranks and all-reduced."""

from __future__ import annotations

import math

import numpy as np
import torch

from megamix.data.domain import DomainDataset
from megamix.training.domain_stats import DomainStats


class Evaluator:
    """Mean token loss per domain on the first ``num_samples`` samples of each domain's split.

    The sets are fixed for the whole run (epoch 0 of the valid or test split), so successive
    evaluations are comparable. All domains' samples are pooled and split into equal
    contiguous shares, one per rank (shares differ by at most one sample), each cut into
    micro-batches; every rank runs the same number of forward passes (padding with a
    zero-weight repeat), which ZeRO-3's parameter gathering requires. Equal shares keep the
    slowest rank, which every evaluation waits for, at 1/world of the work: dealing whole
    micro-batches round-robin instead left rank 0 with 128 of 192 samples at K = 3 × 64.
    The result does not depend on the split: each sample's loss sum enters a float64 sum.
    """

    def __init__(self, datasets: list[DomainDataset], num_samples: int | None, micro_batch_size: int,
                 rank: int, world_size: int, device: torch.device) -> None:
        self.num_domains = len(datasets)
        self.device = device
        self.sizes = [len(ds) if num_samples is None else min(num_samples, len(ds)) for ds in datasets]
        pool = [(d, k) for d, n in enumerate(self.sizes) for k in range(n)]
        mine = pool[len(pool) * rank // world_size:len(pool) * (rank + 1) // world_size]
        rounds = max(1, math.ceil(math.ceil(len(pool) / world_size) / micro_batch_size))
        self.batches = []
        for r in range(rounds):
            items = mine[r * micro_batch_size:(r + 1) * micro_batch_size]
            weight = 1.0 if items else 0.0
            self.batches.append(self._load(datasets, items or pool[:1], weight))

    def _load(self, datasets: list[DomainDataset], items: list[tuple[int, int]], weight: float) -> dict:
        samples = [datasets[d][k] for d, k in items]
        return {
            "tokens": torch.from_numpy(np.stack([s["tokens"] for s in samples]).astype(np.int64)),
            "labels": torch.from_numpy(np.stack([s["labels"] for s in samples]).astype(np.int64)),
            "loss_mask": torch.from_numpy(np.stack([s["loss_mask"] for s in samples]).astype(np.float32)) * weight,
            "domain_id": torch.tensor([d for d, _ in items], dtype=torch.int64),
        }

    @torch.no_grad()
    def local_stats(self, model) -> DomainStats:
        """This rank's per-domain token-loss sums and token counts over its share (not reduced)."""
        stats = DomainStats(self.num_domains, self.device)
        was_training = model.training
        model.eval()
        for b in self.batches:
            mask = b["loss_mask"].to(self.device)
            losses = model(b["tokens"].to(self.device), b["labels"].to(self.device)) * mask
            stats.add_tokens(b["domain_id"].to(self.device), losses.sum(dim=1), mask.sum(dim=1))
        if was_training:
            model.train()
        return stats

    def evaluate(self, model) -> np.ndarray:
        """Per-domain mean token loss (K,), identical on every rank; NaN for an empty domain set."""
        return self.local_stats(model).all_reduce().mean()


def perplexity(loss: np.ndarray) -> np.ndarray:
    """exp(loss), elementwise, capped to stay finite for diverged runs."""
    return np.exp(np.minimum(np.asarray(loss, dtype=np.float64), 700.0))
