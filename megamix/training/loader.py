"""The step's data feed: this rank's micro-batches assembled ahead of the step in a background thread.

For optimizer step t the loader reads the rank's micro-batches (Megatron's sampler slicing,
``micro_batch_indices``) from the blend into host tensors — pinned on CUDA so the copy to
the device is asynchronous — together with the number of tokens each domain has in the
whole global batch (the step objective's weights need it). While step t trains, a single
worker thread assembles steps t+1 … t+depth; numpy's reads from the memory-mapped token
files release the GIL for most of their time. The order of samples is exactly the
sampler's: prefetching only moves *when* a batch is read, never *what* is read.

A step can only be prefetched once its samples are in the blend (the phase loop appends a
segment at each phase start), so the first step of a phase is read on demand.
Each sample ships as one ``seq_length + 1`` token window (tokens and labels are views of
it) and its domain id; there is no loss mask: every token's loss counts.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from megamix.data.blend import BlendedDataset
from megamix.data.sampler import micro_batch_indices


@dataclass
class MicroBatch:
    """One micro-batch: ``windows`` int64[B, seq+1] and ``domain_id`` int64[B]."""

    windows: torch.Tensor
    domain_id: torch.Tensor

    @property
    def tokens(self) -> torch.Tensor:
        """Model inputs int64[B, seq] (a view)."""
        return self.windows[:, :-1]

    @property
    def labels(self) -> torch.Tensor:
        """Next-token targets int64[B, seq] (a view)."""
        return self.windows[:, 1:]

    def to(self, device: torch.device) -> "MicroBatch":
        """The micro-batch on ``device`` (an asynchronous copy from pinned memory)."""
        if self.windows.device == device:
            return self
        return MicroBatch(self.windows.to(device, non_blocking=True), self.domain_id.to(device, non_blocking=True))


@dataclass
class StepBatch:
    """Everything one optimizer step reads: this rank's micro-batches and the global batch's domain tokens."""

    step: int
    micro_batches: list[MicroBatch]
    domain_tokens: np.ndarray
    """Tokens of each domain in the whole global batch (float64[K], identical on every rank)."""


def read_micro_batch(blend: BlendedDataset, indices: np.ndarray, pin: bool = False) -> MicroBatch:
    """The samples at global ``indices`` as host tensors (pinned when ``pin``)."""
    shape = (len(indices), blend.datasets[0].seq_length + 1)
    windows = torch.empty(shape, dtype=torch.int64, device="cpu", pin_memory=pin)
    domains = blend.read_windows(indices, windows.numpy())
    domain_id = torch.from_numpy(domains)
    return MicroBatch(windows, domain_id.pin_memory() if pin else domain_id)


def load_micro_batch(blend: BlendedDataset, indices: np.ndarray, device: torch.device) -> MicroBatch:
    """The samples at global ``indices`` on ``device`` (read now, in this thread)."""
    return read_micro_batch(blend, indices, pin=device.type == "cuda").to(device)


class StepLoader:
    """Prefetches the steps after the one being trained; ``get(step)`` returns it on the device.

    ``depth`` is how many steps are assembled ahead (--dataloader-prefetch); 0 reads each
    step in the training thread when it is asked for.
    """

    def __init__(self, blend: BlendedDataset, global_batch_size: int, micro_batch_size: int, dp_rank: int,
                 dp_size: int, device: torch.device, depth: int = 2) -> None:
        if depth < 0:
            raise ValueError(f"--dataloader-prefetch must be >= 0, got {depth}")
        self.blend = blend
        self.sizes = (global_batch_size, micro_batch_size, dp_rank, dp_size)
        self.device = torch.device(device)
        self.depth = depth
        self.pin = self.device.type == "cuda"
        self._pending: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="megamix-loader") if depth else None

    def assemble(self, step: int) -> StepBatch:
        """Read optimizer step ``step``'s batch into host tensors (what the worker runs).

        All of this rank's micro-batches are read in one call (one gather per domain) into
        one buffer; each micro-batch is a contiguous row slice of it.
        """
        gbs, mbs, rank, size = self.sizes
        g0 = step * gbs
        k = len(self.blend.datasets)
        counts = np.bincount(self.blend.domain_ids(g0, g0 + gbs), minlength=k).astype(np.float64)
        whole = read_micro_batch(self.blend, np.concatenate(micro_batch_indices(step, gbs, mbs, rank, size)),
                                 self.pin)
        micro = [MicroBatch(whole.windows[i:i + mbs], whole.domain_id[i:i + mbs])
                 for i in range(0, len(whole.domain_id), mbs)]
        return StepBatch(step, micro, counts * self.blend.datasets[0].seq_length)

    def get(self, step: int) -> StepBatch:
        """Step ``step``'s batch with its micro-batches on the device; queues the next steps."""
        future = self._pending.pop(step, None)
        for stale in [s for s in self._pending if s < step]:  # a jump (resume): drop what will not be asked
            self._pending.pop(stale).cancel()
        batch = future.result() if future is not None else self.assemble(step)
        self._prefetch(step + 1)
        batch.micro_batches = [mb.to(self.device) for mb in batch.micro_batches]
        return batch

    def _prefetch(self, first: int) -> None:
        if self._pool is None:
            return
        available = len(self.blend) // self.sizes[0]  # steps whose samples are in the blend
        for s in range(first, min(first + self.depth, available)):
            if s not in self._pending:
                self._pending[s] = self._pool.submit(self.assemble, s)

    def close(self) -> None:
        """Stop the worker (queued reads are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()
