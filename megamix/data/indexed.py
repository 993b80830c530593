"""Megatron-LM ``MMIDIDX`` (version 1) indexed datasets: a memory-mapped reader and a streaming writer.

Format (all little-endian). ``<prefix>.bin`` holds the raw token ids back to back.
``<prefix>.idx`` holds::

    magic        9 bytes   b"MMIDIDX\\x00\\x00"
    version      uint64    1
    dtype code   uint8     1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16
    sequences    uint64    N
    doc indices  uint64    D  (= number of documents + 1)
    lengths      int32[N]  tokens per sequence
    pointers     int64[N]  byte offset of each sequence in the .bin
    doc indices  int64[D]  0, ..., N: sequence index at which each document starts, then N
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Iterable

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
_HEADER = struct.Struct("<9sQBQQ")
HEADER_SIZE = _HEADER.size  # 34 bytes

DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float64),
    7: np.dtype(np.float32),
    8: np.dtype(np.uint16),
}
_CODE_OF_DTYPE = {dt: code for code, dt in DTYPE_CODES.items()}


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """Token dtype Megatron uses for a vocabulary: uint16 below 65,500 entries, int32 otherwise."""
    if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def idx_path(prefix: str) -> str:
    """Path of the index file of a dataset prefix."""
    return prefix + ".idx"


def bin_path(prefix: str) -> str:
    """Path of the token file of a dataset prefix."""
    return prefix + ".bin"


def dtype_code(dtype: np.dtype | type) -> int:
    """The MMIDIDX code of a numpy dtype; ValueError for a dtype the format cannot store."""
    dt = np.dtype(dtype).newbyteorder("=")
    if dt not in _CODE_OF_DTYPE:
        raise ValueError(f"dtype {dt} cannot be stored in an MMIDIDX file; "
                         f"expected one of {sorted(str(d) for d in _CODE_OF_DTYPE)}")
    return _CODE_OF_DTYPE[dt]


def _map_file(path: str) -> mmap.mmap | bytes:
    """Read-only memory map of a whole file (an empty bytes object for an empty file)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


