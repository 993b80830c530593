"""Text clean-up and document splitters shared by every corpus source."""

from __future__ import annotations

import re
from typing import Iterable, Sequence

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_OVERSTRIKE = re.compile(r".\x08")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANKS = re.compile(r"\n{4,}")


def normalize_text(text: str) -> str:
    """Return ``text`` with unified newlines, no control characters or overstrikes, trimmed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x0c", "\n")
    text = _OVERSTRIKE.sub("", text)
    text = _CONTROL.sub("", text).replace("\ufffd", "")
    text = _TRAILING.sub("\n", text + "\n")
    return _BLANKS.sub("\n\n\n", text).strip("\n") + "\n" if text.strip() else ""


def decode_bytes(raw: bytes, fallbacks: Sequence[str] = ("latin-1",)) -> str:
    """Decode bytes as UTF-8, or with the first fallback codec that decodes them cleanly."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    for codec in fallbacks:
        try:
            return raw.decode(codec)
        except (UnicodeDecodeError, LookupError):
            continue
    return raw.decode("utf-8", errors="replace")


def split_before(text: str, pattern: str) -> list[str]:
    """Split ``text`` into parts that each start at a line matching regex ``pattern``."""
    starts = [m.start() for m in re.finditer(pattern, text, flags=re.MULTILINE)]
    bounds = [0] + [s for s in starts if s > 0] + [len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if text[a:b].strip()]


def _split_large(part: str, max_chars: int) -> list[str]:
    """Cut one oversized part at paragraph (else line) boundaries into pieces <= max_chars."""
    pieces, cur = [], ""
    for unit in re.split(r"(?<=\n\n)", part):
        if len(unit) > max_chars:
            pieces.extend([cur] if cur else [])
            pieces.extend(_split_large_lines(unit, max_chars))
            cur = ""
            continue
        if cur and len(cur) + len(unit) > max_chars:
            pieces.append(cur)
            cur = ""
        cur += unit
    return pieces + ([cur] if cur else [])


def _split_large_lines(part: str, max_chars: int) -> list[str]:
    pieces, cur = [], ""
    for line in part.splitlines(keepends=True):
        if cur and len(cur) + len(line) > max_chars:
            pieces.append(cur)
            cur = ""
        cur += line
    return pieces + ([cur] if cur else [])


def pack_chunks(parts: Iterable[str], min_chars: int = 2000, max_chars: int = 100_000) -> list[str]:
    """Merge consecutive parts shorter than ``min_chars``; cut parts longer than ``max_chars``."""
    out: list[str] = []
    pending = ""
    for part in parts:
        for piece in (_split_large(part, max_chars) if len(part) > max_chars else [part]):
            pending += piece
            if len(pending) >= min_chars:
                out.append(pending)
                pending = ""
    if pending:
        if out and len(out[-1]) + len(pending) <= max_chars:
            out[-1] += pending
        else:
            out.append(pending)
    return out


def group_entries(entries: Sequence[str], per_group: int = 32, sep: str = "\n") -> list[str]:
    """Join consecutive entries into documents of ``per_group`` entries each."""
    if per_group < 1:
        raise ValueError(f"group_entries: per_group must be >= 1, got {per_group}")
    return [sep.join(entries[i:i + per_group]) for i in range(0, len(entries), per_group)]
