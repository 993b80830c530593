"""Render man pages to plain text with groff, many pages per groff run."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from megamix.corpus.split import decode_bytes

_MARK = "@@MEGAMIXPAGE{}@@"
_MARK_RE = re.compile(r"^[ \t]*@@MEGAMIXPAGE(\d+)@@[ \t]*\n?", re.MULTILINE)
_HEADER = re.compile(r"^(\S+\(\w+\))\s.*\s\1\s*$")


class GroffError(RuntimeError):
    """Raised when groff is missing or fails on a batch of man pages."""


@dataclass(frozen=True)
class Groff:
    """How to call groff: the executable and extra environment (fonts/macros paths)."""

    executable: str
    """Path of the groff program."""
    env: tuple[tuple[str, str], ...] = ()
    """Extra environment variables, e.g. GROFF_FONT_PATH and GROFF_TMAC_PATH."""


def find_groff(unpacked_root: Path | None = None) -> Groff:
    """Return the system groff, else one unpacked from the groff-base .deb under ``unpacked_root``."""
    system = shutil.which("groff")
    if system:
        return Groff(system)
    if unpacked_root is not None and (Path(unpacked_root) / "usr/bin/groff").exists():
        root = Path(unpacked_root)
        env = (("GROFF_FONT_PATH", str(root / "usr/share/groff/current/font")),
               ("GROFF_TMAC_PATH", str(root / "usr/share/groff/current/tmac")),
               ("GROFF_BIN_PATH", str(root / "usr/bin")),
               ("PATH", f"{root / 'usr/bin'}:{os.environ.get('PATH', '')}"))
        return Groff(str(root / "usr/bin/groff"), env)
    raise GroffError("groff not found: install the Debian package groff-base "
                     "(apt-get install groff-base), or let the corpus tool fetch it")


def read_man_source(path: Path, fallbacks: Sequence[str] = ("latin-1",)) -> str:
    """Read a (possibly gzipped) man page source as text."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return decode_bytes(raw, fallbacks)


def is_redirect(source: str) -> bool:
    """True for stub pages that only ``.so``-include another page."""
    lines = [ln for ln in source.splitlines() if ln.strip() and not ln.startswith(('.\\"', "'\\\""))]
    return len(lines) <= 2 and any(ln.startswith(".so ") for ln in lines)


def batch_source(pages: Sequence[str]) -> str:
    """Concatenate man page sources with a marker line before each page."""
    parts = []
    for i, page in enumerate(pages):
        parts.append(f".\n.nf\n\\&{_MARK.format(i)}\n.fi\n")
        parts.append(page if page.endswith("\n") else page + "\n")
    return "".join(parts)


def split_batch_output(text: str, count: int) -> list[str]:
    """Split rendered batch output at the markers; move each page's footer back to it."""
    pieces: dict[int, str] = {}
    matches = list(_MARK_RE.finditer(text))
    for m, nxt in zip(matches, matches[1:] + [None]):
        pieces[int(m.group(1))] = text[m.end():nxt.start() if nxt else len(text)]
    out = [pieces.get(i, "") for i in range(count)]
    for i in range(1, count):
        lines = out[i].splitlines(keepends=True)
        head = next((j for j, ln in enumerate(lines) if _HEADER.match(ln.strip())), 0)
        out[i - 1] += "".join(lines[:head])
        out[i] = "".join(lines[head:])
    return out


def render_batch(groff: Groff, pages: Sequence[str], width: int = 80) -> list[str]:
    """Render many man page sources in one groff run; return one text per page."""
    env = dict(os.environ, **dict(groff.env))
    cmd = [groff.executable, "-k", "-Kutf8", "-t", "-Tutf8", "-mandoc", "-rcR=1",
           f"-rLL={width}n", "-P-c", "-P-b", "-P-u", "-P-o", "-Wall", "-ww"]
    proc = subprocess.run(cmd, input=batch_source(pages).encode("utf-8"),
                          capture_output=True, env=env)
    if proc.returncode != 0 and not proc.stdout:
        raise GroffError(f"groff failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-300:]}")
    return split_batch_output(proc.stdout.decode("utf-8", "replace"), len(pages))


def render_pages(groff: Groff, pages: Sequence[str], batch_size: int = 200) -> list[str]:
    """Render man page sources in batches of ``batch_size`` pages per groff call."""
    out: list[str] = []
    for start in range(0, len(pages), batch_size):
        out.extend(render_batch(groff, pages[start:start + batch_size]))
    return out
