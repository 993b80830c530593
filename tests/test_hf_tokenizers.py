"""HuggingFaceTokenizer and GPT2BPETokenizer (trained here with `tokenizers`), their preprocessing and
training flags, and the tokenizer a converted checkpoint carries for AutoTokenizer."""

from __future__ import annotations

import json
import os
import pickle
import random
import sys

import numpy as np
import pytest

pytest.importorskip("tokenizers")

from megamix.data.indexed import IndexedDataset  # noqa: E402
from megamix.data.preprocess import PreprocessConfig, preprocess  # noqa: E402
from megamix.data.tokenizer import TokenizerConfig, train_sentencepiece  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import train_tokenizer  # noqa: E402

WORDS = ("the court held that a contract def return import numpy theorem proof lemma chapter "
         "river mountain king queen said walked value index matrix sum over all of").split()
SAMPLES = ["the court held that", "  def return(x):\n    import numpy", "Unicode: naïve café 東京 🙂 42",
           "theorem proof\n\nlemma 12345"]


def _docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for i, name in enumerate(("law", "code")):
        (root / name).mkdir()
        with open(root / name / "part.jsonl", "w") as f:
            for doc in _docs(200, i):
                f.write(json.dumps({"text": doc}) + "\n")
    return root


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    dirs = [str(corpus / "law"), str(corpus / "code")]
    for kind, prefix in (("HuggingFaceTokenizer", "hf"), ("GPT2BPETokenizer", "gpt2")):
        assert train_tokenizer.main(["--input-dirs", *dirs, "--tokenizer-type", kind, "--vocab-size", "400",
                                     "--model-prefix", str(out / prefix), "--threads", "1"]) == 0
    return {"hf": TokenizerConfig("HuggingFaceTokenizer", tokenizer_model=str(out / "hf")),
            "gpt2": TokenizerConfig("GPT2BPETokenizer", vocab_file=str(out / "gpt2-vocab.json"),
                                    merge_file=str(out / "gpt2-merges.txt"))}


def test_trained_kinds_agree_and_round_trip(trained):
    hf, gpt2 = trained["hf"].build(), trained["gpt2"].build()
    assert hf.eod == gpt2.eod == 0 and hf.vocab_size == gpt2.vocab_size
    assert 300 < hf.vocab_size <= 400  # 256 bytes + <|endoftext|> + learned merges (the sample caps them)
    for text in SAMPLES + _docs(10, 9):
        ids = hf.encode(text)
        assert ids == gpt2.encode(text) and hf.eod not in ids
        assert hf.decode(ids) == text  # byte level: every character survives
    assert len(hf.encode("the court held that")) < len("the court held that")  # merges were learned
    assert hf.encode_batch(SAMPLES) == [hf.encode(t) for t in SAMPLES]
    assert pickle.loads(pickle.dumps(gpt2)).encode(SAMPLES[1]) == gpt2.encode(SAMPLES[1])


def test_gpt2_bpe_encodes_like_transformers_gpt2_tokenizer(trained):
    from transformers import GPT2Tokenizer

    cfg = trained["gpt2"]
    ref = GPT2Tokenizer(vocab=cfg.vocab_file, merges=cfg.merge_file)
    tok = cfg.build()
    for text in SAMPLES:
        assert len(tok.encode(text)) > 3
        assert tok.encode(text) == ref.encode(text)


def test_preprocess_with_both_kinds_appends_eod(trained, corpus, tmp_path):
    for key, cfg in trained.items():
        prefix = str(tmp_path / key)
        preprocess(PreprocessConfig(inputs=[str(corpus / "law")], output_prefix=prefix, json_keys=("text",),
                                    tokenizer=cfg, append_eod=True, workers=1), log=lambda m: None)
        ds = IndexedDataset(prefix + "_text_document")
        first = _docs(200, 0)[0]
        assert ds[0].tolist() == cfg.build().encode(first) + [0]
        assert len(ds) == 200
    a, b = (np.fromfile(str(tmp_path / f"{k}_text_document.bin"), dtype=np.uint16) for k in ("hf", "gpt2"))
    assert np.array_equal(a, b)


def test_errors_name_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="--tokenizer-model"):
        TokenizerConfig("HuggingFaceTokenizer", tokenizer_model=str(tmp_path / "none")).build()
    with pytest.raises(ValueError, match="--vocab-file"):
        TokenizerConfig("GPT2BPETokenizer", vocab_file="v.json")
    from tokenizers import Tokenizer, models

    Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[])).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="no end-of-document token"):
        TokenizerConfig("HuggingFaceTokenizer", tokenizer_model=str(tmp_path)).build()


def test_training_flags_build_the_vocabulary(trained):
    from megamix.training.arguments import config_from_args, parse_args, tokenizer_config_from_args

    args = parse_args(["--data-path", "x_text_document", "--num-layers", "2", "--hidden-size", "64",
                       "--num-attention-heads", "4", "--seq-length", "32", "--micro-batch-size", "1",
                       "--global-batch-size", "2", "--train-iters", "1", "--lr", "1e-3",
                       "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", trained["hf"].tokenizer_model])
    cfg = config_from_args(args, tokenizer_config_from_args(args))
    vocab = trained["hf"].build().vocab_size
    assert cfg.model.vocab_size == 384 and 256 < vocab < 384  # padded to a multiple of 128
    assert cfg.tokenizer.tokenizer_type == "HuggingFaceTokenizer"


def _auto(cfg: TokenizerConfig, out: str):
    from transformers import AutoTokenizer

    from megamix.interop.hf_tokenizer import save_hf_tokenizer

    os.makedirs(out)
    save_hf_tokenizer(cfg, out)
    return AutoTokenizer.from_pretrained(out)


def test_exported_tokenizers_load_with_autotokenizer_and_encode_alike(trained, tmp_path):
    d = tmp_path / "sp"
    d.mkdir()
    (d / "text.txt").write_text("\n".join(_docs(300, 3)) + "\n", encoding="utf-8")
    sp = TokenizerConfig("SentencePieceTokenizer", train_sentencepiece(str(d / "text.txt"), str(d / "m"), 300))
    for name, cfg in (("sp", sp), *trained.items()):
        ours, auto = cfg.build(), _auto(cfg, str(tmp_path / f"out-{name}"))
        assert auto.eos_token_id == ours.eod, name
        for text in SAMPLES:
            assert auto.encode(text) == ours.encode(text), (name, text)  # no BOS/EOS added, as in training
            assert auto.decode(ours.encode(text)) == ours.decode(ours.encode(text))