class IndexedDataset:
    """A read-only, memory-mapped Megatron MMIDIDX dataset; item i is the token array of sequence i."""

    def __init__(self, path_prefix: str) -> None:
        self._prefix = str(path_prefix)
        self._open()

    # ---------------------------------------------------------------- opening
    def _open(self) -> None:
        idx, binf = idx_path(self._prefix), bin_path(self._prefix)
        for path in (idx, binf):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: indexed dataset file not found (prefix {self._prefix!r})")
        self._idx_map = _map_file(idx)
        n, d = self._read_header(idx)
        self._read_arrays(idx, n, d)
        self._check_documents(idx)
        self._check_pointers(idx)
        self._bin_map = _map_file(binf)
        self._check_bin(binf)
        self._tokens = np.frombuffer(self._bin_map, dtype=self._dtype)

    def _read_header(self, idx: str) -> tuple[int, int]:
        size = len(self._idx_map)
        if size < HEADER_SIZE:
            if size < len(MAGIC) or bytes(self._idx_map[: len(MAGIC)]) != MAGIC:
                found = bytes(self._idx_map[: len(MAGIC)])
                raise ValueError(f"{idx}: bad magic: expected {MAGIC!r}, found {found!r} (not an MMIDIDX index)")
            raise ValueError(f"{idx}: truncated index: header needs {HEADER_SIZE} bytes, file has {size}")
        magic, version, code, n, d = _HEADER.unpack_from(self._idx_map, 0)
        if magic != MAGIC:
            raise ValueError(f"{idx}: bad magic: expected {MAGIC!r}, found {magic!r} (not an MMIDIDX index)")
        if version != VERSION:
            raise ValueError(f"{idx}: unsupported version: expected {VERSION}, found {version}")
        if code not in DTYPE_CODES:
            raise ValueError(f"{idx}: unknown dtype code: expected one of {sorted(DTYPE_CODES)}, found {code}")
        self._dtype = DTYPE_CODES[code]
        expected = HEADER_SIZE + 12 * n + 8 * d
        if size != expected:
            what = "truncated index" if size < expected else "index has trailing bytes"
            raise ValueError(f"{idx}: {what}: header says {n} sequences and {d} document indices, "
                             f"so expected {expected} bytes, file has {size}")
        return n, d

    def _read_arrays(self, idx: str, n: int, d: int) -> None:
        buf = self._idx_map
        self._lengths = np.frombuffer(buf, dtype="<i4", count=n, offset=HEADER_SIZE)
        self._pointers = np.frombuffer(buf, dtype="<i8", count=n, offset=HEADER_SIZE + 4 * n)
        self._doc_idx = np.frombuffer(buf, dtype="<i8", count=d, offset=HEADER_SIZE + 12 * n)
        if n and int(self._lengths.min()) < 0:
            bad = int(np.argmax(self._lengths < 0))
            raise ValueError(f"{idx}: sequence_lengths[{bad}] is {int(self._lengths[bad])}; expected >= 0")

    def _check_documents(self, idx: str) -> None:
        doc, n = self._doc_idx, len(self._lengths)
        if len(doc) == 0:
            raise ValueError(f"{idx}: document_indices is empty; expected at least [0] (start 0, end {n})")
        if doc[0] != 0:
            raise ValueError(f"{idx}: document_indices[0] must be 0, found {int(doc[0])}")
        if len(doc) > 1 and np.any(np.diff(doc) < 0):
            bad = int(np.argmax(np.diff(doc) < 0)) + 1
            raise ValueError(f"{idx}: document_indices not non-decreasing: document_indices[{bad}] = "
                             f"{int(doc[bad])} < document_indices[{bad - 1}] = {int(doc[bad - 1])}")
        if doc[-1] != n:
            raise ValueError(f"{idx}: document_indices must end at the sequence count {n}, "
                             f"found {int(doc[-1])}")

    def _check_pointers(self, idx: str) -> None:
        n = len(self._lengths)
        if n == 0:
            return
        expected = np.zeros(n, dtype=np.int64)
        np.cumsum(self._lengths[:-1], dtype=np.int64, out=expected[1:])
        expected *= self._dtype.itemsize
        if not np.array_equal(expected, self._pointers):
            bad = int(np.argmax(expected != self._pointers))
            raise ValueError(f"{idx}: sequence_pointers inconsistent with sequence_lengths: "
                             f"sequence_pointers[{bad}] expected {int(expected[bad])}, "
                             f"found {int(self._pointers[bad])}")

    def _check_bin(self, binf: str) -> None:
        expected = int(self._lengths.sum(dtype=np.int64)) * self._dtype.itemsize
        found = len(self._bin_map)
        if found != expected:
            raise ValueError(f"{binf}: size mismatch: sum(sequence_lengths) * itemsize = {expected} bytes "
                             f"expected, file has {found} bytes")

    # ---------------------------------------------------------------- pickling (DataLoader workers)
    def __getstate__(self) -> str:
        return self._prefix

    def __setstate__(self, state: str) -> None:
        self._prefix = state
        self._open()

    # ---------------------------------------------------------------- access
    @staticmethod
    def exists(path_prefix: str) -> bool:
        """True when both ``<prefix>.idx`` and ``<prefix>.bin`` exist."""
        return os.path.isfile(idx_path(path_prefix)) and os.path.isfile(bin_path(path_prefix))

    @property
    def path_prefix(self) -> str:
        """The prefix this dataset was opened from."""
        return self._prefix

    @property
    def sequence_lengths(self) -> np.ndarray:
        """Tokens per sequence (int32, read-only view of the index)."""
        return self._lengths

    @property
    def sequence_pointers(self) -> np.ndarray:
        """Byte offset of each sequence in the .bin (int64, read-only view)."""
        return self._pointers

    @property
    def document_indices(self) -> np.ndarray:
        """Sequence index where each document starts, followed by the sequence count (int64)."""
        return self._doc_idx

    @property
    def dtype(self) -> np.dtype:
        """Token dtype of the .bin."""
        return self._dtype

    @property
    def num_tokens(self) -> int:
        """Total number of tokens in the dataset."""
        return len(self._tokens)

    @property
    def num_documents(self) -> int:
        """Number of documents (``len(document_indices) - 1``)."""
        return len(self._doc_idx) - 1

    def __len__(self) -> int:
        return len(self._lengths)

    def _index(self, i: int) -> int:
        n = len(self._lengths)
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"sequence index {i} out of range for {n} sequences in {self._prefix}")
        return j

    def __getitem__(self, i: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        j = self._index(i)
        start = int(self._pointers[j]) // self._dtype.itemsize
        return self._tokens[start:start + int(self._lengths[j])]

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``[offset, offset + length)`` of sequence i (to its end when length is None); a view."""
        seq = self[i]
        if not 0 <= offset <= len(seq):
            raise IndexError(f"offset {offset} outside sequence {i} of length {len(seq)}")
        end = len(seq) if length is None else offset + length
        if length is not None and (length < 0 or end > len(seq)):
            raise IndexError(f"length {length} at offset {offset} runs past sequence {i} of length {len(seq)}")
        return seq[offset:end]

    def __repr__(self) -> str:
        return (f"IndexedDataset({self._prefix!r}, sequences={len(self)}, documents={self.num_documents}, "
                f"tokens={self.num_tokens}, dtype={self._dtype})")


class _GrowableArray:
    """An append-only numpy array with amortised doubling."""

    def __init__(self, dtype: type, capacity: int = 1024) -> None:
        self._data = np.empty(capacity, dtype=dtype)
        self._size = 0

    def _reserve(self, extra: int) -> None:
        need = self._size + extra
        if need > len(self._data):
            new = np.empty(max(need, 2 * len(self._data)), dtype=self._data.dtype)
            new[: self._size] = self._data[: self._size]
            self._data = new

    def append(self, value: int) -> None:
        self._reserve(1)
        self._data[self._size] = value
        self._size += 1

    def extend(self, values: np.ndarray) -> None:
        self._reserve(len(values))
        self._data[self._size:self._size + len(values)] = values
        self._size += len(values)

    def __len__(self) -> int:
        return self._size

    def view(self) -> np.ndarray:
        return self._data[: self._size]


class IndexedDatasetBuilder:
    """Streams documents into a new MMIDIDX dataset under temporary names; ``finalize()`` publishes it."""

    def __init__(self, path_prefix: str, dtype: np.dtype | type = np.int32) -> None:
        self._prefix = str(path_prefix)
        self._dtype = np.dtype(dtype).newbyteorder("<")
        self._code = dtype_code(self._dtype)
        suffix = f".tmp-{os.getpid()}"
        self._tmp_bin = bin_path(self._prefix) + suffix
        self._tmp_idx = idx_path(self._prefix) + suffix
        self._bin = open(self._tmp_bin, "wb")
        self._lengths = _GrowableArray(np.int32)
        self._doc_idx = _GrowableArray(np.int64)
        self._doc_idx.append(0)
        self._done = False

    @property
    def dtype(self) -> np.dtype:
        """Token dtype being written."""
        return self._dtype

    def _as_tokens(self, tokens: Iterable[int] | np.ndarray) -> np.ndarray:
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"tokens must be one-dimensional, got shape {arr.shape}")
        if arr.dtype != self._dtype and arr.size and self._dtype.kind in "iu":
            if arr.dtype.kind not in "iu":
                raise ValueError(f"tokens must be integers for dtype {self._dtype}, got {arr.dtype}")
            info = np.iinfo(self._dtype)
            lo, hi = int(arr.min()), int(arr.max())
            if lo < info.min or hi > info.max:
                raise ValueError(f"token ids [{lo}, {hi}] do not fit dtype {self._dtype} "
                                 f"(range [{info.min}, {info.max}])")
        return arr.astype(self._dtype, copy=False)

    def _check_open(self) -> None:
        if self._done:
            raise RuntimeError(f"builder for {self._prefix!r} is already finalized or aborted")

    def _check_no_open_document(self, what: str) -> None:
        if self._doc_idx.view()[-1] != len(self._lengths):
            raise RuntimeError(f"{what}: call end_document() first; items added with add_item are still open")

    def add_item(self, tokens: Iterable[int] | np.ndarray) -> None:
        """Append one sequence (Megatron's two-call form; close the document with ``end_document``)."""
        self._check_open()
        arr = self._as_tokens(tokens)
        if len(arr) > np.iinfo(np.int32).max:
            raise ValueError(f"sequence of {len(arr)} tokens exceeds the int32 length field")
        self._bin.write(arr.tobytes(order="C"))
        self._lengths.append(len(arr))

    def end_document(self) -> None:
        """Mark the end of the current document at the current sequence count."""
        self._check_open()
        self._doc_idx.append(len(self._lengths))

    def add_document(self, tokens: Iterable[int] | np.ndarray) -> None:
        """Append one document made of a single sequence."""
        self.add_item(tokens)
        self.end_document()

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append many single-sequence documents at once: ``tokens`` concatenated, ``lengths`` each."""
        self._check_open()
        self._check_no_open_document("add_documents")
        lengths = np.asarray(lengths)
        arr = self._as_tokens(tokens)
        if lengths.ndim != 1 or (len(lengths) and int(lengths.min()) < 0) or int(lengths.sum()) != len(arr):
            raise ValueError(f"lengths must be non-negative and sum to the {len(arr)} tokens given")
        self._bin.write(arr.tobytes(order="C"))
        base = len(self._lengths)
        self._lengths.extend(lengths)
        self._doc_idx.extend(np.arange(base + 1, base + len(lengths) + 1, dtype=np.int64))

    def add_index(self, other_prefix: str) -> None:
        """Append every sequence and document of an existing dataset (same dtype required)."""
        self._check_open()
        self._check_no_open_document("add_index")
        other = IndexedDataset(other_prefix)
        if other.dtype != self._dtype:
            raise ValueError(f"{idx_path(other_prefix)}: dtype {other.dtype} differs from the builder's "
                             f"dtype {self._dtype}; merging needs the same dtype")
        base = len(self._lengths)
        self._lengths.extend(other.sequence_lengths)
        self._doc_idx.extend(other.document_indices[1:] + base)
        tokens = other._tokens
        step = max(1, (64 << 20) // self._dtype.itemsize)
        for start in range(0, len(tokens), step):
            self._bin.write(tokens[start:start + step].tobytes())

    def _write_idx(self) -> None:
        lengths = self._lengths.view()
        pointers = np.zeros(len(lengths), dtype="<i8")
        if len(lengths):
            np.cumsum(lengths[:-1], dtype=np.int64, out=pointers[1:])
            pointers *= self._dtype.itemsize
        doc = self._doc_idx.view()
        with open(self._tmp_idx, "wb") as f:
            f.write(_HEADER.pack(MAGIC, VERSION, self._code, len(lengths), len(doc)))
            f.write(lengths.astype("<i4", copy=False).tobytes())
            f.write(pointers.tobytes())
            f.write(doc.astype("<i8", copy=False).tobytes())
            f.flush()
            os.fsync(f.fileno())

    def finalize(self) -> None:
        """Close the current document if open, write the index and rename both files into place."""
        self._check_open()
        if self._doc_idx.view()[-1] != len(self._lengths):
            self.end_document()
        published_idx = False
        try:
            self._bin.flush()
            os.fsync(self._bin.fileno())
            self._bin.close()
            self._write_idx()
            # Remove any old pair first so an old file can never pair with a new one, then
            # publish the .idx and the .bin last: until the .bin lands, the prefix is incomplete.
            for path in (bin_path(self._prefix), idx_path(self._prefix)):
                if os.path.lexists(path):
                    os.unlink(path)
            os.replace(self._tmp_idx, idx_path(self._prefix))
            published_idx = True
            os.replace(self._tmp_bin, bin_path(self._prefix))
        except BaseException:
            self.abort()
            if published_idx and os.path.lexists(idx_path(self._prefix)):
                os.unlink(idx_path(self._prefix))
            raise
        self._done = True

    def abort(self) -> None:
        """Discard everything written: close and remove the temporary files."""
        self._done = True
        if not self._bin.closed:
            self._bin.close()
        for path in (self._tmp_bin, self._tmp_idx):
            if os.path.lexists(path):
                os.unlink(path)

    def __enter__(self) -> "IndexedDatasetBuilder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.finalize()
