"""Binary dictionary and scripture formats: dictd ``.index``/``.dict.dz`` and SWORD zText."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Iterator

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}


class FormatError(ValueError):
    """Raised when a binary file does not have the expected layout; names the file."""


def dictd_number(code: str) -> int:
    """Decode a dictd base-64 number (most significant digit first)."""
    value = 0
    for ch in code:
        if ch not in _B64_VALUE:
            raise ValueError(f"bad dictd base64 digit {ch!r} in {code!r}")
        value = value * 64 + _B64_VALUE[ch]
    return value


def read_dictd(index_path: Path, dict_path: Path) -> list[tuple[str, str]]:
    """Return ``(headword, entry text)`` in file order, without dictd's 00-database entries."""
    data = Path(dict_path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    spans: dict[tuple[int, int], str] = {}
    for lineno, line in enumerate(Path(index_path).read_text("utf-8", "replace").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 3:
            raise FormatError(f"{index_path}:{lineno}: expected 'word<TAB>offset<TAB>length'")
        word = fields[0]
        if word.startswith(("00-database", "00database")):
            continue
        span = (dictd_number(fields[1]), dictd_number(fields[2]))
        spans.setdefault(span, word)
    out = []
    for (off, size), word in sorted(spans.items()):
        out.append((word, data[off:off + size].decode("utf-8", "replace")))
    return out


def sword_blocks(module_dir: Path) -> Iterator[tuple[str, int, str]]:
    """Yield ``(testament, block number, text)`` for each zlib block of a SWORD zText module."""
    module_dir = Path(module_dir)
    for testament in ("ot", "nt"):
        bzs, bzz = module_dir / f"{testament}.bzs", module_dir / f"{testament}.bzz"
        if not bzs.exists():
            continue
        index, blob = bzs.read_bytes(), bzz.read_bytes()
        if len(index) % 12:
            raise FormatError(f"{bzs}: size {len(index)} is not a multiple of 12-byte entries")
        for i in range(len(index) // 12):
            off, csize, usize = struct.unpack_from("<III", index, 12 * i)
            if csize == 0:
                continue
            raw = zlib.decompress(blob[off:off + csize])
            if len(raw) != usize:
                raise FormatError(f"{bzz}: block {i} is {len(raw)} bytes, index says {usize}")
            yield testament, i, raw.decode("utf-8", "replace")
