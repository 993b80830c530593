"""Cached downloads of Debian packages (``apt-get download`` + ``dpkg -x``) and PyPI files."""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


class FetchError(RuntimeError):
    """Raised when a package cannot be downloaded or unpacked; the message names it."""


@dataclass(frozen=True)
class Fetched:
    """One downloaded package: where it lies, its version and licence."""

    name: str
    """Package name (Debian binary package or PyPI project)."""
    version: str
    """Version taken from the downloaded file's name."""
    path: Path
    """Unpacked root directory (Debian) or the downloaded archive (PyPI)."""
    licence: str
    """Licence name(s) from the Debian copyright file or the PyPI metadata."""


Runner = Callable[[Sequence[str], Path], subprocess.CompletedProcess]


def _run(cmd: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)


def deb_file(cache: Path, name: str) -> Path | None:
    """Return the cached ``.deb`` of package ``name`` (newest by name), if any."""
    found = sorted(Path(cache, "deb").glob(f"{name}_*.deb"))
    return found[-1] if found else None


def deb_version(path: Path) -> str:
    """Version part of a ``name_version_arch.deb`` file name."""
    parts = path.name.split("_")
    return urllib.parse.unquote(parts[1]) if len(parts) >= 3 else "unknown"


def apt_download(cache: Path, names: Sequence[str], runner: Runner = _run) -> None:
    """Download the missing ``.deb`` files of ``names`` into ``<cache>/deb``."""
    missing = [n for n in names if deb_file(cache, n) is None]
    if not missing:
        return
    folder = Path(cache, "deb").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("apt-get") is None:
        raise FetchError(f"cannot fetch Debian package(s) {', '.join(missing)}: apt-get not found")
    base = ["apt-get", "download"]
    if os.geteuid() == 0:
        base += ["-o", "APT::Sandbox::User=root"]
    if runner(base + missing, folder).returncode == 0:
        return
    for name in missing:  # find which package failed, to name it
        proc = runner(base + [name], folder)
        if proc.returncode != 0:
            tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no message"]
            raise FetchError(f"cannot fetch Debian package '{name}' with apt-get download: "
                             f"{tail[0]} (try `apt-get update`, or check the package name)")


def unpack_deb(cache: Path, name: str, runner: Runner = _run) -> Fetched:
    """Unpack the cached ``.deb`` of ``name`` with ``dpkg -x`` (once) and describe it."""
    cache = Path(cache).resolve()
    deb = deb_file(cache, name)
    if deb is None:
        raise FetchError(f"Debian package '{name}' is not in {cache}/deb; download it first")
    root = Path(cache, "unpacked", deb.stem)
    if not root.is_dir():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{deb.stem}.", dir=root.parent))
        proc = runner(["dpkg-deb", "-x", str(deb), str(tmp)], root.parent)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FetchError(f"cannot unpack Debian package '{name}' ({deb}): {proc.stderr.strip()}")
        os.replace(tmp, root)
    return Fetched(name, deb_version(deb), root, debian_licence(root / "usr/share/doc" / name / "copyright"))


_KNOWN = ("Python Software Foundation", "GPL-3", "GPL-2", "GPL", "LGPL", "BSD", "MIT", "Apache", "public domain",
          "Public Domain", "CC0", "CC-BY-SA", "GFDL", "Artistic", "Creative Commons")


def debian_licence(copyright_path: Path) -> str:
    """Licence names from a Debian copyright file (DEP-5 ``License:`` fields, else keywords)."""
    if not copyright_path.exists():
        return "unknown (no copyright file)"
    text = copyright_path.read_text("utf-8", "replace")
    names: list[str] = []
    dep5 = text.lstrip().startswith("Format:")
    for match in [] if not dep5 else re.finditer(r"^License:[ \t]*(\S[^\n]*)", text, re.MULTILINE):
        if match.group(1).strip() not in names:
            names.append(match.group(1).strip())
    if names:
        return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    hits = [k for k in _KNOWN if k.lower() in text.lower()]
    return "see copyright file" + (f" (mentions {', '.join(hits[:3])})" if hits else "")


def pypi_file(cache: Path, spec: str) -> Path | None:
    """Return the cached wheel or sdist for ``name==version``, if any."""
    name, _, version = spec.partition("==")
    stem = re.sub(r"[-_.]+", "_", name).lower()
    for path in sorted(Path(cache, "pypi").glob("*")):
        norm = re.sub(r"[-_.]+", "_", path.name).lower()
        if norm.startswith(f"{stem}_{version.replace('.', '_')}") and not path.name.startswith("."):
            return path
    return None


def pip_download(cache: Path, spec: str, sdist: bool, runner: Runner = _run) -> Fetched:
    """Download ``name==version`` (wheel, or sdist when ``sdist``) into ``<cache>/pypi``."""
    folder = Path(cache, "pypi").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if pypi_file(cache, spec) is None:
        tmp = Path(tempfile.mkdtemp(prefix=".pip.", dir=folder))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp), spec]
        cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
        proc = runner(cmd, folder)
        files = sorted(tmp.glob("*"))
        if proc.returncode != 0 or not files:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no file downloaded"]
            raise FetchError(f"cannot fetch PyPI package '{spec}' with pip download: {tail[0]}")
        os.replace(files[0], folder / files[0].name)
        shutil.rmtree(tmp, ignore_errors=True)
    path = pypi_file(cache, spec)
    if path is None:
        raise FetchError(f"PyPI package '{spec}' was downloaded but not found in {folder}")
    name, _, version = spec.partition("==")
    return Fetched(name, version, path, pypi_licence(path))


def _metadata_text(path: Path) -> str:
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as zf:
            meta = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
            return zf.read(meta[0]).decode("utf-8", "replace") if meta else ""
    with tarfile.open(path) as tf:
        for member in tf.getmembers():
            if member.name.count("/") == 1 and member.name.endswith("/PKG-INFO"):
                return tf.extractfile(member).read().decode("utf-8", "replace")
    return ""


def pypi_licence(path: Path) -> str:
    """Licence of a wheel/sdist from its metadata (License-Expression, License, classifiers)."""
    meta = email.parser.Parser().parsestr(_metadata_text(path), headersonly=True)
    for key in ("License-Expression", "License"):
        value = (meta.get(key) or "").strip()
        if value and value.upper() != "UNKNOWN" and len(value) < 80:
            return value
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or []
                   if c.startswith("License ::")]
    return ", ".join(classifiers) or "unknown (no licence in metadata)"
