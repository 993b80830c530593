"""Tiny seeded MMIDIDX datasets for tests: ``write_domain`` / ``write_domains`` return path prefixes."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from megamix.data.indexed import IndexedDatasetBuilder, dtype_for_vocab


def random_documents(num_docs: int, mean_len: int, vocab_size: int, seed: int) -> list[np.ndarray]:
    """``num_docs`` random token documents with lengths in ``[1, 2 * mean_len]`` (seeded)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 2 * mean_len + 1, size=num_docs)
    return [rng.integers(0, vocab_size, size=int(n)) for n in lengths]


def write_domain(tmp_path: str | os.PathLike, name: str, num_docs: int = 40, mean_len: int = 50,
                 vocab_size: int = 1000, seed: int = 0) -> str:
    """Write ``<tmp_path>/<name>_text_document.{bin,idx}`` of random documents; returns the prefix."""
    prefix = str(Path(tmp_path) / f"{name}_text_document")
    builder = IndexedDatasetBuilder(prefix, dtype_for_vocab(vocab_size))
    for doc in random_documents(num_docs, mean_len, vocab_size, seed + zlib.crc32(name.encode())):
        builder.add_document(doc)
    builder.finalize()
    return prefix


def write_domains(tmp_path: str | os.PathLike, names: list[str], num_docs: int = 40, mean_len: int = 50,
                  vocab_size: int = 1000, seed: int = 0) -> list[str]:
    """``write_domain`` for every name (each with its own seeded content); returns the prefixes."""
    return [write_domain(tmp_path, n, num_docs, mean_len, vocab_size, seed) for n in names]
