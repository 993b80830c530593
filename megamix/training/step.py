"""One optimizer step: this rank's micro-batches, the weighted objective, per-domain loss sums."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from megamix.data.blend import BlendedDataset
from megamix.data.sampler import micro_batch_indices
from megamix.training.distributed import all_reduce_sum


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


def token_weights(blend: BlendedDataset, step: int, layout: StepLayout,
                  loss_weights: np.ndarray | None) -> torch.Tensor:
    """Per-domain weight of one token's loss in the step objective (a K float64 tensor).

    Plain objective: the token mean over the global batch, w_d = 1 / N. With per-domain
    loss weights a (DoReMi's proxy): sum_d a_d * (mean token loss of domain d), so
    w_d = a_d / N_d. N_d is known before the step from the blend (every token of a sample
    counts: the loss mask is all ones).
    """
    g0 = step * layout.global_batch_size
    ids = blend.domain_ids(g0, g0 + layout.global_batch_size)
    tokens = np.bincount(ids, minlength=layout.num_domains).astype(np.float64) * layout.seq_length
    if loss_weights is None:
        w = np.full(layout.num_domains, 1.0 / tokens.sum())
    else:
        w = np.divide(loss_weights, tokens, out=np.zeros_like(tokens), where=tokens > 0)
    return torch.from_numpy(w)


def load_micro_batch(blend: BlendedDataset, indices: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """The samples at global ``indices`` as tensors on ``device``."""
    batch = blend.get_batch(indices)
    return {
        "tokens": torch.from_numpy(np.ascontiguousarray(batch["tokens"], dtype=np.int64)).to(device),
        "labels": torch.from_numpy(np.ascontiguousarray(batch["labels"], dtype=np.int64)).to(device),
        "loss_mask": torch.from_numpy(np.ascontiguousarray(batch["loss_mask"], dtype=np.float32)).to(device),
        "domain_id": torch.from_numpy(np.ascontiguousarray(batch["domain_id"], dtype=np.int64)).to(device),
    }


class StepRunner:
    """Runs optimizer steps on a DeepSpeed engine and measures per-domain losses.

    Each step returns one all-reduced float64 vector: per-domain token-loss sums (K), token
    counts (K), and, when a reference model is set, per-domain sums of the excess loss
    max(loss - reference loss, 0) (K) — one all-reduce per step.
    """

    def __init__(self, engine, blend: BlendedDataset, layout: StepLayout, device: torch.device,
                 reference: torch.nn.Module | None = None, scorer=None) -> None:
        self.engine = engine
        self.blend = blend
        self.layout = layout
        self.device = device
        self.reference = reference
        self.scorer = scorer

    def run(self, step: int, loss_weights: np.ndarray | None = None,
            signals: tuple[str, ...] = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Train optimizer step ``step`` (0-based).

        Returns the all-reduced statistics vector and the requested signals computed
        outside it (DoGE's gradient scores, taken before the update).
        """
        extras = {}
        if "domain_grad_scores" in signals:
            if self.scorer is None:
                raise RuntimeError("the domain_grad_scores signal needs a DomainGradScorer")
            extras["domain_grad_scores"] = self.scorer.scores(step, float(self.engine.get_lr()[0]))
        return self._train(step, loss_weights, "excess_loss" in signals), extras

    def _train(self, step: int, loss_weights: np.ndarray | None, want_excess: bool) -> np.ndarray:
        lay = self.layout
        k = lay.num_domains
        w = token_weights(self.blend, step, lay, loss_weights).to(self.device)
        scale = lay.dp_size * lay.grad_accum
        stats = torch.zeros(3 * k if want_excess else 2 * k, dtype=torch.float64, device=self.device)
        for idx in micro_batch_indices(step, lay.global_batch_size, lay.micro_batch_size, lay.dp_rank, lay.dp_size):
            mb = load_micro_batch(self.blend, idx, self.device)
            losses = self.engine(mb["tokens"], mb["labels"]) * mb["loss_mask"]
            per_sample = losses.sum(dim=1)
            objective = (per_sample.double() * w[mb["domain_id"]]).sum() * scale
            self.engine.backward(objective.float())
            self.engine.step()
            dom = mb["domain_id"]
            stats[:k].index_add_(0, dom, per_sample.detach().double())
            stats[k:2 * k].index_add_(0, dom, mb["loss_mask"].sum(dim=1).double())
            if want_excess:
                stats[2 * k:].index_add_(0, dom, self._excess(mb, losses.detach()))
        return all_reduce_sum(stats).cpu().numpy()

    @torch.no_grad()
    def _excess(self, mb: dict[str, torch.Tensor], losses: torch.Tensor) -> torch.Tensor:
        if self.reference is None:
            raise RuntimeError("the excess_loss signal needs a reference model (--doremi-reference)")
        ref = self.reference(mb["tokens"], mb["labels"]) * mb["loss_mask"]
        return (losses - ref).clamp_min(0.0).sum(dim=1).double()
