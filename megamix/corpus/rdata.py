"""Reader for R's serialisation format and lazy-load databases (``.rdb`` + ``.rdx``).

Only what is needed to pull character vectors out of R data packages is supported:
the XDR (``X``) format, versions 2 and 3, and every ordinary vector, pair-list and
reference type; byte code and external pointers raise :class:`RDataError`.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

_NIL, _REF = 254, 255
_SPECIAL = {253, 252, 251, 250, 242, 241}  # environments and markers with no payload
_PERSISTENT = {249, 248, 247}  # namespace, package, persistent string vectors
_PAIRS = {2, 3, 5, 6, 17, 239, 240}  # pair lists, closures, promises, language
_UTF8, _LATIN1, _BYTES = 1 << 3, 1 << 2, 1 << 1


class RDataError(ValueError):
    """Raised when bytes are not a supported R serialisation stream."""


@dataclass
class RObject:
    """An unserialised R value: ``value`` is a Python list/str/number payload."""

    rtype: int
    value: Any = None
    attributes: dict[str, Any] = field(default_factory=dict)
    tag: str | None = None


class _Reader:
    """Cursor over one XDR serialisation stream."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.refs = data, 0, []

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RDataError(f"truncated R stream: wanted {n} bytes at offset {self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n


def _read_charsxp(r: _Reader, levels: int) -> str | None:
    n = r.int()
    if n == -1:
        return None
    raw = r.take(n)
    enc = "latin-1" if levels & _LATIN1 else "utf-8"
    return raw.decode(enc, errors="replace")


def _read_attrs(r: _Reader) -> dict[str, Any]:
    attrs = _read_item(r)
    out: dict[str, Any] = {}
    for item in _pairlist_items(attrs):
        out[item.tag or ""] = item.value if isinstance(item, RObject) else item
    return out


def _pairlist_items(obj: Any) -> list[RObject]:
    if isinstance(obj, RObject) and obj.rtype in _PAIRS and isinstance(obj.value, list):
        return obj.value
    return []


def _read_pairlist(r: _Reader, flags: int) -> RObject:
    rtype, items, attrs = flags & 0xFF, [], {}
    while True:
        has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
        if has_attr:
            attrs.update(_read_attrs(r))
        tag = _read_item(r) if has_tag else None
        car = _read_item(r)
        items.append(RObject(rtype, car, tag=tag if isinstance(tag, str) else None))
        flags = r.int()
        if (flags & 0xFF) not in _PAIRS:
            r.pos -= 4
            tail = _read_item(r)
            if tail is not None:
                items.append(RObject(rtype, tail))
            return RObject(rtype, items, attrs)


def _read_vector(r: _Reader, rtype: int, levels: int) -> Any:
    n = r.length()
    if rtype == 16:
        out = []
        for _ in range(n):
            flags = r.int()
            out.append(_read_charsxp(r, flags >> 12))
        return out
    if rtype in (10, 13):
        return list(struct.unpack(f">{n}i", r.take(4 * n)))
    if rtype == 14:
        return list(struct.unpack(f">{n}d", r.take(8 * n)))
    if rtype == 15:
        return list(struct.unpack(f">{2 * n}d", r.take(16 * n)))
    if rtype == 24:
        return r.take(n)
    return [_read_item(r) for _ in range(n)]  # 19 VECSXP, 20 EXPRSXP


def _read_item(r: _Reader) -> Any:
    flags = r.int()
    rtype, levels = flags & 0xFF, flags >> 12
    has_attr = bool(flags & (1 << 9))
    if rtype == _NIL or rtype in _SPECIAL:
        return None
    if rtype == _REF:
        idx = flags >> 8 or r.int()
        return r.refs[idx - 1]
    if rtype in _PERSISTENT:
        r.int()
        strings = [_read_item(r) for _ in range(r.int())]
        r.refs.append(strings)
        return strings
    if rtype == 1:  # SYMSXP: its name, then registered as a reference
        name = _read_item(r)
        r.refs.append(name)
        return name
    if rtype == 9:
        return _read_charsxp(r, levels)
    if rtype in _PAIRS:
        return _read_pairlist(r, flags)
    if rtype == 4:
        return _read_env(r)
    if rtype == 238:
        _read_item(r)  # ALTREP class info
        state = _read_item(r)
        _read_item(r)
        return state
    if rtype == 25:
        return RObject(rtype, None, _read_attrs(r) if has_attr else {})
    if rtype in (10, 13, 14, 15, 16, 19, 20, 24):
        value = _read_vector(r, rtype, levels)
        return RObject(rtype, value, _read_attrs(r) if has_attr else {})
    raise RDataError(f"unsupported R object type {rtype} at offset {r.pos - 4}")


def _read_env(r: _Reader) -> RObject:
    env = RObject(4, None)
    r.refs.append(env)
    r.int()  # locked
    enclos, frame, hashtab, attrs = (_read_item(r) for _ in range(4))
    env.value = {"frame": frame, "hashtab": hashtab, "enclos": enclos, "attrs": attrs}
    return env


def unserialize(data: bytes) -> Any:
    """Decode one R serialisation stream (XDR, version 2 or 3) into Python objects."""
    if data[:2] != b"X\n":
        raise RDataError(f"expected an XDR R stream starting with b'X\\n', found {data[:2]!r}")
    r = _Reader(data)
    r.pos = 2
    version = r.int()
    r.int(), r.int()
    if version == 3:
        r.take(r.int())
    elif version != 2:
        raise RDataError(f"R serialisation version {version} is not supported (want 2 or 3)")
    return _read_item(r)


def decompress_block(block: bytes) -> bytes:
    """Decompress one lazy-load block: 4-byte big-endian length, then zlib/bzip2/xz data."""
    if len(block) < 5:
        raise RDataError(f"R lazy-load block too short ({len(block)} bytes)")
    size = struct.unpack(">I", block[:4])[0]
    kind, body = block[4:5], block[5:]
    if kind == b"Z":
        out = zlib.decompress(body)
    elif kind == b"2":
        out = bz2.decompress(body)
    elif kind == b"X":
        out = lzma.decompress(body)
    elif kind == b"0":
        out = body
    else:
        out = zlib.decompress(block[4:])
    if len(out) != size:
        raise RDataError(f"R lazy-load block: header says {size} bytes, got {len(out)}")
    return out


def read_rds(path: Path) -> Any:
    """Read an ``.rds`` file (gzip, bzip2, xz or plain serialisation)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    elif raw[:3] == b"BZh":
        raw = bz2.decompress(raw)
    elif raw[:6] == b"\xfd7zXZ\x00":
        raw = lzma.decompress(raw)
    elif raw[:4] != b"X\n" and len(raw) > 4 and raw[4:5] == b"x":
        raw = zlib.decompress(raw[4:])
    return unserialize(raw)


def _named_list(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, RObject) or obj.rtype != 19:
        raise RDataError("expected a named R list in the .rdx index")
    names = obj.attributes.get("names")
    names = names.value if isinstance(names, RObject) else names
    return dict(zip(names or [], obj.value))


def iter_lazyload(rdb: Path, rdx: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(name, object)`` for every variable of an R lazy-load database."""
    index = _named_list(read_rds(rdx))
    variables = _named_list(index.get("variables"))
    data = Path(rdb).read_bytes()
    for name in sorted(variables):
        offset, length = (int(v) for v in variables[name].value)
        yield name, unserialize(decompress_block(data[offset:offset + length]))


def character_vectors(obj: Any) -> Iterator[list[str]]:
    """Yield every character vector found anywhere inside an unserialised R object."""
    stack = [obj]
    while stack:
        cur = stack.pop()
        if isinstance(cur, RObject):
            if cur.rtype == 16:
                yield [s if s is not None else "" for s in cur.value]
            elif isinstance(cur.value, list):
                stack.extend(reversed(cur.value))
        elif isinstance(cur, list):
            stack.extend(reversed(cur))
