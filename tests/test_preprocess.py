"""tools/preprocess_data.py and tools/merge_datasets.py: determinism across workers, bad input, atomicity."""

from __future__ import annotations

import glob
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from megamix.data.indexed import IndexedDataset
from megamix.data.preprocess import PreprocessConfig, PreprocessError, preprocess
from megamix.data.tokenizer import SentencePieceTokenizer, TokenizerConfig, train_sentencepiece

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
WORDS = "alpha beta gamma delta court ruling def class return lemma proof river stone king said".split()


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def write_jsonl(path, records, gz=False) -> str:
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    (d / "t.txt").write_text("\n".join(texts(500, seed=9)) + "\n")
    return train_sentencepiece(str(d / "t.txt"), str(d / "tok"), vocab_size=300, seed=1, threads=1)


def run_tool(*args, check=True):
    res = subprocess.run([sys.executable, os.path.join(TOOLS, "preprocess_data.py"), *map(str, args)],
                         capture_output=True, text=True, timeout=300)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def outputs(tmp_path):
    return sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "**" / "*.*"), recursive=True)
                  if p.endswith((".bin", ".idx")) or ".tmp-" in p)


def test_workers_give_byte_identical_output(tmp_path, sp_model):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts(3000)])
    for w in (1, 2):
        res = run_tool("--input", src, "--output-prefix", tmp_path / f"w{w}", "--tokenizer-type",
                       "SentencePieceTokenizer", "--tokenizer-model", sp_model, "--workers", w,
                       "--append-eod", "--log-interval", 1000)
        assert "docs/s" in res.stderr and "MB/s" in res.stderr and "tokens/s" in res.stderr
        assert "done: 3000 documents" in res.stderr
    for ext in (".bin", ".idx"):
        a = (tmp_path / f"w1_text_document{ext}").read_bytes()
        assert a == (tmp_path / f"w2_text_document{ext}").read_bytes()
    ds = IndexedDataset(str(tmp_path / "w2_text_document"))
    tok = SentencePieceTokenizer(sp_model)
    assert len(ds) == 3000 and ds.dtype == np.uint16
    for i in (0, 1234, 2999):
        assert ds[i].tolist() == tok.encode(texts(3000)[i]) + [tok.eod]


def _config(tmp_path, inputs, **kw):
    kw.setdefault("tokenizer", TokenizerConfig("NullTokenizer", vocab_size=1000))
    return PreprocessConfig(inputs=[str(i) for i in inputs], output_prefix=str(tmp_path / "out" / "d"), **kw)


BAD = {
    "malformed JSON": b'{"text": "1 2"\n',
    "missing key": b'{"other": "1 2"}\n',
    "non-string value": b'{"text": 12}\n',
    "invalid UTF-8": b'{"text": "1 \xff 2"}\n',
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_input_names_file_and_line_and_leaves_nothing(tmp_path, kind):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "1 2"}\n{"text": "3"}\n' + BAD[kind] + b'{"text": "4"}\n')
    with pytest.raises(PreprocessError, match=f"in.jsonl:3: {kind}"):
        preprocess(_config(tmp_path, [src], workers=1, chunk_bytes=20))
    assert outputs(tmp_path) == []
    res = run_tool("--input", src, "--output-prefix", tmp_path / "out" / "d", "--tokenizer-type",
                   "NullTokenizer", "--vocab-size", 1000, "--workers", 2, check=False)
    assert res.returncode != 0 and f"in.jsonl:3: {kind}" in res.stderr
    assert outputs(tmp_path) == []


def test_skip_invalid_counts_kinds_and_empty_docs(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join([b'{"text": "1 2"}\n', *BAD.values(), BAD["missing key"], b'{"text": ""}\n',
                              b'{"text": "  "}\n', b"\n", b'{"text": "7 8 9"}\n']))
    stats = preprocess(_config(tmp_path, [src], skip_invalid=True, append_eod=True, chunk_bytes=30))
    assert stats.skipped == {"malformed JSON": 1, "missing key": 2, "non-string value": 1, "invalid UTF-8": 1}
    assert stats.empty == {"text": 2} and stats.written == {"text": 2} and stats.documents == 9
    ds = IndexedDataset(str(tmp_path / "out" / "d_text_document"))
    assert [d.tolist() for d in ds[:]] == [[1, 2, 1000], [7, 8, 9, 1000]]
    res = run_tool("--input", src, "--output-prefix", tmp_path / "o2", "--tokenizer-type", "NullTokenizer",
                   "--vocab-size", 1000, "--skip-invalid")
    assert "skipped: malformed JSON 1, missing key 2, non-string value 1, invalid UTF-8 1" in res.stderr
    assert "empty dropped 2" in res.stderr


