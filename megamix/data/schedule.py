"""MixtureSchedule: the append-only record of which mixture every global sample was drawn from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from megamix.fileio import atomic_write_json

SCHEDULE_VERSION = 1


@dataclass(frozen=True)
class Segment:
    """Global samples ``[start, start + num_samples)`` drawn with proportions ``weights`` (sum 1)."""

    start: int
    """First global sample of the segment."""
    num_samples: int
    """Number of global samples in the segment (> 0)."""
    weights: tuple[float, ...]
    """Per-domain sampling proportions, normalised to sum to 1."""

    @property
    def stop(self) -> int:
        """One past the last global sample of the segment."""
        return self.start + self.num_samples


def normalize_weights(weights, num_domains: int | None = None, what: str = "weights") -> np.ndarray:
    """Weights as float64 summing to 1; ValueError naming ``what`` unless finite, >= 0, positive sum, K entries.

    The one check of mixture weights, applied where they enter: --data-path, weights files,
    a mixer's Phase and a stored schedule. Code in between trusts them.
    """
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be numbers, got {weights!r}") from None
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D sequence, got shape {w.shape}")
    if num_domains is not None and w.size != num_domains:
        raise ValueError(f"{what}: got {w.size} values; expected one per domain ({num_domains})")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{what} must be finite, got {w.tolist()}")
    if np.any(w < 0):
        raise ValueError(f"{what} must be >= 0 (non-negative), got {w.tolist()}")
    total = float(w.sum())
    if not total > 0:
        raise ValueError(f"{what} must have a positive sum, got {w.tolist()}")
    return np.ascontiguousarray(w / total)


def _normalised(weights: Sequence[float]) -> tuple[float, ...]:
    """Weights divided by their sum (trusted: validated where they entered)."""
    total = float(sum(weights))
    return tuple(float(w) / total for w in weights)


class MixtureSchedule:
    """Append-only list of segments covering global samples ``[0, total_samples)`` without gaps."""

    def __init__(self, domains: Sequence[str], global_batch_size: int | None = None) -> None:
        names = [str(d) for d in domains]
        if not names:
            raise ValueError("MixtureSchedule needs at least one domain")
        if len(set(names)) != len(names):
            raise ValueError(f"MixtureSchedule: duplicate domain names in {names}")
        if global_batch_size is not None and (not isinstance(global_batch_size, int) or global_batch_size < 1):
            raise ValueError(f"global_batch_size must be an integer >= 1, got {global_batch_size!r}")
        self._domains = tuple(names)
        self._global_batch_size = global_batch_size
        self._segments: list[Segment] = []

    @property
    def domains(self) -> tuple[str, ...]:
        """Domain names, in weight order."""
        return self._domains

    @property
    def global_batch_size(self) -> int | None:
        """Every segment is a multiple of this many samples (None: no constraint)."""
        return self._global_batch_size

    @property
    def segments(self) -> tuple[Segment, ...]:
        """All segments, in order."""
        return tuple(self._segments)

    @property
    def total_samples(self) -> int:
        """Global samples covered by all segments."""
        return self._segments[-1].stop if self._segments else 0

    def __len__(self) -> int:
        return len(self._segments)

    def append(self, num_samples: int, weights: Sequence[float]) -> Segment:
        """Add a segment of ``num_samples`` global samples at ``weights`` (trusted valid, one per domain; normalised)."""
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"segment num_samples must be an integer >= 1, got {num_samples!r}")
        gbs = self._global_batch_size
        if gbs is not None and num_samples % gbs:
            raise ValueError(f"segment of {num_samples} samples is not a whole number of global batches "
                             f"(--global-batch-size {gbs})")
        segment = Segment(self.total_samples, num_samples, _normalised(weights))
        self._segments.append(segment)
        return segment

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (floats round-trip exactly)."""
        return {
            "version": SCHEDULE_VERSION,
            "domains": list(self._domains),
            "global_batch_size": self._global_batch_size,
            "segments": [{"start": s.start, "num_samples": s.num_samples, "weights": list(s.weights)}
                         for s in self._segments],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MixtureSchedule":
        """Rebuild a schedule written by ``to_dict``; ValueError on an inconsistent record."""
        if data.get("version") != SCHEDULE_VERSION:
            raise ValueError(f"mixture schedule: unsupported version {data.get('version')!r}, "
                             f"expected {SCHEDULE_VERSION}")
        schedule = cls(data["domains"], data.get("global_batch_size"))
        for i, seg in enumerate(data["segments"]):
            if seg["start"] != schedule.total_samples:
                raise ValueError(f"mixture schedule: segment {i} starts at {seg['start']}, "
                                 f"expected {schedule.total_samples} (segments must be contiguous)")
            schedule._restore(int(seg["num_samples"]), seg["weights"])
        return schedule

    def _restore(self, num_samples: int, weights: Sequence[float]) -> None:
        """Append a recorded segment keeping its stored (already normalised) weights bit for bit."""
        start = self.total_samples
        normalize_weights(weights, len(self._domains), f"mixture schedule: segment at {start}: weights")
        stored = tuple(float(w) for w in weights)
        if abs(sum(stored) - 1.0) > 1e-9:
            raise ValueError(f"mixture schedule: segment at {start} has weights summing to {sum(stored)}, expected 1")
        self.append(num_samples, stored)  # validates count and batch multiple
        self._segments[-1] = Segment(start, num_samples, stored)

    def save(self, path: str) -> None:
        """Write the schedule as JSON atomically (temporary file, then rename)."""
        atomic_write_json(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str) -> "MixtureSchedule":
        """Read a schedule written by ``save``."""
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a valid mixture schedule JSON file: {exc}") from None
        return cls.from_dict(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MixtureSchedule) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"MixtureSchedule(domains={list(self._domains)}, segments={len(self._segments)}, "
                f"total_samples={self.total_samples})")
