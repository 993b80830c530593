"""Merge every indexed dataset (<prefix>.idx/.bin) in a directory into one, in sorted prefix order.

Example:
    python tools/merge_datasets.py --input data/shards --output-prefix data/code_text_document
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

from megamix.data.indexed import IndexedDataset, IndexedDatasetBuilder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line, with Megatron's flag names."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="directory holding the <prefix>.idx/.bin pairs to merge")
    p.add_argument("--output-prefix", required=True, help="merged dataset prefix")
    return p.parse_args(argv)


def find_prefixes(directory: str) -> list[str]:
    """Sorted dataset prefixes in a directory; error when a .idx has no .bin or none exist."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"--input {directory}: not a directory")
    prefixes = sorted(p[: -len(".idx")] for p in glob.glob(os.path.join(directory, "*.idx")))
    if not prefixes:
        raise FileNotFoundError(f"--input {directory}: no *.idx files to merge")
    for prefix in prefixes:
        if not IndexedDataset.exists(prefix):
            raise FileNotFoundError(f"{prefix}.bin: missing (its .idx exists)")
    return prefixes


def merge(prefixes: list[str], output_prefix: str) -> IndexedDataset:
    """Concatenate datasets into output_prefix (all must share one dtype) and open the result."""
    dtype = IndexedDataset(prefixes[0]).dtype
    out = os.path.abspath(output_prefix)
    if any(os.path.abspath(p) == out for p in prefixes):
        raise ValueError(f"--output-prefix {output_prefix}: is also an input")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with IndexedDatasetBuilder(output_prefix, dtype) as builder:
        for prefix in prefixes:
            builder.add_index(prefix)
    return IndexedDataset(output_prefix)


def main(argv: list[str] | None = None) -> int:
    """Merge and print a summary; returns the exit status."""
    args = parse_args(argv)
    try:
        prefixes = find_prefixes(args.input)
        ds = merge(prefixes, args.output_prefix)
    except (ValueError, FileNotFoundError) as exc:
        print(f"merge_datasets.py: error: {exc}", file=sys.stderr)
        return 1
    print(f"merged {len(prefixes)} datasets -> {args.output_prefix}: {ds.num_documents} documents, "
          f"{len(ds)} sequences, {ds.num_tokens} tokens ({ds.dtype})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