def test_append_eod_multiple_keys_gz_and_directory(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    write_jsonl(d / "b.jsonl.gz", [{"text": "3 4", "title": "9"}], gz=True)
    write_jsonl(d / "a.jsonl", [{"text": "1 2", "title": "8"}])
    (d / "ignored.txt").write_text("not jsonl")
    stats = preprocess(_config(tmp_path, [d], json_keys=("text", "title")))
    assert stats.written == {"text": 2, "title": 2}
    text = IndexedDataset(str(tmp_path / "out" / "d_text_document"))
    title = IndexedDataset(str(tmp_path / "out" / "d_title_document"))
    assert [x.tolist() for x in text[:]] == [[1, 2], [3, 4]]  # sorted file order, no eod
    assert [x.tolist() for x in title[:]] == [[8], [9]]
    preprocess(_config(tmp_path, [str(d / "*.jsonl*")], append_eod=True))  # a glob
    assert [x.tolist() for x in IndexedDataset(str(tmp_path / "out" / "d_text_document"))[:]] == \
        [[1, 2, 1000], [3, 4, 1000]]
    with pytest.raises(FileNotFoundError, match="no .jsonl"):
        preprocess(_config(tmp_path, [tmp_path / "nothing*"]))


def test_tokenizer_error_names_file(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "1 2"}, {"text": "5000"}])
    with pytest.raises(PreprocessError, match="in.jsonl:1-2: tokenizer error"):
        preprocess(_config(tmp_path, [src]))
    assert outputs(tmp_path) == []


@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    src = tmp_path_factory.mktemp("big") / "big.jsonl"
    line = '{"text": "' + " ".join(map(str, np.random.default_rng(0).integers(0, 1000, 1000))) + '"}\n'
    src.write_text(line * 20000)  # ~80 MB: many seconds of work
    return src


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_run_leaves_no_output(tmp_path, big_input, sig):
    src = big_input
    cmd = [sys.executable, os.path.join(TOOLS, "preprocess_data.py"), "--input", str(src), "--output-prefix",
           str(tmp_path / "out" / "d"), "--tokenizer-type", "NullTokenizer", "--vocab-size", "1000",
           "--workers", "2", "--log-interval", "1000"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()  # first progress line: the run is under way
    assert "processed" in line, line + proc.stderr.read()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (143 if sig == signal.SIGTERM else 130), err
    assert outputs(tmp_path) == []


def test_merge_tool(tmp_path):
    shards = tmp_path / "shards"
    for name, recs in (("b", ["3", "4 5"]), ("a", ["1 2"]), ("c", ["6"])):
        preprocess(PreprocessConfig(inputs=[write_jsonl(tmp_path / f"{name}.jsonl", [{"text": r} for r in recs])],
                                    output_prefix=str(shards / name),
                                    tokenizer=TokenizerConfig("NullTokenizer", vocab_size=10)))
    res = subprocess.run([sys.executable, os.path.join(TOOLS, "merge_datasets.py"), "--input", str(shards),
                          "--output-prefix", str(tmp_path / "merged")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    ds = IndexedDataset(str(tmp_path / "merged"))
    assert [x.tolist() for x in ds[:]] == [[1, 2], [3], [4, 5], [6]]
    assert ds.document_indices.tolist() == [0, 1, 2, 3, 4]
    res = subprocess.run([sys.executable, os.path.join(TOOLS, "merge_datasets.py"), "--input",
                          str(tmp_path / "none"), "--output-prefix", str(tmp_path / "m2")],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "not a directory" in res.stderr
