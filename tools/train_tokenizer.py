"""Train a tokenizer on a balanced, seeded sample of each domain.

--tokenizer-type SentencePieceTokenizer (default): a byte-fallback BPE SentencePiece model,
<prefix>.model. HuggingFaceTokenizer: a GPT-2-style byte-level BPE (``tokenizers``) saved as
<prefix>/tokenizer.json; GPT2BPETokenizer: the same kind saved as <prefix>-vocab.json and
<prefix>-merges.txt. Both byte-level kinds have <|endoftext|> (id 0) as end of document.

Each domain is a directory of *.jsonl / *.jsonl.gz files. Up to --sample-mb-per-domain MB of
text is drawn from every domain (documents picked at random with --seed), so a large domain
cannot crowd the others out of the vocabulary.

Example:
    python tools/train_tokenizer.py --input-dirs corpus/code corpus/law corpus/books \\
        --vocab-size 32000 --model-prefix tokenizers/mix32k --sample-mb-per-domain 20
    python tools/train_tokenizer.py --input-dirs corpus/code corpus/law --tokenizer-type HuggingFaceTokenizer \
        --vocab-size 32000 --model-prefix tokenizers/mix32k-hf
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

from megamix.data.preprocess import PreprocessError, expand_inputs, parse_line, read_chunks
from megamix.data.tokenizer import SentencePieceTokenizer, TokenizerConfig, train_sentencepiece

TRAINABLE = ("SentencePieceTokenizer", "HuggingFaceTokenizer", "GPT2BPETokenizer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input-dirs", "--input", dest="input_dirs", nargs="+", required=True,
                   help="one directory of *.jsonl(.gz) per domain")
    p.add_argument("--model-prefix", required=True,
                   help="SentencePiece: <prefix>.model/.vocab; HuggingFace: <prefix>/tokenizer.json; "
                        "GPT2BPE: <prefix>-vocab.json/-merges.txt")
    p.add_argument("--tokenizer-type", choices=TRAINABLE, default="SentencePieceTokenizer")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--sample-mb-per-domain", type=float, default=20.0, help="MB of text sampled per domain")
    p.add_argument("--json-key", default="text")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return p.parse_args(argv)


def _text_size(path: str) -> int:
    """Uncompressed size of a jsonl file (the gzip trailer's ISIZE for .gz: exact below 4 GiB)."""
    if not path.endswith(".gz"):
        return os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little")


def sample_domain(directory: str, budget: int, key: str, rng: random.Random) -> tuple[list[str], int]:
    """Seeded sample of about ``budget`` bytes of documents from one domain directory."""
    files = expand_inputs([directory])
    total = sum(_text_size(f) for f in files)
    keep = min(1.0, 1.1 * budget / max(total, 1))
    rng.shuffle(files)
    texts, size = [], 0
    for fi, first, lines in read_chunks(files, 1 << 20):
        for lineno, line in enumerate(lines, first):
            if not line.strip() or rng.random() >= keep:
                continue
            values, kind, msg = parse_line(line, (key,))
            if values is None:
                raise PreprocessError(f"{files[fi]}:{lineno}: {kind}: {msg}")
            texts.append(values[0])
            size += len(values[0].encode("utf-8"))
            if size >= budget:
                return texts, size
    return texts, size


def write_sentences(texts: list[str], out) -> int:
    """Write documents one line per paragraph (SentencePiece reads one sentence per line)."""
    n = 0
    for text in texts:
        for para in text.splitlines():
            if para.strip():
                out.write(para + "\n")
                n += 1
    return n


def _train(args: argparse.Namespace, text_file: str):
    """Train the requested kind on ``text_file``; returns (what was written, the loaded tokenizer)."""
    if args.tokenizer_type == "SentencePieceTokenizer":
        model = train_sentencepiece(text_file, args.model_prefix, args.vocab_size, seed=args.seed,
                                    threads=args.threads)
        return model, SentencePieceTokenizer(model)
    from megamix.data.hf_tokenizers import save_trained, train_byte_level_bpe

    paths = save_trained(train_byte_level_bpe(text_file, args.vocab_size, args.threads), args.tokenizer_type,
                         args.model_prefix)
    if args.tokenizer_type == "HuggingFaceTokenizer":
        cfg = TokenizerConfig(args.tokenizer_type, tokenizer_model=args.model_prefix)
    else:
        cfg = TokenizerConfig(args.tokenizer_type, vocab_file=paths[0], merge_file=paths[1])
    return " + ".join(paths), cfg.build()


def main(argv: list[str] | None = None) -> int:
    """Sample, train and print a summary; returns the exit status."""
    args = parse_args(argv)
    rng = random.Random(args.seed)
    start = time.perf_counter()
    budget = int(args.sample_mb_per_domain * 1e6)
    out_dir = os.path.dirname(os.path.abspath(args.model_prefix))
    os.makedirs(out_dir, exist_ok=True)
    try:
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=out_dir, suffix=".txt") as tmp:
            lines = 0
            for d in args.input_dirs:
                texts, size = sample_domain(d, budget, args.json_key, rng)
                lines += write_sentences(texts, tmp)
                print(f"{d}: sampled {len(texts)} documents, {size / 1e6:.2f} MB", file=sys.stderr)
            tmp.flush()
            model, tok = _train(args, tmp.name)
    except (PreprocessError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"train_tokenizer.py: error: {exc}", file=sys.stderr)
        return 1
    asked = "" if tok.vocab_size == args.vocab_size else f" (asked {args.vocab_size}: the sample is too small)"
    print(f"done: {model} vocab {tok.vocab_size}{asked} (eos {tok.eod}) from {len(args.input_dirs)} domains, "
          f"{lines} lines, {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
