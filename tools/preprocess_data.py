"""Tokenize jsonl(.gz) documents into Megatron indexed datasets: <output-prefix>_<key>_document.bin/.idx.

Example:
    python tools/preprocess_data.py --input corpus/code --output-prefix data/code \\
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model --append-eod --workers 2
"""

from __future__ import annotations

import argparse
import signal
import sys

from megamix.data.preprocess import PreprocessConfig, PreprocessError, preprocess, summary_line
from megamix.data.tokenizer import TOKENIZER_TYPES, TokenizerConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line, with Megatron's flag names."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="jsonl/jsonl.gz file(s), glob(s) or directory(ies)")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="keys to tokenize, one output per key")
    p.add_argument("--output-prefix", required=True)
    p.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    p.add_argument("--tokenizer-model", default=None,
                   help="SentencePiece .model, or tokenizer.json / its directory (HuggingFaceTokenizer)")
    p.add_argument("--vocab-size", type=int, default=None, help="vocabulary size (NullTokenizer)")
    p.add_argument("--vocab-file", default=None, help="GPT-2 BPE vocab.json (GPT2BPETokenizer)")
    p.add_argument("--merge-file", default=None, help="GPT-2 BPE merges.txt (GPT2BPETokenizer)")
    p.add_argument("--append-eod", action="store_true", help="append the end-of-document id to every document")
    p.add_argument("--workers", type=int, default=1, help="tokenizing processes; output is the same for any number")
    p.add_argument("--log-interval", type=int, default=10000, help="documents between progress lines")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip malformed lines (counted per kind) instead of stopping at the first")
    return p.parse_args(argv)


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the builders, which remove their temporaries


def main(argv: list[str] | None = None) -> int:
    """Run the preprocessing; returns the exit status."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    # A process started in the background of a non-interactive shell inherits SIGINT ignored,
    # and Python then installs no KeyboardInterrupt handler: install it explicitly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        config = PreprocessConfig(
            inputs=args.input, output_prefix=args.output_prefix, json_keys=tuple(args.json_keys),
            tokenizer=TokenizerConfig(args.tokenizer_type, args.tokenizer_model, args.vocab_size, args.vocab_file,
                                      args.merge_file),
            append_eod=args.append_eod, workers=args.workers, log_interval=args.log_interval,
            skip_invalid=args.skip_invalid)
        log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
        stats = preprocess(config, log=log)
    except (PreprocessError, ValueError, FileNotFoundError) as exc:
        print(f"preprocess_data.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("preprocess_data.py: interrupted; no output written", file=sys.stderr)
        return 130
    print(summary_line(stats, config), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
