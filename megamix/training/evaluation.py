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
    evaluations are comparable. All domains' samples are pooled and dealt out in
    micro-batches round-robin over ranks; every rank runs the same number of forward passes
    (padding with zero-weight repeats), which ZeRO-3's parameter gathering requires.
    """

    def __init__(self, datasets: list[DomainDataset], num_samples: int | None, micro_batch_size: int,
                 rank: int, world_size: int, device: torch.device) -> None:
        self.num_domains = len(datasets)
        self.device = device
        self.sizes = [len(ds) if num_samples is None else min(num_samples, len(ds)) for ds in datasets]
        pool = [(d, k) for d, n in enumerate(self.sizes) for k in range(n)]
        per_round = micro_batch_size * world_size
        rounds = max(1, math.ceil(len(pool) / per_round))
        self.batches = []
        for r in range(rounds):
            start = (r * world_size + rank) * micro_batch_size
            items = pool[start:start + micro_batch_size]
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
    def evaluate(self, model) -> np.ndarray:
        """Per-domain mean token loss (K,), identical on every rank; NaN for an empty domain set."""
        stats = DomainStats(self.num_domains, self.device)
        was_training = model.training
        model.eval()
        for b in self.batches:
            mask = b["loss_mask"].to(self.device)
            losses = model(b["tokens"].to(self.device), b["labels"].to(self.device)) * mask
            stats.add_tokens(b["domain_id"].to(self.device), losses.sum(dim=1), mask.sum(dim=1))
        if was_training:
            model.train()
        return stats.all_reduce().mean()


def perplexity(loss: np.ndarray) -> np.ndarray:
    """exp(loss), elementwise, capped to stay finite for diverged runs."""
    return np.exp(np.minimum(np.asarray(loss, dtype=np.float64), 700.0))
