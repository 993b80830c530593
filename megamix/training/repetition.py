"""Repetition accounting: how many times each domain's training split has been drawn.

A domain's stream is endless by epochs (domain sample k lives in epoch
``k // samples_per_epoch``), so a domain that runs out of documents repeats. The tracker
counts each domain's drawn samples step by step, reports epochs (drawn / samples per
epoch), warns the first time a domain starts a new epoch, and with ``--max-domain-epochs X``
refuses a phase whose segment would draw a domain past X epochs, before its first step
(OLMo-core's ``max_repetition_ratio``, checked per phase because mixtures change online).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from megamix.data.blend import BlendedDataset


class RepetitionLimitError(RuntimeError):
    """A phase would draw a domain's training split more than --max-domain-epochs times."""


class RepetitionTracker:
    """Per-domain drawn samples and epochs at the current step; the same on every rank."""

    def __init__(self, blend: BlendedDataset, samples_per_epoch: Sequence[int], global_batch_size: int,
                 iteration: int, max_epochs: float | None = None,
                 warn: Callable[[str, dict], None] = lambda line, event: None) -> None:
        self.blend = blend
        self.domains = [ds.name for ds in blend.datasets]
        self.samples_per_epoch = np.asarray(samples_per_epoch, dtype=np.int64)
        self.global_batch_size = global_batch_size
        self.max_epochs = max_epochs
        self.warn = warn
        self.counts = self._drawn(0, iteration * global_batch_size)
        self._started = self._epochs_started()

    def _drawn(self, start: int, stop: int) -> np.ndarray:
        """Samples of each domain among global samples ``[start, stop)``."""
        if stop <= start:
            return np.zeros(len(self.domains), dtype=np.int64)
        return np.bincount(self.blend.domain_ids(start, stop), minlength=len(self.domains)).astype(np.int64)

    def _epochs_started(self) -> np.ndarray:
        return -(-self.counts // self.samples_per_epoch)

    def epochs(self) -> np.ndarray:
        """Epochs drawn so far per domain (drawn samples / samples per epoch; 1.5 = one and a half times)."""
        return self.counts / self.samples_per_epoch

    def after_step(self, iteration: int) -> None:
        """Count the global batch of step ``iteration`` (1-based) and warn on each domain's new epoch."""
        g = self.global_batch_size
        self.counts += self._drawn((iteration - 1) * g, iteration * g)
        started = self._epochs_started()
        for d in np.flatnonzero(started > np.maximum(self._started, 1)).tolist():
            name, epoch = self.domains[d], int(started[d])
            self.warn(f"WARNING: domain {name!r} starts epoch {epoch} at iteration {iteration}: its "
                      f"{int(self.samples_per_epoch[d])} training samples are being repeated "
                      f"(--max-domain-epochs limits this)",
                      {"event": "domain_epoch", "step": iteration, "domain": name, "epoch": epoch})
        self._started = started

    def check_phase(self, iteration: int) -> None:
        """Raise RepetitionLimitError when the synced schedule would pass --max-domain-epochs."""
        if self.max_epochs is None:
            return
        limit = np.floor(self.max_epochs * self.samples_per_epoch).astype(np.int64)
        over = np.flatnonzero(self.blend.cursors() > limit)
        if not len(over):
            return
        d = int(over[0])
        step = self._step_exceeding(d, int(limit[d]), iteration)
        raise RepetitionLimitError(
            f"domain {self.domains[d]!r} would be drawn {self.blend.cursors()[d] / self.samples_per_epoch[d]:.3f} "
            f"epochs by the end of the phase starting at iteration {iteration}, passing --max-domain-epochs "
            f"{self.max_epochs:g} at step {step} (it has {int(self.samples_per_epoch[d])} training samples per "
            f"epoch); raise --max-domain-epochs, add data "
            f"to the domain, or lower its weight")

    def _step_exceeding(self, d: int, limit: int, iteration: int) -> int:
        """The 1-based step whose batch draws domain ``d``'s sample number ``limit + 1``."""
        start = iteration * self.global_batch_size
        ids = self.blend.domain_ids(start, len(self.blend))
        need = limit + 1 - int(self._drawn(0, start)[d])  # only on the way to an error: O(run) is fine
        position = int(np.flatnonzero(ids == d)[max(need, 1) - 1])
        return (start + position) // self.global_batch_size + 1

    def describe(self) -> str:
        """Per-domain epochs for the progress line, e.g. ``code 1.25 math 0.40``."""
        return " ".join(f"{n} {e:.2f}" for n, e in zip(self.domains, self.epochs()))

