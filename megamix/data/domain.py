"""DomainDataset: one domain's endless, seeded stream of packed training windows for one split.

Documents are assigned to train/valid/test by a seeded permutation of the document ids.
Epoch e of a split visits its documents in a seeded order, packs them into windows of
``seq_length + 1`` tokens (Megatron semantics, C++ ``build_sample_idx``) and shuffles the
windows; domain sample k lives in epoch ``k // samples_per_epoch``. Each epoch's index
arrays are cached on disk under a hash of every input that changes them and memory-mapped.

Multi-process use: the constructor and ``prepare`` are collective when a
``torch.distributed`` process group is initialised (rank 0 builds, barrier, all ranks
memory-map). An epoch first touched outside them (``ds[k]`` far ahead) is built by the
touching process itself: the arrays are deterministic and written atomically under unique
temporary names, so concurrent builders produce identical files and never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from typing import Any

import numpy as np

from megamix.data.cache_files import (cache_problem, check_writable, describe_array_files, rank0_then_all,
                                      warn_rebuild)
from megamix.data.config import SPLITS, DataConfig
from megamix.data.helpers import build_sample_idx
from megamix.data.indexed import IndexedDataset, bin_path, idx_path
from megamix.fileio import atomic_open, atomic_write_text

CACHE_FORMAT_VERSION = 2  # 2: the description records each array's shape, size and sha256
_ARRAYS = ("doc_idx", "sample_idx", "shuffle_idx")
_LRU_EPOCHS = 4


def seeded_rng(*parts: object) -> np.random.Generator:
    """A numpy Generator seeded from a hash of ``parts`` (stable across processes and runs)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return np.random.default_rng([int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)])


def split_document_counts(num_docs: int, split_weights: tuple[float, float, float]) -> list[int]:
    """Documents per split: Megatron-style rounding, at least one for a weighted valid/test (>= 3 docs)."""
    total = float(sum(split_weights))
    counts = [int(round(w / total * num_docs)) for w in split_weights]
    counts[0] += num_docs - sum(counts)
    for i in (1, 2):
        if split_weights[i] > 0 and counts[i] == 0 and num_docs >= 3:
            counts[i] = 1
            counts[0] -= 1
    if counts[0] < 0:  # rounding gave valid/test more than all documents
        counts[max((1, 2), key=lambda i: counts[i])] += counts[0]
        counts[0] = 0
    return counts


def split_documents(num_docs: int, split_weights: tuple[float, float, float], seed: int,
                    name: str) -> dict[str, np.ndarray]:
    """Sorted document ids of each split, from a permutation seeded by (seed, domain name)."""
    perm = seeded_rng("split", seed, name).permutation(num_docs).astype(np.int64)
    counts = split_document_counts(num_docs, split_weights)
    bounds = np.cumsum([0] + counts)
    return {s: np.sort(perm[bounds[i]:bounds[i + 1]]) for i, s in enumerate(SPLITS)}


