"""Mixture weights files: JSON {"domains": [...], "weights": [...], ...meta} or {"name": w}."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from megamix.data.schedule import normalize_weights
from megamix.fileio import atomic_write_json, read_json


def write_weights_file(path: str, domains: Sequence[str], weights: Sequence[float],
                       meta: dict | None = None) -> None:
    """Write a weights file (weights normalised to sum 1) atomically; ``meta`` adds fields."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(domains) != w.shape[0]:
        raise ValueError(f"{path}: {len(domains)} domains but {w.shape[0]} weights")
    obj = dict(meta or {})
    obj["domains"] = list(domains)
    obj["weights"] = normalize_weights(w, what=f"{path}: weights").tolist()
    atomic_write_json(path, obj)


def _load_mapping(path: str) -> dict[str, Any]:
    """The file's {domain: weight} mapping, from either accepted layout."""
    obj = read_json(path, f"weights file {path}")
    if not isinstance(obj, dict):
        raise ValueError(f"weights file {path}: expected a JSON object, got {type(obj).__name__}")
    if "domains" in obj or "weights" in obj:
        names, values = obj.get("domains"), obj.get("weights")
        if not isinstance(names, list) or not isinstance(values, list) or len(names) != len(values):
            raise ValueError(f"weights file {path}: 'domains' and 'weights' must be lists of equal length")
        if len(set(names)) != len(names):
            raise ValueError(f"weights file {path}: duplicate domain names in 'domains'")
        return dict(zip(names, values))
    return obj


def read_weights_file(path: str, domains: Sequence[str]) -> np.ndarray:
    """The weights of ``domains`` (in that order, normalised) from a weights file, matched by name."""
    mapping = _load_mapping(path)
    missing = [d for d in domains if d not in mapping]
    extra = [d for d in mapping if d not in set(domains)]
    if missing or extra:
        raise ValueError(f"weights file {path}: domains do not match the run's {list(domains)}; "
                         f"missing {missing}, unknown {extra}")
    values = []
    for d in domains:
        v = mapping[d]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"weights file {path}: weight of {d!r} must be a finite number >= 0, got {v!r}")
        values.append(float(v))
    return normalize_weights(values, what=f"weights file {path}: weights")
