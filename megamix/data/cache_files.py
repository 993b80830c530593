"""Self-checking index caches: shapes, sizes and checksums in the description beside the arrays.

A cache is derived data, so a file that no longer matches its description (truncated by a
full disk, half-copied, edited) is rebuilt, with a warning naming it, instead of failing the
run. The collective helper lets rank 0 build while the other ranks wait, and makes an error
on rank 0 (an unwritable cache directory) an error on every rank rather than a hang.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any, Callable

import numpy as np

from megamix.fileio import file_sha256


def describe_array_files(paths: dict[str, str], arrays: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per array: its file name, shape, dtype, file size and sha256 (for the cache description)."""
    return {name: {"file": os.path.basename(paths[name]), "shape": list(arr.shape), "dtype": str(arr.dtype),
                   "bytes": os.path.getsize(paths[name]), "sha256": file_sha256(paths[name])}
            for name, arr in arrays.items()}


def cache_problem(paths: dict[str, str], names: tuple[str, ...], deep: bool) -> str | None:
    """Why the cache files in ``paths`` cannot be used (None when they can).

    Cheap checks (description readable, every file present with its recorded size) always;
    with ``deep`` also each file's sha256 and ``.npy`` header shape.
    """
    if not os.path.isfile(paths["json"]):
        return f"{paths['json']}: missing"
    try:
        with open(paths["json"]) as f:
            described = json.load(f)["arrays"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{paths['json']}: unreadable description ({type(err).__name__}: {err})"
    for name in names:
        path, want = paths[name], described.get(name, {})
        if not os.path.isfile(path):
            return f"{path}: missing"
        size = os.path.getsize(path)
        if size != want.get("bytes"):
            return f"{path}: {size} bytes, expected {want.get('bytes')}"
        if deep:
            problem = _deep_problem(path, want)
            if problem:
                return problem
    return None


def _deep_problem(path: str, want: dict) -> str | None:
    if file_sha256(path) != want.get("sha256"):
        return f"{path}: sha256 differs from the description (the file was altered)"
    try:
        shape = list(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except ValueError as err:
        return f"{path}: unreadable ({err})"
    if shape != want.get("shape"):
        return f"{path}: shape {shape}, expected {want.get('shape')}"
    return None


def warn_rebuild(problem: str) -> None:
    """Say, on stderr, which cache file is rebuilt and why."""
    print(f"warning: index cache {problem}; rebuilding it", file=sys.stderr, flush=True)


def check_writable(cache_dir: str) -> None:
    """Create ``cache_dir`` and write a probe file there; ValueError naming it when that fails."""
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise ValueError(f"--data-cache-path {cache_dir}: the index cache directory cannot be written "
                         f"({type(err).__name__}: {err.strerror or err}); give a writable --data-cache-path") from None


def _dist() -> Any | None:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def rank0_then_all(fn: Callable[[], None]) -> None:
    """Run ``fn`` on rank 0 (or alone) while the other ranks wait; an error there is raised on every rank."""
    dist = _dist()
    if dist is None:
        fn()
        return
    error = None
    if dist.get_rank() == 0:
        try:
            fn()
        except ValueError as err:
            error = str(err)
        except OSError as err:
            error = f"index cache: {type(err).__name__}: {err}"
    box = [error]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise ValueError(box[0])
