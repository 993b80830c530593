"""Tokenizers: a tiny SentencePiece model trained in a fixture, NullTokenizer, build_tokenizer errors."""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys

import pytest

from megamix.data.tokenizer import NullTokenizer, SentencePieceTokenizer, TokenizerConfig, train_sentencepiece


def build_tokenizer(tokenizer_type, tokenizer_model=None, vocab_size=None):
    """A tokenizer from Megatron's type name and its arguments, through its config."""
    return TokenizerConfig(tokenizer_type, tokenizer_model, vocab_size).build()


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the court held that a contract def return import numpy theorem proof lemma chapter "
         "river mountain king queen said walked value index matrix sum over all of").split()


def make_text(n_lines: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))) for _ in range(n_lines)]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    (d / "text.txt").write_text("\n".join(make_text(600)) + "\n", encoding="utf-8")
    return train_sentencepiece(str(d / "text.txt"), str(d / "tiny"), vocab_size=300, seed=1, threads=1)


def test_sentencepiece_round_trip_and_eod(sp_model):
    tok = build_tokenizer("SentencePieceTokenizer", sp_model)
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.vocab_size == 300 and tok.eod == 2
    for text in make_text(20, seed=5) + ["Unicode: naïve café ∑ 東京 🙂", "digits 12345"]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids) and tok.eod not in ids
        assert tok.decode(ids) == text  # byte fallback covers unseen characters
    texts = make_text(50, seed=7)
    assert tok.encode_batch(texts, num_threads=2) == [tok.encode(t) for t in texts]


def test_sentencepiece_pickles_by_path(sp_model):
    tok = SentencePieceTokenizer(sp_model)
    again = pickle.loads(pickle.dumps(tok))
    assert again.encode("the court held") == tok.encode("the court held")


def test_training_is_deterministic(sp_model, tmp_path):
    src = os.path.join(os.path.dirname(sp_model), "text.txt")
    again = train_sentencepiece(src, str(tmp_path / "again"), vocab_size=300, seed=1, threads=1)
    a, b = SentencePieceTokenizer(again).processor, SentencePieceTokenizer(sp_model).processor
    pieces = lambda sp: [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]  # noqa: E731
    assert pieces(a) == pieces(b)  # the file itself records its own path, so compare the vocabulary
    assert sorted(os.listdir(tmp_path)) == ["again.model", "again.vocab"]


def test_sentencepiece_errors(tmp_path, sp_model):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        SentencePieceTokenizer(str(tmp_path / "nope.model"))
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model: not a valid SentencePiece model"):
        SentencePieceTokenizer(str(bad))
    import sentencepiece as spm
    src = os.path.join(os.path.dirname(sp_model), "text.txt")
    spm.SentencePieceTrainer.train(input=src, model_prefix=str(tmp_path / "noeos"), vocab_size=40,
                                   eos_id=-1, minloglevel=2)
    with pytest.raises(ValueError, match="noeos.model: the model has no EOS id"):
        SentencePieceTokenizer(str(tmp_path / "noeos.model"))


def test_null_tokenizer():
    tok = build_tokenizer("NullTokenizer", vocab_size=100)
    assert isinstance(tok, NullTokenizer)
    assert tok.vocab_size == 101 and tok.eod == 100
    assert tok.encode(" 1 2\n99 ") == [1, 2, 99] and tok.decode([1, 2, 99]) == "1 2 99"
    assert tok.encode_batch(["1", "", "3 4"]) == [[1], [], [3, 4]]
    with pytest.raises(ValueError, match="outside"):
        tok.encode("100")
    with pytest.raises(ValueError, match="integer ids"):
        tok.encode("a b")


def test_build_tokenizer_errors():
    with pytest.raises(ValueError, match="--tokenizer-type: unsupported 'TikTokenizer'"):
        build_tokenizer("TikTokenizer")
    with pytest.raises(ValueError, match="GPT2BPETokenizer needs --vocab-file"):
        build_tokenizer("GPT2BPETokenizer")
    with pytest.raises(ValueError, match="needs --tokenizer-model"):
        build_tokenizer("SentencePieceTokenizer")
    with pytest.raises(ValueError, match="needs --vocab-size"):
        build_tokenizer("NullTokenizer")
    with pytest.raises(ValueError, match="positive integer"):
        build_tokenizer("NullTokenizer", vocab_size=0)


def test_train_tokenizer_tool_balanced_sample(tmp_path):
    for name, n in (("big", 4000), ("small", 300)):
        d = tmp_path / "corpus" / name
        d.mkdir(parents=True)
        with open(d / "part.jsonl", "w") as f:
            for i, text in enumerate(make_text(n, seed=len(name))):
                f.write(json.dumps({"text": f"{name} {text}"}) + "\n")
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_tokenizer.py"), "--input-dirs",
           str(tmp_path / "corpus" / "big"), str(tmp_path / "corpus" / "small"), "--vocab-size", "300",
           "--model-prefix", str(tmp_path / "out" / "tok"), "--sample-mb-per-domain", "0.01",
           "--seed", "3", "--threads", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "big: sampled" in res.stderr and "done:" in res.stderr
    sampled = {line.split(":")[0].rsplit("/", 1)[-1]: float(line.split(",")[1].split()[0])
               for line in res.stderr.splitlines() if "sampled" in line}
    assert 0.01 <= sampled["big"] < 0.012 and 0.01 <= sampled["small"] < 0.012  # balanced, not proportional
    tok = SentencePieceTokenizer(str(tmp_path / "out" / "tok.model"))
    assert tok.eod == 2 and tok.decode(tok.encode("small river")) == "small river"
    assert sorted(os.listdir(tmp_path / "out")) == ["tok.model", "tok.vocab"]
