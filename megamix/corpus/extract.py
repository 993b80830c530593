"""Pure text-format extractors: licence YAML headers, metamath, TeX, HTML, OSIS, chapters."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

from megamix.corpus.split import split_before

_YAML_FRONT = re.compile(r"\A\s*---[ \t]*\n.*?\n---[ \t]*(\n|\Z)", re.DOTALL)
_MM_PROOF = re.compile(r"\$=\s+\(.*?\$\.", re.DOTALL)
_MM_HEADER = r"^\$\(\s*\n[ \t]*(?:#\*#\*|#{6,}|=-=-|-\.-\.)"
_TEX_SECTION = r"^\\(?:chapter|section|subsection)\b"
_CHAPTER = r"^[ \t]*(?:CHAPTER|Chapter|CHAP\.|BOOK|Book|ACT|Act|SCENE|Scene)[ \t.]+[0-9IVXLCivxlc]+\b"


def strip_yaml_front_matter(text: str) -> str:
    """Remove a leading YAML header delimited by ``---`` lines (ScanCode licence files)."""
    return _YAML_FRONT.sub("", text, count=1)


def strip_metamath_proofs(text: str) -> str:
    """Replace compressed metamath proofs ``$= ( labels ) CODES $.`` by the empty proof ``$= ? $.``."""
    return _MM_PROOF.sub("$= ? $.", text)


def metamath_sections(text: str) -> list[str]:
    """Split a metamath database before each decorated section-header comment."""
    return split_before(text, _MM_HEADER)


def tex_sections(text: str) -> list[str]:
    """Split TeX source before each ``\\chapter``, ``\\section`` or ``\\subsection``."""
    return split_before(text, _TEX_SECTION)


def split_chapters(text: str) -> list[str]:
    """Split a novel or play before each CHAPTER / BOOK / ACT / SCENE heading line."""
    return split_before(text, _CHAPTER)


class _TextExtractor(HTMLParser):
    """HTML to plain text: block tags become line breaks, scripts and styles vanish."""

    _BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre",
              "table", "ul", "ol", "dl", "dt", "dd", "blockquote", "hr", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.skip += tag in ("script", "style")
        self.pre += tag == "pre"
        if tag in self._BLOCK:
            self.out.append("\n\n" if tag not in ("br", "li", "tr", "dd") else "\n")

    def handle_endtag(self, tag: str) -> None:
        self.skip -= tag in ("script", "style") and self.skip > 0
        self.pre -= tag == "pre" and self.pre > 0
        if tag in self._BLOCK:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(markup: str) -> str:
    """Render HTML to readable plain text (paragraphs on their own lines)."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.out)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


_OSIS_DROP = re.compile(r"<note\b[^>]*>.*?</note>|<milestone\b[^>]*/>", re.DOTALL)
_OSIS_BREAK = re.compile(r"<(?:div|p|lb|title|l|lg|chapter)\b[^>]*>|</(?:title|p|l|lg)>")
_TAG = re.compile(r"<[^>]+>")


def osis_to_text(osis: str) -> str:
    """Strip OSIS markup (footnotes dropped; paragraphs, titles and poetry lines kept)."""
    text = _OSIS_DROP.sub("", osis)
    text = _OSIS_BREAK.sub("\n", text)
    text = html.unescape(_TAG.sub("", text))
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def osis_chapters(osis: str) -> list[str]:
    """Split the OSIS text of one book before each ``<chapter ... sID=...>`` marker."""
    starts = [m.start() for m in re.finditer(r"<chapter\b[^>]*\bsID=", osis)]
    bounds = [0] + [s for s in starts if s > 0] + [len(osis)]
    return [osis[a:b] for a, b in zip(bounds, bounds[1:])]
