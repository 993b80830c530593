"""BlendedDataset: global sample g -> (domain d, domain sample k), segment by segment of a MixtureSchedule."""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np

from megamix.data.domain import DomainDataset
from megamix.data.helpers import build_blending_indices
from megamix.data.schedule import MixtureSchedule


class BlendedDataset:
    """Mixture of domain streams following a schedule; each domain continues where it stopped.

    Each segment's assignment starts from the per-domain cursors left by the previous
    segments, so a weight change never repeats or skips a domain's samples. Call ``sync()``
    after appending segments to the schedule (collectively on every rank: it prepares the
    domain epochs the new segments reach). Reads may run in a background thread (the
    prefetching loader) while the main thread syncs: a lock guards the index lists and the
    domains' epoch caches.
    """

    def __init__(self, datasets: Sequence[DomainDataset], schedule: MixtureSchedule) -> None:
        names = [d.name for d in datasets]
        if names != list(schedule.domains):
            raise ValueError(f"BlendedDataset: datasets are domains {names} but the schedule is for "
                             f"{list(schedule.domains)}; both must list the same domains in the same order")
        for i, ds in enumerate(datasets):
            if ds.domain_id != i:
                raise ValueError(f"BlendedDataset: dataset {ds.name!r} has domain_id {ds.domain_id}, "
                                 f"expected its position {i}")
        if len({ds.seq_length for ds in datasets}) > 1:
            raise ValueError(f"BlendedDataset: domains have different seq_length "
                             f"{[ds.seq_length for ds in datasets]}; expected one --seq-length")
        self.datasets = list(datasets)
        self.schedule = schedule
        self._starts: list[int] = []
        self._domain_index: list[np.ndarray] = []
        self._sample_index: list[np.ndarray] = []
        self._cursors = np.zeros(len(datasets), dtype=np.int64)
        self._lock = threading.RLock()
        self.sync()

    def sync(self) -> int:
        """Build the indices of segments appended since the last call; returns how many were added."""
        new = self.schedule.segments[len(self._starts):]
        for seg in new:
            domain, sample = build_blending_indices(np.asarray(seg.weights), seg.num_samples, self._cursors)
            with self._lock:
                self._cursors += np.bincount(domain, minlength=len(self.datasets)).astype(np.int64)
                self._starts.append(seg.start)
                self._domain_index.append(domain)
                self._sample_index.append(sample)
        if new:
            for ds, cursor in zip(self.datasets, self._cursors.tolist()):
                ds.prepare(cursor)
        return len(new)

    def __len__(self) -> int:
        with self._lock:
            return self._starts[-1] + len(self._domain_index[-1]) if self._starts else 0

    def cursors(self) -> np.ndarray:
        """Samples drawn from each domain by all synced segments (int64[K])."""
        return self._cursors.copy()

    def _locate(self, gs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(domain, domain sample index) of every global sample in ``gs``."""
        with self._lock:
            return self._locate_unlocked(gs)

    def _locate_unlocked(self, gs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        if gs.size and (int(gs.min()) < 0 or int(gs.max()) >= n):
            bad = int(gs.min()) if int(gs.min()) < 0 else int(gs.max())
            raise IndexError(f"global sample {bad} is outside the blended dataset [0, {n}); "
                             "append a segment to the schedule and call sync() first")
        seg = np.searchsorted(np.asarray(self._starts), gs, side="right") - 1
        domains = np.empty(len(gs), dtype=np.int64)
        samples = np.empty(len(gs), dtype=np.int64)
        for s in np.unique(seg).tolist():
            rows = seg == s
            local = gs[rows] - self._starts[s]
            domains[rows] = self._domain_index[s][local]
            samples[rows] = self._sample_index[s][local]
        return domains, samples

    def locate(self, g: int) -> tuple[int, int]:
        """(domain, domain sample index) of global sample g."""
        d, k = self._locate(np.asarray([g], dtype=np.int64))
        return int(d[0]), int(k[0])

    def __getitem__(self, g: int) -> dict[str, Any]:
        d, k = self.locate(g)
        return self.datasets[d][k]

    def read_windows(self, gs: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write the ``seq_length + 1`` token windows of global samples ``gs`` into ``out`` (int64[len(gs), seq+1]).

        Reads per domain, vectorised; returns the domain of each sample (int64). ``out`` may be
        any writable int64 array, e.g. the numpy view of a pinned host tensor.
        """
        gs = np.asarray(gs, dtype=np.int64).reshape(-1)
        with self._lock:
            domains, samples = self._locate_unlocked(gs)
            for d in np.unique(domains).tolist():
                rows = np.flatnonzero(domains == d)
                self.datasets[d].read_windows(samples[rows], out, rows)
        return domains

    def get_batch(self, gs: np.ndarray) -> dict[str, np.ndarray]:
        """Global samples ``gs`` stacked in order: tokens, labels int64[B, seq] and domain_id int64[B].

        Every token's loss counts (there is no loss mask to ship).
        """
        gs = np.asarray(gs, dtype=np.int64).reshape(-1)
        windows = np.empty((len(gs), self.datasets[0].seq_length + 1), dtype=np.int64)
        domains = self.read_windows(gs, windows)
        return {"tokens": windows[:, :-1], "labels": windows[:, 1:], "domain_id": domains}

    def domain_ids(self, start: int, stop: int) -> np.ndarray:
        """Domain of each global sample in ``[start, stop)`` (int64)."""
        return self._locate(np.arange(start, stop, dtype=np.int64))[0]
