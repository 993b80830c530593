"""Write a tiny synthetic multi-domain dataset (MMIDIDX, NullTokenizer ids) for examples and tests.

Each domain is a seeded first-order Markov chain over its own slice of the vocabulary with
its own entropy, so domains differ in difficulty and a model trained on one domain learns
little about another — enough structure for mixing methods to have something to decide.
Documents end with the NullTokenizer's eod id (= --vocab-size).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megamix.data.indexed import IndexedDatasetBuilder, dtype_for_vocab  # noqa: E402

DEFAULT_DOMAINS = {"code": 0.3, "prose": 1.0, "math": 0.6}


def _transition_matrix(rng: np.random.Generator, n: int, temperature: float) -> np.ndarray:
    logits = rng.standard_normal((n, n)) / max(temperature, 1e-3)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def write_domain(prefix: str, domain_index: int, temperature: float, num_docs: int, mean_len: int,
                 vocab_size: int, seed: int) -> None:
    """One domain: ``num_docs`` Markov-chain documents over a vocabulary slice, eod-terminated."""
    rng = np.random.default_rng([seed, domain_index])
    width = max(16, vocab_size // 4)
    base = (domain_index * width // 2) % max(1, vocab_size - width)
    cdf = np.cumsum(_transition_matrix(rng, width, temperature), axis=1)
    with IndexedDatasetBuilder(prefix, dtype_for_vocab(vocab_size + 1)) as builder:
        for _ in range(num_docs):
            length = int(rng.integers(mean_len // 2, mean_len * 3 // 2 + 1))
            state = int(rng.integers(width))
            draws = rng.random(length)
            doc = np.empty(length + 1, dtype=np.int64)
            for t in range(length):
                state = min(int(np.searchsorted(cdf[state], draws[t])), width - 1)
                doc[t] = base + state
            doc[length] = vocab_size
            builder.add_document(doc)
        builder.finalize()


def main(argv: list[str] | None = None) -> int:
    """Write every domain as <out>/<name>_text_document.{bin,idx}."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--domains", default=",".join(DEFAULT_DOMAINS),
                   help="comma list of names; known names get fixed temperatures")
    p.add_argument("--num-docs", type=int, default=400)
    p.add_argument("--mean-len", type=int, default=300)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for i, name in enumerate(args.domains.split(",")):
        prefix = os.path.join(args.out, f"{name}_text_document")
        write_domain(prefix, i, DEFAULT_DOMAINS.get(name, 0.5 + 0.2 * i), args.num_docs, args.mean_len,
                     args.vocab_size, args.seed)
        print(f"wrote {prefix}.bin/.idx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
