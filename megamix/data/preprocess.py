"""Tokenize jsonl documents into Megatron indexed datasets, streaming and order-preserving in parallel."""

from __future__ import annotations

import collections
import glob
import gzip
import io
import itertools
import json
import multiprocessing as mp
import os
import re
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from megamix.data.indexed import IndexedDatasetBuilder, dtype_for_vocab
from megamix.data.tokenizer import Tokenizer, TokenizerConfig

SUFFIXES = (".jsonl", ".jsonl.gz")
ERROR_KINDS = ("malformed JSON", "missing key", "non-string value", "invalid UTF-8")
_SURROGATE = re.compile("[\ud800-\udfff]")


class PreprocessError(ValueError):
    """Bad input: the message names the file and line."""


@dataclass
class PreprocessConfig:
    """What tools/preprocess_data.py does (Megatron's flags)."""

    inputs: list[str]
    """--input: jsonl(.gz) files, globs or directories."""
    output_prefix: str
    """--output-prefix: outputs are <prefix>_<key>_document.bin/.idx."""
    tokenizer: TokenizerConfig
    """--tokenizer-type / --tokenizer-model / --vocab-size."""
    json_keys: tuple[str, ...] = ("text",)
    """--json-keys: one output dataset per key."""
    append_eod: bool = False
    """--append-eod: append the tokenizer's eod id to every document."""
    workers: int = 1
    """--workers: tokenizing processes (output is identical whatever the number)."""
    log_interval: int = 10000
    """--log-interval: documents between progress lines."""
    skip_invalid: bool = False
    """--skip-invalid: skip bad lines (counted per kind) instead of stopping."""
    chunk_bytes: int = 1 << 18
    """Input bytes per unit of parallel work (part of what defines the output order: fixed)."""

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("--input: give at least one file, glob or directory")
        if not self.json_keys or len(set(self.json_keys)) != len(self.json_keys):
            raise ValueError(f"--json-keys: expected distinct key names, got {list(self.json_keys)}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.log_interval < 1:
            raise ValueError(f"--log-interval must be >= 1, got {self.log_interval}")
        if self.chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, got {self.chunk_bytes}")

    def output_prefix_for(self, key: str) -> str:
        """Dataset prefix written for one json key."""
        return f"{self.output_prefix}_{key}_document"


@dataclass
class PreprocessStats:
    """Counts of one preprocessing run."""

    documents: int = 0
    """Input documents (non-blank lines) read."""
    bytes: int = 0
    """Input bytes read (uncompressed)."""
    tokens: int = 0
    """Tokens written, over all keys."""
    written: dict[str, int] = field(default_factory=dict)
    """Documents written per key."""
    empty: dict[str, int] = field(default_factory=dict)
    """Empty documents dropped per key."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Invalid lines skipped per error kind (--skip-invalid)."""
    seconds: float = 0.0
    """Wall time so far."""

    def rates(self) -> str:
        """Throughput as 'docs/s, MB/s, tokens/s'."""
        t = max(self.seconds, 1e-9)
        return (f"{self.documents / t:.0f} docs/s, {self.bytes / t / 1e6:.2f} MB/s, "
                f"{self.tokens / t:.0f} tokens/s")


def expand_inputs(inputs: list[str]) -> list[str]:
    """The jsonl/jsonl.gz files named by files, globs or directories, sorted within each entry."""
    files: list[str] = []
    for entry in inputs:
        if os.path.isdir(entry):
            found = sorted(p for suf in SUFFIXES for p in glob.glob(os.path.join(entry, "*" + suf)))
        elif os.path.isfile(entry):
            found = [entry]
        else:
            found = sorted(p for p in glob.glob(entry) if os.path.isfile(p) and p.endswith(SUFFIXES))
        if not found:
            raise FileNotFoundError(f"--input {entry}: no .jsonl or .jsonl.gz files found")
        files.extend(f for f in found if f not in files)
    return files


def _open_lines(path: str) -> io.BufferedReader:
    if path.endswith(".gz"):
        return io.BufferedReader(gzip.open(path, "rb"), buffer_size=1 << 20)
    return open(path, "rb", buffering=1 << 20)


def read_chunks(files: list[str], chunk_bytes: int) -> Iterator[tuple[int, int, list[bytes]]]:
    """Yield (file index, first line number, lines) chunks of about chunk_bytes, never spanning files."""
    for fi, path in enumerate(files):
        with _open_lines(path) as f:
            lines: list[bytes] = []
            size, first = 0, 1
            for lineno, line in enumerate(f, 1):
                lines.append(line)
                size += len(line)
                if size >= chunk_bytes:
                    yield fi, first, lines
                    lines, size, first = [], 0, lineno + 1
            if lines:
                yield fi, first, lines


def parse_line(line: bytes, keys: tuple[str, ...]) -> tuple[list[str] | None, str, str]:
    """The texts of one jsonl line, one per key, or (None, error kind, message)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, "invalid UTF-8", str(exc)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, "malformed JSON", str(exc)
    if not isinstance(obj, dict):
        return None, "malformed JSON", f"expected a JSON object, got {type(obj).__name__}"
    out = []
    for key in keys:
        if key not in obj:
            return None, "missing key", f"no key {key!r} (keys: {sorted(obj)[:10]})"
        value = obj[key]
        if not isinstance(value, str):
            return None, "non-string value", f"key {key!r} holds {type(value).__name__}, expected a string"
        if b"\\u" in line and _SURROGATE.search(value):
            return None, "invalid UTF-8", f"key {key!r} holds an unpaired surrogate escape"
        out.append(value)
    return out, "", ""


@dataclass
class ChunkWork:
    """What every chunk needs: the tokenizer, the json keys, eod handling and the token dtype."""

    tokenizer: Tokenizer
    """Tokenizer applied to every text."""
    keys: tuple[str, ...]
    """JSON keys, one output per key."""
    append_eod: bool
    """Append tokenizer.eod to every non-empty document."""
    dtype: np.dtype
    """Token dtype of the outputs."""


_POOL_WORK: list[ChunkWork] = []  # set once in each pool worker process by _init_worker, never in the parent


def _init_worker(work: ChunkWork) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _POOL_WORK.append(work)


def _pool_process_chunk(chunk: tuple[int, int, list[bytes]]) -> dict:
    return process_chunk(chunk, _POOL_WORK[0])


def _encode(texts: list[str], work: ChunkWork) -> tuple[np.ndarray, np.ndarray, int]:
    """Tokenize texts; returns (tokens, lengths) of the non-empty documents and the number dropped."""
    ids = [d for d in work.tokenizer.encode_batch(texts) if d]
    if work.append_eod:
        for d in ids:
            d.append(work.tokenizer.eod)
    lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
    tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=work.dtype, count=int(lengths.sum()))
    return tokens, lengths, len(texts) - len(ids)


def process_chunk(chunk: tuple[int, int, list[bytes]], work: ChunkWork) -> dict:
    """Parse and tokenize one chunk of lines; errors are returned, not raised."""
    fi, first, lines = chunk
    texts: list[list[str]] = [[] for _ in work.keys]
    errors, docs = [], 0
    for lineno, line in enumerate(lines, first):
        if not line.strip():
            continue
        docs += 1
        values, kind, msg = parse_line(line, work.keys)
        if values is None:
            errors.append((kind, lineno, msg))
            continue
        for bucket, value in zip(texts, values):
            bucket.append(value)
    try:
        encoded = [_encode(t, work) for t in texts]
    except ValueError as exc:
        last = first + len(lines) - 1
        return {"file": fi, "fatal": f"{first}-{last}: tokenizer error: {exc}"}
    return {"file": fi, "docs": docs, "bytes": sum(map(len, lines)), "errors": errors, "encoded": encoded}


def _ordered_results(chunks: Iterator, work: ChunkWork, workers: int) -> Iterator[dict]:
    """process_chunk over chunks, in order, with at most a few chunks in flight (bounded memory)."""
    if workers == 1:
        yield from (process_chunk(c, work) for c in chunks)
        return
    pool = mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(work,))
    try:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_pool_process_chunk, (chunk,)))
            if len(pending) >= 4 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()


class _Run:
    """State of one preprocessing run: builders, counters and logging."""

    def __init__(self, config: PreprocessConfig, files: list[str], log: Callable[[str], None] | None) -> None:
        self.config, self.files, self.log = config, files, log
        self.stats = PreprocessStats(written={k: 0 for k in config.json_keys},
                                     empty={k: 0 for k in config.json_keys},
                                     skipped={k: 0 for k in ERROR_KINDS})
        self.start = time.perf_counter()
        self.next_log = config.log_interval

    def consume(self, result: dict, builders: list[IndexedDatasetBuilder]) -> None:
        if "fatal" in result:
            raise PreprocessError(f"{self.files[result['file']]}:{result['fatal']}")
        if result["errors"]:
            kind, lineno, msg = result["errors"][0]
            if not self.config.skip_invalid:
                raise PreprocessError(f"{self.files[result['file']]}:{lineno}: {kind}: {msg}")
            for kind, _, _ in result["errors"]:
                self.stats.skipped[kind] += 1
        for key, builder, (tokens, lengths, dropped) in zip(self.config.json_keys, builders, result["encoded"]):
            builder.add_documents(tokens, lengths)
            self.stats.written[key] += len(lengths)
            self.stats.empty[key] += dropped
            self.stats.tokens += len(tokens)
        self.stats.documents += result["docs"]
        self.stats.bytes += result["bytes"]
        self.stats.seconds = time.perf_counter() - self.start
        if self.log is not None and self.stats.documents >= self.next_log:
            self.log(f"processed {self.stats.documents} documents ({self.stats.rates()})")
            self.next_log = (self.stats.documents // self.config.log_interval + 1) * self.config.log_interval


def preprocess(config: PreprocessConfig, log: Callable[[str], None] | None = None) -> PreprocessStats:
    """Tokenize every input document into one indexed dataset per json key; nothing is left on error."""
    files = expand_inputs(config.inputs)
    tokenizer = config.tokenizer.build()
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    work = ChunkWork(tokenizer, tuple(config.json_keys), config.append_eod, dtype)
    out_dir = os.path.dirname(os.path.abspath(config.output_prefix))
    os.makedirs(out_dir, exist_ok=True)
    run = _Run(config, files, log)
    builders: list[IndexedDatasetBuilder] = []
    try:
        for key in config.json_keys:
            builders.append(IndexedDatasetBuilder(config.output_prefix_for(key), dtype))
        for result in _ordered_results(read_chunks(files, config.chunk_bytes), work, config.workers):
            run.consume(result, builders)
        for builder in builders:
            builder.finalize()
    except BaseException:
        for builder in builders:
            builder.abort()
        raise
    run.stats.seconds = time.perf_counter() - run.start
    return run.stats


def summary_line(stats: PreprocessStats, config: PreprocessConfig) -> str:
    """One-line summary of a finished run."""
    written = ", ".join(f"{k}: {n} docs -> {config.output_prefix_for(k)}" for k, n in stats.written.items())
    empty = sum(stats.empty.values())
    skipped = ", ".join(f"{k} {n}" for k, n in stats.skipped.items() if n) or "none"
    return (f"done: {stats.documents} documents, {stats.bytes / 1e6:.1f} MB, {stats.tokens} tokens in "
            f"{stats.seconds:.1f}s ({stats.rates()}); {written}; empty dropped {empty}; skipped: {skipped}")
