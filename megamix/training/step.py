"""One optimizer step: this rank's micro-batches, the weighted objective, per-domain statistics, signals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from megamix.data.blend import BlendedDataset
from megamix.training.distributed import to_host
from megamix.training.domain_stats import DomainStats
from megamix.training.loader import StepLoader
from megamix.training.signals import SignalProvider


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
    loss weights a (a method's ``Phase.loss_weights``): sum_d a_d * (mean token loss of domain d), so
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

    Each step returns its :class:`DomainStats` (per-domain token-loss sums, token counts and
    the per-sample signals asked for), all-reduced in one call and left on the device (no
    host sync), and the per-step signals, computed before the update by their providers.
    Batches come from a prefetching :class:`StepLoader` (``prefetch`` steps ahead); the
    step's batch is located once and handed to the loss weights, the micro-batches and
    every signal provider.
    """

    def __init__(self, engine, blend: BlendedDataset, layout: StepLayout, device: torch.device,
                 providers: dict[str, SignalProvider] | None = None, prefetch: int = 2) -> None:
        self.engine = engine
        self.layout = layout
        self.device = torch.device(device)
        self.providers = providers or {}
        self.loader = StepLoader(blend, layout.global_batch_size, layout.micro_batch_size, layout.dp_rank,
                                 layout.dp_size, self.device, prefetch)
        self._seq = torch.full((layout.micro_batch_size,), float(layout.seq_length), dtype=torch.float64,
                               device=self.device)

    def _provider(self, name: str) -> SignalProvider:
        if name not in self.providers:
            raise RuntimeError(f"a phase asked for the signal {name!r}, which the running method did not declare "
                               f"(declared: {sorted(self.providers) or 'none'})")
        return self.providers[name]

    def sample_signals(self, signals: tuple[str, ...]) -> tuple[str, ...]:
        """Those of ``signals`` that are summed per sample inside the step's statistics."""
        return tuple(n for n in signals if self._provider(n).per_sample)

    def finish_signals(self, signals: tuple[str, ...], sums: dict, stats: DomainStats,
                       steps: int) -> dict[str, np.ndarray]:
        """The phase's value of each signal (``Observation.signals``) from its sums and statistics."""
        return {n: self._provider(n).finish(None if n not in sums else to_host(sums[n]), stats, steps)
                for n in signals}

    def step(self, step: int, loss_weights: np.ndarray | None = None,
             signals: tuple[str, ...] = ()) -> tuple[DomainStats, dict[str, torch.Tensor]]:
        """Train optimizer step ``step`` (0-based); its statistics and its per-step signal values."""
        batch = self.loader.get(step)
        per_sample = self.sample_signals(signals)
        values = {}
        for name in signals:
            if name not in per_sample:
                value = self._provider(name).before_step(step, batch, float(self.engine.get_lr()[0]))
                if value is not None:
                    values[name] = value
        return self._train(batch, loss_weights, per_sample), values

    def _train(self, batch, loss_weights: np.ndarray | None, per_sample: tuple[str, ...]) -> DomainStats:
        lay = self.layout
        w = _to_device(token_weights(batch.domain_tokens, loss_weights), self.device)
        scale = lay.dp_size * lay.grad_accum
        stats = DomainStats(lay.num_domains, self.device, per_sample)
        for mb in batch.micro_batches:
            losses = self.engine(mb.tokens, mb.labels)
            per_token_sum = losses.sum(dim=1)
            objective = (per_token_sum.double() * w[mb.domain_id]).sum() * scale
            self.engine.backward(objective.float())
            self.engine.step()
            stats.add_tokens(mb.domain_id, per_token_sum.detach(), self._seq[:len(mb.domain_id)])
            for name in per_sample:
                stats.add_extra(name, mb.domain_id, self.providers[name].sample_values(mb, losses))
        return stats.all_reduce()

    def close(self) -> None:
        """Stop the prefetching worker."""
        self.loader.close()
