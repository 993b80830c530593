"""Measure tools/preprocess_data.py against raw SentencePiece encoding of the same texts.

Generates ~--mb MB of seeded jsonl prose (Zipf-distributed pseudo-words with punctuation and
paragraphs), trains a SentencePiece model on a slice of it, runs the preprocessing tool as a
subprocess (wall time, peak RSS of the child processes), then times
``SentencePieceProcessor.encode(texts, num_threads=workers)`` on the same texts in this process.
Prints the throughput ratio (ours / raw) and the peak RSS.

    python benchmarks/bench_preprocess.py --mb 100 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYLLABLES = ("ka ri to na me lo su vi de pa ran tel mor ith an el or us in at ex con pro ter "
             "ble ment tion ous ing er ly st ch sh qu ver dis un re").split()


def make_vocabulary(rng: np.random.Generator, size: int = 30000) -> list[str]:
    """Pseudo-words of 1-4 syllables (deterministic for a given generator)."""
    counts = rng.integers(1, 5, size)
    picks = rng.integers(0, len(SYLLABLES), counts.sum())
    words, pos = [], 0
    for c in counts:
        words.append("".join(SYLLABLES[i] for i in picks[pos:pos + c]))
        pos += c
    return words


def generate_jsonl(path: str, mb: float, seed: int = 0) -> int:
    """Write about ``mb`` MB of jsonl documents of Zipfian prose; returns the number of documents."""
    rng = np.random.default_rng(seed)
    vocab = np.array(make_vocabulary(rng), dtype=object)
    punct = np.array(["", "", "", "", "", "", ",", ".", ".", "!", "?", ";", ":"], dtype=object)
    target, written, docs = int(mb * 1e6), 0, 0
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        while written < target:
            n = int(rng.integers(20, 2000))
            ids = np.minimum(rng.zipf(1.2, n) - 1, len(vocab) - 1)
            words = vocab[ids] + punct[rng.integers(0, len(punct), n)]
            if rng.random() < 0.3:
                words[rng.integers(0, n)] = str(int(rng.integers(0, 100000)))
            text = " ".join(words)
            cut = int(rng.integers(0, len(text)))
            text = text[:cut] + "\n\n" + text[cut:].capitalize()
            line = json.dumps({"text": text}) + "\n"
            f.write(line)
            written += len(line)
            docs += 1
    os.replace(path + ".tmp", path)
    return docs


def read_texts(path: str) -> list[str]:
    """The 'text' of every line of a jsonl file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def train_model(texts: list[str], model_prefix: str, vocab_size: int, train_mb: float) -> str:
    """Train the benchmark's SentencePiece model on the first ``train_mb`` MB of texts."""
    from megamix.data.tokenizer import train_sentencepiece

    lines, size = [], 0
    for t in texts:
        lines.extend(p for p in t.splitlines() if p.strip())
        size += len(t)
        if size >= train_mb * 1e6:
            break
    src = model_prefix + ".train.txt"
    with open(src, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return train_sentencepiece(src, model_prefix, vocab_size, seed=0, threads=os.cpu_count() or 1)


def run_ours(jsonl: str, model: str, out_prefix: str, workers: int) -> float:
    """Run tools/preprocess_data.py; returns wall seconds."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--input", jsonl,
           "--output-prefix", out_prefix, "--tokenizer-type", "SentencePieceTokenizer",
           "--tokenizer-model", model, "--append-eod", "--workers", str(workers), "--log-interval", "1000000"]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"preprocess_data.py failed:\n{res.stderr}")
    print(res.stderr.strip().splitlines()[-1], file=sys.stderr)
    return seconds


def run_raw(texts: list[str], model: str, workers: int) -> float:
    """Time SentencePieceProcessor.encode(texts, num_threads=workers); returns seconds."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model)
    start = time.perf_counter()
    sp.encode(texts, num_threads=workers)
    return time.perf_counter() - start


def bench_preprocess(mb: float = 100.0, workers: int = 2, vocab_size: int = 8000, train_mb: float = 5.0,
                     seed: int = 0, workdir: str | None = None) -> dict:
    """Run the benchmark; returns sizes, times, MB/s of ours and raw, their ratio and peak child RSS."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        jsonl = os.path.join(tmp, "bench.jsonl")
        docs = generate_jsonl(jsonl, mb, seed)
        texts = read_texts(jsonl)
        text_mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        model = train_model(texts, os.path.join(tmp, "tok"), vocab_size, train_mb)
        ours = run_ours(jsonl, model, os.path.join(tmp, "out"), workers)
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        raw = run_raw(texts, model, workers)
        input_mb = os.path.getsize(jsonl) / 1e6
    return {"input_mb": input_mb, "text_mb": text_mb, "documents": docs, "workers": workers,
            "ours_s": ours, "raw_s": raw, "ours_text_mb_s": text_mb / ours, "raw_text_mb_s": text_mb / raw,
            "ratio": raw / ours, "peak_rss_mb": peak_rss_mb}


def main() -> None:
    """Command line entry."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=100.0, help="size of the generated jsonl input")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--train-mb", type=float, default=5.0, help="MB of text the tokenizer is trained on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where temporary files go (default: the system temp dir)")
    args = p.parse_args()
    r = bench_preprocess(args.mb, args.workers, args.vocab_size, args.train_mb, args.seed, args.workdir)
    print(json.dumps(r, indent=1))
    print(f"preprocess_data.py {r['ours_text_mb_s']:.2f} MB/s vs raw SentencePiece {r['raw_text_mb_s']:.2f} MB/s "
          f"({r['workers']} workers): ratio {r['ratio']:.3f}; peak RSS {r['peak_rss_mb']:.0f} MB "
          f"on {r['input_mb']:.0f} MB input")


if __name__ == "__main__":
    main()
