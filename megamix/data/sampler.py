"""Megatron's pretraining sampler: which global samples each data-parallel rank reads, step by step.

Global batch b covers global samples ``[b * G, (b + 1) * G)``. It is consumed in chunks of
``micro * dp`` consecutive samples (one chunk per gradient-accumulation micro-step);
data-parallel rank r takes ``[r * micro, (r + 1) * micro)`` of each chunk.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


def check_batch_sizes(global_batch_size: int, micro_batch_size: int, dp_rank: int, dp_size: int) -> int:
    """Gradient-accumulation steps ``G // (micro * dp)``; ValueError naming the flags when inconsistent."""
    for flag, value in (("--global-batch-size", global_batch_size), ("--micro-batch-size", micro_batch_size),
                        ("data-parallel size", dp_size)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{flag} must be an integer >= 1, got {value!r}")
    if not isinstance(dp_rank, (int, np.integer)) or not 0 <= dp_rank < dp_size:
        raise ValueError(f"data-parallel rank must be in [0, {dp_size}), got {dp_rank!r}")
    chunk = micro_batch_size * dp_size
    if global_batch_size % chunk:
        raise ValueError(f"--global-batch-size {global_batch_size} is not divisible by --micro-batch-size "
                         f"{micro_batch_size} x data-parallel size {dp_size} = {chunk}")
    return global_batch_size // chunk


def micro_batch_indices(step: int, global_batch_size: int, micro_batch_size: int, dp_rank: int,
                        dp_size: int) -> list[np.ndarray]:
    """Global sample indices of this rank's ``gas`` micro-batches of optimizer step ``step`` (0-based)."""
    gas = check_batch_sizes(global_batch_size, micro_batch_size, dp_rank, dp_size)
    if not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    chunk = micro_batch_size * dp_size
    base = int(step) * global_batch_size + dp_rank * micro_batch_size
    return [np.arange(base + c * chunk, base + c * chunk + micro_batch_size, dtype=np.int64) for c in range(gas)]


class MegatronPretrainingSampler:
    """Iterator of this rank's micro-batches (lists of global sample indices) from ``consumed_samples`` on.

    Endless when ``total_samples`` is None; otherwise it stops before the first chunk of
    ``micro * dp`` samples that does not fit below ``total_samples``.
    """

    def __init__(self, consumed_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int,
                 global_batch_size: int, total_samples: int | None = None) -> None:
        self.gas = check_batch_sizes(global_batch_size, micro_batch_size, dp_rank, dp_size)
        self.chunk = micro_batch_size * dp_size
        if not isinstance(consumed_samples, (int, np.integer)) or consumed_samples < 0:
            raise ValueError(f"consumed_samples must be an integer >= 0, got {consumed_samples!r}")
        if consumed_samples % self.chunk:
            raise ValueError(f"consumed_samples {consumed_samples} is not a multiple of --micro-batch-size "
                             f"x data-parallel size = {self.chunk}")
        if total_samples is not None and not 0 <= consumed_samples <= total_samples:
            raise ValueError(f"consumed_samples {consumed_samples} exceeds total_samples {total_samples}")
        self.consumed_samples = int(consumed_samples)
        self.micro_batch_size, self.dp_rank, self.dp_size = micro_batch_size, dp_rank, dp_size
        self.global_batch_size, self.total_samples = global_batch_size, total_samples

    def __len__(self) -> int:
        if self.total_samples is None:
            raise TypeError("an endless MegatronPretrainingSampler (total_samples=None) has no length")
        return (self.total_samples - self.consumed_samples) // self.chunk

    def __iter__(self) -> Iterator[list[int]]:
        start = self.consumed_samples
        offset = self.dp_rank * self.micro_batch_size
        while self.total_samples is None or start + self.chunk <= self.total_samples:
            first = start + offset
            yield list(range(first, first + self.micro_batch_size))
            start += self.chunk
