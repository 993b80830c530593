"""One optimizer step: this rank's micro-batches, the weighted objective, per-domain loss sums."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from megamix.data.blend import BlendedDataset
from megamix.training.distributed import all_reduce_sum
from megamix.training.loader import MicroBatch, StepLoader, load_micro_batch

__all__ = ["StepLayout", "StepRunner", "load_micro_batch", "token_weights"]


@dataclass(frozen=True)
class StepLayout:
    """How a global batch is cut: sizes and this rank's place."""

    global_batch_size: int
    micro_batch_size: int
    seq_length: int
    dp_rank: int
    dp_size: int
    num_domains: int

    @property
    def grad_accum(self) -> int:
        """Micro-batches per rank per optimizer step."""
        return self.global_batch_size // (self.micro_batch_size * self.dp_size)


def token_weights(domain_tokens: np.ndarray, loss_weights: np.ndarray | None) -> np.ndarray:
    """Per-domain weight of one token's loss in the step objective (float64[K]).

    Plain objective: the token mean over the global batch, w_d = 1 / N. With per-domain
    loss weights a (DoReMi's proxy): sum_d a_d * (mean token loss of domain d), so
    w_d = a_d / N_d. ``domain_tokens`` (N_d) is known before the step from the blend (every
    token of a sample counts).
    """
    tokens = np.asarray(domain_tokens, dtype=np.float64)
    if loss_weights is None:
        return np.full(len(tokens), 1.0 / tokens.sum())
    return np.divide(loss_weights, tokens, out=np.zeros_like(tokens), where=tokens > 0)


def _to_device(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host vector on ``device`` without a host sync (pinned, asynchronous copy on CUDA)."""
    t = torch.from_numpy(np.ascontiguousarray(values))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class StepRunner:
    """Runs optimizer steps on a DeepSpeed engine and measures per-domain losses.

    Each step returns one all-reduced float64 vector, left on the device (no host sync):
    per-domain token-loss sums (K), token counts (K), and, when a reference model is set,
    per-domain sums of the excess loss max(loss - reference loss, 0) (K) — one all-reduce
    per step. Batches come from a prefetching :class:`StepLoader` (``prefetch`` steps ahead).
    """

    def __init__(self, engine, blend: BlendedDataset, layout: StepLayout, device: torch.device,
                 reference: torch.nn.Module | None = None, scorer=None, prefetch: int = 2) -> None:
        self.engine = engine
        self.blend = blend
        self.layout = layout
        self.device = torch.device(device)
        self.reference = reference
        self.scorer = scorer
        self.loader = StepLoader(blend, layout.global_batch_size, layout.micro_batch_size, layout.dp_rank,
                                 layout.dp_size, self.device, prefetch)
        self._seq = torch.full((layout.micro_batch_size,), float(layout.seq_length), dtype=torch.float64,
                               device=self.device)

    def run(self, step: int, loss_weights: np.ndarray | None = None,
            signals: tuple[str, ...] = ()) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        """Train optimizer step ``step`` (0-based).

        Returns the all-reduced statistics vector (on the device) and the requested signals
        computed outside it (DoGE's gradient scores, taken before the update).
        """
        extras = {}
        if "domain_grad_scores" in signals:
            if self.scorer is None:
                raise RuntimeError("the domain_grad_scores signal needs a DomainGradScorer")
            extras["domain_grad_scores"] = self.scorer.scores(step, float(self.engine.get_lr()[0]))
        return self._train(step, loss_weights, "excess_loss" in signals), extras

    def _train(self, step: int, loss_weights: np.ndarray | None, want_excess: bool) -> torch.Tensor:
        lay = self.layout
        k = lay.num_domains
        batch = self.loader.get(step)
        w = _to_device(token_weights(batch.domain_tokens, loss_weights), self.device)
        scale = lay.dp_size * lay.grad_accum
        stats = torch.zeros(3 * k if want_excess else 2 * k, dtype=torch.float64, device=self.device)
        for mb in batch.micro_batches:
            losses = self.engine(mb.tokens, mb.labels)
            per_sample = losses.sum(dim=1)
            objective = (per_sample.double() * w[mb.domain_id]).sum() * scale
            self.engine.backward(objective.float())
            self.engine.step()
            stats[:k].index_add_(0, mb.domain_id, per_sample.detach().double())
            stats[k:2 * k].index_add_(0, mb.domain_id, self._seq[:len(mb.domain_id)])
            if want_excess:
                stats[2 * k:].index_add_(0, mb.domain_id, self._excess(mb, losses.detach()))
        return all_reduce_sum(stats)

    @torch.no_grad()
    def _excess(self, mb: MicroBatch, losses: torch.Tensor) -> torch.Tensor:
        if self.reference is None:
            raise RuntimeError("the excess_loss signal needs a reference model (--doremi-reference)")
        ref = self.reference(mb.tokens, mb.labels)
        return (losses - ref).clamp_min(0.0).sum(dim=1).double()

    def close(self) -> None:
        """Stop the prefetching worker."""
        self.loader.close()