def _file_fingerprint(path: str) -> dict[str, int]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class DomainDataset:
    """Endless stream of ``seq_length``-token samples of one domain's split; ``ds[k]`` for every k >= 0."""

    def __init__(self, prefix: str, name: str, domain_id: int, split: str, seq_length: int,
                 split_weights: tuple[float, float, float], seed: int, cache_dir: str,
                 split_seed: int | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not isinstance(seq_length, (int, np.integer)) or seq_length < 1:
            raise ValueError(f"--seq-length must be >= 1, got {seq_length!r}")
        self.prefix, self.name, self.domain_id = str(prefix), str(name), int(domain_id)
        self.split, self.seq_length, self.seed = split, int(seq_length), int(seed)
        self.split_seed = self.seed if split_seed is None else int(split_seed)
        self.split_weights = tuple(float(w) for w in split_weights)
        self.cache_dir = str(cache_dir)
        self._open()
        self._check_size()
        self._prepared = 0
        self.prepare(1)

    # ------------------------------------------------------------------ setup
    def _open(self) -> None:
        self._indexed = IndexedDataset(self.prefix)
        self._sizes = np.ascontiguousarray(self._indexed.sequence_lengths, dtype=np.int32)
        self._starts = self._indexed.sequence_pointers // self._indexed.dtype.itemsize
        self._tokens = np.memmap(bin_path(self.prefix), dtype=self._indexed.dtype, mode="r").view(np.ndarray) \
            if self._indexed.num_tokens else np.zeros(0, dtype=self._indexed.dtype)
        idx = split_documents(len(self._sizes), self.split_weights, self.split_seed, self.name)
        self.documents = idx[self.split]
        self.num_tokens = int(self._sizes[self.documents].sum(dtype=np.int64))
        self.samples_per_epoch = max(0, (self.num_tokens - 1) // self.seq_length)
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()

    def _check_size(self) -> None:
        weight = self.split_weights[SPLITS.index(self.split)]
        if weight <= 0:
            raise ValueError(f"domain {self.name!r} ({self.prefix}): split {self.split!r} has weight 0 in --split "
                             f"{','.join(f'{w:g}' for w in self.split_weights)}")
        if self.samples_per_epoch < 1:
            raise ValueError(
                f"domain {self.name!r} ({self.prefix}): the {self.split} split has {self.num_tokens} tokens in "
                f"{len(self.documents)} of {len(self._sizes)} documents; one sample needs seq_length + 1 = "
                f"{self.seq_length + 1} tokens (lower --seq-length, change --split, or add data)")

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __repr__(self) -> str:
        return (f"DomainDataset({self.name!r}, split={self.split!r}, documents={len(self.documents)}, "
                f"tokens={self.num_tokens}, samples_per_epoch={self.samples_per_epoch})")

    # ------------------------------------------------------------------ cache
    def cache_key(self, epoch: int) -> dict[str, Any]:
        """Every input that changes epoch ``epoch``'s index arrays (``split_seed`` only when it is not ``seed``)."""
        key = {
            "format_version": CACHE_FORMAT_VERSION,
            "prefix": os.path.abspath(self.prefix),
            "idx": _file_fingerprint(idx_path(self.prefix)),
            "bin": _file_fingerprint(bin_path(self.prefix)),
            "name": self.name,
            "split": self.split,
            "split_weights": list(self.split_weights),
            "seq_length": self.seq_length,
            "seed": self.seed,
            "epoch": int(epoch),
            "add_extra_token": True,
        }
        if self.split_seed != self.seed:
            key["split_seed"] = self.split_seed
        return key

    def cache_hash(self, epoch: int) -> str:
        """16 hex digits of sha256 over ``cache_key(epoch)``; names the cache files."""
        blob = json.dumps(self.cache_key(epoch), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def cache_paths(self, epoch: int) -> dict[str, str]:
        """Paths of the cached arrays (``doc_idx``, ``sample_idx``, ``shuffle_idx``) and description (``json``)."""
        h = os.path.join(self.cache_dir, self.cache_hash(epoch))
        paths = {a: f"{h}-{a}.npy" for a in _ARRAYS}
        paths["json"] = f"{h}.json"
        return paths

    def is_cached(self, epoch: int) -> bool:
        """True when every file of epoch ``epoch`` is on disk with the size its description records."""
        return cache_problem(self.cache_paths(epoch), _ARRAYS, deep=False) is None

    def _ensure_epoch(self, epoch: int) -> None:
        """Build epoch ``epoch``'s cache unless it is there and matches its description (checksums included)."""
        paths = self.cache_paths(epoch)
        problem = cache_problem(paths, _ARRAYS, deep=True)
        if problem is None:
            return
        if any(os.path.exists(p) for p in paths.values()):
            warn_rebuild(problem)
        self._write_epoch(epoch)

    def build_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Compute (doc_idx, sample_idx, shuffle_idx) of one epoch in memory, without the cache."""
        doc_idx = seeded_rng("docs", self.seed, self.name, self.split, epoch).permutation(self.documents)
        sample_idx = build_sample_idx(self._sizes, doc_idx, self.seq_length)
        n = len(sample_idx) - 1
        if n != self.samples_per_epoch:  # pragma: no cover - guards the packing invariant
            raise RuntimeError(f"domain {self.name!r}: epoch {epoch} packed {n} samples, expected "
                               f"{self.samples_per_epoch}")
        shuffle = seeded_rng("samples", self.seed, self.name, self.split, epoch).permutation(n).astype(np.int64)
        return doc_idx.astype(np.int64), sample_idx, shuffle

    def _write_epoch(self, epoch: int) -> None:
        os.makedirs(self.cache_dir, exist_ok=True)
        arrays = dict(zip(_ARRAYS, self.build_epoch(epoch)))
        paths = self.cache_paths(epoch)
        for a in _ARRAYS:
            with atomic_open(paths[a], "wb") as f:
                np.save(f, arrays[a], allow_pickle=False)
        desc = dict(self.cache_key(epoch), documents=len(self.documents), num_tokens=self.num_tokens,
                    samples_per_epoch=self.samples_per_epoch, files={a: os.path.basename(paths[a]) for a in _ARRAYS},
                    arrays=describe_array_files(paths, arrays))
        atomic_write_text(paths["json"], json.dumps(desc, indent=1, sort_keys=True))

    def prepare(self, num_samples: int) -> None:
        """Make sure the epochs holding samples ``[0, num_samples)`` are cached; collective under a process group."""
        last = max(0, (int(num_samples) - 1) // self.samples_per_epoch)
        if self._prepared == 0:
            rank0_then_all(lambda: check_writable(self.cache_dir))
        for epoch in range(self._prepared, last + 1):
            rank0_then_all(lambda: self._ensure_epoch(epoch))
        self._prepared = max(self._prepared, last + 1)

    def epoch_arrays(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Memory-mapped (doc_idx, sample_idx, shuffle_idx) of an epoch (built and cached on first touch)."""
        if epoch in self._epochs:
            self._epochs.move_to_end(epoch)
            return self._epochs[epoch]
        if not self.is_cached(epoch):
            self._write_epoch(epoch)
        paths = self.cache_paths(epoch)
        arrays = tuple(np.load(paths[a], mmap_mode="r", allow_pickle=False).view(np.ndarray) for a in _ARRAYS)
        self._epochs[epoch] = arrays  # type: ignore[assignment]
        if len(self._epochs) > _LRU_EPOCHS:
            self._epochs.popitem(last=False)
        return arrays  # type: ignore[return-value]

    # ------------------------------------------------------------------ reading
    def _check_k(self, ks: np.ndarray) -> None:
        if ks.size and int(ks.min()) < 0:
            raise IndexError(f"domain {self.name!r}: sample index {int(ks.min())} is negative; expected k >= 0")

    def _window(self, doc_idx: np.ndarray, sample_idx: np.ndarray, j: int) -> np.ndarray:
        """The ``seq_length + 1`` tokens of packed window j of an epoch."""
        p0, o0 = int(sample_idx[j, 0]), int(sample_idx[j, 1])
        p1, o1 = int(sample_idx[j + 1, 0]), int(sample_idx[j + 1, 1])
        if p0 == p1:
            s = int(self._starts[doc_idx[p0]])
            return self._tokens[s + o0:s + o1 + 1]
        pieces = [self._doc_tokens(int(doc_idx[p0]))[o0:]]
        pieces += [self._doc_tokens(int(doc_idx[p])) for p in range(p0 + 1, p1)]
        pieces.append(self._doc_tokens(int(doc_idx[p1]))[:o1 + 1])
        return np.concatenate(pieces)

    def _doc_tokens(self, doc: int) -> np.ndarray:
        s = int(self._starts[doc])
        return self._tokens[s:s + int(self._sizes[doc])]

    def _fill_windows(self, out: np.ndarray, rows: np.ndarray, epoch: tuple[np.ndarray, np.ndarray],
                      js: np.ndarray) -> None:
        """Write windows ``js`` of one epoch into ``out[rows]``: one gather for single-, one for multi-document ones."""
        doc_idx, sample_idx = epoch
        first, last = sample_idx[js], sample_idx[js + 1]
        single = first[:, 0] == last[:, 0]
        if single.any():
            begin = self._starts[doc_idx[first[single, 0]]] + first[single, 1]
            out[rows[single]] = self._tokens[begin[:, None] + np.arange(self.seq_length + 1)]
        if not single.all():
            index = self._multi_document_index(doc_idx, first[~single], last[~single])
            out[rows[~single]] = self._tokens[index].reshape(-1, self.seq_length + 1)

    def _multi_document_index(self, doc_idx: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Token-file positions of windows spanning documents ``first[:, 0] .. last[:, 0]`` of the epoch, concatenated.

        Each window is cut into its document pieces (the first from offset ``first[:, 1]``, the
        last up to ``last[:, 1]`` inclusive); the pieces' positions are built by one
        repeat + arange over all windows, without a loop per sample.
        """
        parts = last[:, 0] - first[:, 0] + 1
        ends = np.cumsum(parts)
        starts_of = ends - parts  # index of each window's first piece
        piece = np.arange(ends[-1]) - np.repeat(starts_of, parts) + np.repeat(first[:, 0], parts)
        docs = doc_idx[piece]
        begin = self._starts[docs].astype(np.int64)
        length = self._sizes[docs].astype(np.int64)
        begin[starts_of] += first[:, 1]
        length[starts_of] -= first[:, 1]
        length[ends - 1] = last[:, 1] + 1
        offset = np.cumsum(length) - length  # where each piece starts in the concatenation
        return np.repeat(begin - offset, length) + np.arange(int(length.sum()))

    def window(self, k: int) -> np.ndarray:
        """The raw ``seq_length + 1`` token window of domain sample k (native token dtype)."""
        self._check_k(np.asarray([k]))
        epoch, local = divmod(int(k), self.samples_per_epoch)
        doc_idx, sample_idx, shuffle = self.epoch_arrays(epoch)
        return self._window(doc_idx, sample_idx, int(shuffle[local]))

    def __getitem__(self, k: int) -> dict[str, Any]:
        tokens = self.window(k).astype(np.int64)
        return {"tokens": tokens[:-1], "labels": tokens[1:],
                "loss_mask": np.ones(self.seq_length, dtype=np.float32), "domain_id": self.domain_id}

    def read_windows(self, ks: np.ndarray, out: np.ndarray, rows: np.ndarray) -> None:
        """Write the ``seq_length + 1`` token windows of domain samples ``ks`` into ``out[rows]``."""
        self._check_k(ks)
        epochs, local = np.divmod(ks, self.samples_per_epoch)
        first, last = int(epochs.min()), int(epochs.max())
        for epoch in range(first, last + 1) if last - first < 8 else np.unique(epochs).tolist():
            doc_idx, sample_idx, shuffle = self.epoch_arrays(epoch)
            sel = slice(None) if first == last else epochs == epoch
            self._fill_windows(out, rows[sel], (doc_idx, sample_idx), shuffle[local[sel]])

    def get_batch(self, ks: np.ndarray) -> dict[str, np.ndarray]:
        """Samples ``ks`` stacked: tokens/labels int64[B, seq], domain_id int64[B] (every token counts: no mask)."""
        ks = np.asarray(ks, dtype=np.int64).reshape(-1)
        windows = np.empty((len(ks), self.seq_length + 1), dtype=np.int64)
        if len(ks):
            self.read_windows(ks, windows, np.arange(len(ks)))
        return {"tokens": windows[:, :-1], "labels": windows[:, 1:],
                "domain_id": np.full(len(ks), self.domain_id, dtype=np.int64)}

    # ------------------------------------------------------------------ pickling (DataLoader workers)
    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        state["_prepared"] = self._prepared
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()


def build_domain_datasets(cfg: DataConfig, split: str) -> list[DomainDataset]:
    """One DomainDataset per --data-path domain for ``split`` (empty when the split's weight is 0)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if cfg.split[SPLITS.index(split)] <= 0:
        return []
    return [DomainDataset(spec.prefix, spec.name, i, split, cfg.seq_length, cfg.split, cfg.seed, cfg.cache_dir,
                          split_seed=cfg.split_seed) for i, spec in enumerate(cfg.data_path)]
