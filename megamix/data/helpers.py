"""Index builders for the data pipeline: the C++ fast paths and plain-numpy references.

``build_sample_idx`` packs one epoch of documents into training windows (Megatron
semantics); ``build_blending_indices`` assigns the samples of one mixture segment to
domains. The C++ versions come from ``megamix._helpers`` (compiled by ``setup.py`` at
install time, never at run time); ``build_blending_indices_reference`` is the same algorithm
in plain numpy/Python, for the tests and benchmarks (the packing reference is in tests/test_helpers.py).

Blending formula. At position i (0-based within the segment) the domain d maximising
``weights[d] * (i + 1) - count[d]`` is picked (ties to the lowest index). Megatron-LM uses
``weights[d] * max(i, 1) - count[d]``, the lag measured *before* the pick; measuring it
*after* the pick (``i + 1``) is the sequential largest-remainder rule, which keeps every
prefix of length n within one sample of ``weights[d] * n`` for every domain
(``|count[d] - weights[d] * n| < 1``); the tests check this bound. (Measured on random
weights, Megatron's ``max(i, 1)`` variant lags by up to ~1.35 samples.)
"""

from __future__ import annotations

import numpy as np

try:
    from megamix import _helpers as _ext
except ImportError as exc:  # pragma: no cover - exercised only without a build
    _ext = None
    _IMPORT_ERROR = exc
else:
    _IMPORT_ERROR = None


def _require_ext():
    """The compiled extension module, or an ImportError telling how to build it."""
    if _ext is None:
        raise ImportError("megamix._helpers (the C++ index builders in csrc/helpers.cpp) is not built: "
                          "run `make setup` (or `pip install --no-build-isolation --no-deps -e .`) "
                          f"in the repository root; original error: {_IMPORT_ERROR}")
    return _ext


def _as_int_array(values: np.ndarray, name: str, dtypes: tuple[type, ...]) -> np.ndarray:
    """A C-contiguous 1-D integer array of one of ``dtypes`` (casting other integer types to the first)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.dtype not in [np.dtype(d) for d in dtypes]:
        target = np.dtype(dtypes[0])
        if arr.size and (int(arr.min()) < np.iinfo(target).min or int(arr.max()) > np.iinfo(target).max):
            raise ValueError(f"{name} values [{int(arr.min())}, {int(arr.max())}] do not fit {target}")
        arr = arr.astype(target)
    return np.ascontiguousarray(arr)


def _check_seq_length(seq_length: int) -> int:
    if not isinstance(seq_length, (int, np.integer)) or seq_length < 1:
        raise ValueError(f"seq_length must be an integer >= 1, got {seq_length!r}")
    return int(seq_length)


def build_sample_idx(sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int,
                     add_extra_token: bool = True) -> np.ndarray:
    """Start of every packed window of one epoch: int64[num_samples + 1, 2] rows (doc_idx position, offset).

    ``sizes[d]`` is the token count of document d, ``doc_idx`` the epoch's document order.
    Sample i covers stream tokens ``[i * seq_length, (i + 1) * seq_length]`` (one extra token
    when ``add_extra_token``); row i is where it starts, row ``num_samples`` where the last
    one ends; ``num_samples = (total_tokens - extra) // seq_length``.
    """
    sizes = _as_int_array(sizes, "sizes", (np.int32,))
    doc_idx = _as_int_array(doc_idx, "doc_idx", (np.int64, np.int32))
    return _require_ext().build_sample_idx(sizes, doc_idx, _check_seq_length(seq_length), bool(add_extra_token))


def _blend_args(weights: np.ndarray, num_samples: int,
                start_counts: np.ndarray | None) -> tuple[np.ndarray, int, np.ndarray]:
    """Arguments as the C++ builder takes them; weights are trusted here (checked where they enter and in C++)."""
    w = np.ascontiguousarray(weights, dtype=np.float64)
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 0:
        raise ValueError(f"num_samples must be an integer >= 0, got {num_samples!r}")
    if start_counts is None:
        start_counts = np.zeros(len(w), dtype=np.int64)
    start = _as_int_array(start_counts, "start_counts", (np.int64,))
    if len(start) != len(w):
        raise ValueError(f"start_counts has {len(start)} entries; expected one per domain ({len(w)})")
    if start.size and int(start.min()) < 0:
        raise ValueError(f"start_counts must be >= 0, got {start.tolist()}")
    return w, int(num_samples), start


def build_blending_indices(weights: np.ndarray, num_samples: int,
                           start_counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Domain of each of ``num_samples`` positions and its domain sample index, continuing from start_counts.

    ``weights`` are a segment's proportions (summing to 1, validated where they entered: flags,
    files, a mixer's phase); the C++ builder rejects non-finite, negative or all-zero ones.
    ``domain_index`` is int16 (int32 beyond 32,767 domains);
    ``domain_sample_index`` is int64.
    """
    w, n, start = _blend_args(weights, num_samples, start_counts)
    return _require_ext().build_blending_indices(w, n, start)


def build_blending_indices_reference(weights: np.ndarray, num_samples: int,
                                     start_counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Plain-numpy ``build_blending_indices`` (one argmax per position)."""
    w, n, start = _blend_args(weights, num_samples, start_counts)
    dtype = np.int16 if len(w) <= 32767 else np.int32
    domain = np.empty(n, dtype=dtype)
    sample = np.empty(n, dtype=np.int64)
    count = np.zeros(len(w), dtype=np.int64)
    for i in range(n):
        d = int(np.argmax(w * float(i + 1) - count))
        domain[i] = d
        sample[i] = start[d] + count[d]
        count[d] += 1
    return domain, sample
