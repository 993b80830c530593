"""Megatron's HuggingFaceTokenizer and GPT2BPETokenizer, through the ``tokenizers`` library.

``HuggingFaceTokenizer`` reads a local ``tokenizer.json`` (or a directory holding one);
``GPT2BPETokenizer`` builds GPT-2's byte-level BPE from ``vocab.json`` + ``merges.txt``.
Both encode without adding special tokens; the end-of-document id is the tokenizer's EOS
(``eos_token`` of a ``tokenizer_config.json`` beside it, else the first of the usual
end-of-text tokens found in the vocabulary), as Megatron's ``eod``.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from megamix.data.tokenizer import Tokenizer

GPT2_EOD = "<|endoftext|>"
_EOS_CANDIDATES = (GPT2_EOD, "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[SEP]")


def _tokenizer_json(path: str) -> str:
    """The tokenizer.json of ``path`` (a file, or a directory holding one)."""
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--tokenizer-model {path}: no tokenizer.json (give the file or its directory)")
    return path


def _configured_eos(json_path: str) -> str | None:
    """``eos_token`` from a tokenizer_config.json beside ``json_path``, if there is one."""
    cfg_path = os.path.join(os.path.dirname(json_path), "tokenizer_config.json")
    if not os.path.isfile(cfg_path):
        return None
    with open(cfg_path) as f:
        eos = json.load(f).get("eos_token")
    return eos.get("content") if isinstance(eos, dict) else eos


def _find_eos(tok, json_path: str) -> int:
    configured = _configured_eos(json_path)
    for name in ((configured,) if configured else _EOS_CANDIDATES):
        token_id = tok.token_to_id(name)
        if token_id is not None:
            return token_id
    wanted = repr(configured) if configured else f"one of {', '.join(_EOS_CANDIDATES)}"
    raise ValueError(f"--tokenizer-model {json_path}: no end-of-document token in the vocabulary (looked for "
                     f"{wanted}); add one, or give a tokenizer_config.json with eos_token beside it")


class _TokenizersBacked(Tokenizer):
    """Shared encode/decode over a ``tokenizers.Tokenizer`` held in ``self._tok``."""

    _tok = None
    _eod: int = -1

    @property
    def backend(self):
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eod(self) -> int:
        return self._eod

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]


class HuggingFaceTokenizer(_TokenizersBacked):
    """A local Hugging Face ``tokenizer.json`` (or a directory with one); nothing is downloaded."""

    def __init__(self, path: str) -> None:
        self._path = str(path)
        self._load()

    def _load(self) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        json_path = _tokenizer_json(self._path)
        try:
            self._tok = HFTokenizer.from_file(json_path)
        except Exception as exc:  # the Rust side raises plain Exception on a malformed file
            raise ValueError(f"--tokenizer-model {json_path}: not a valid tokenizer.json ({exc})") from None
        self._json_path = json_path
        self._eod = _find_eos(self._tok, json_path)

    @property
    def path(self) -> str:
        """The tokenizer.json file or its directory, as given."""
        return self._path

    def __getstate__(self) -> dict:
        return {"path": self._path}

    def __setstate__(self, state: dict) -> None:
        self._path = state["path"]
        self._load()


def gpt2_bpe(vocab_file: str, merge_file: str):
    """GPT-2's byte-level BPE as a ``tokenizers.Tokenizer`` from its vocab.json and merges.txt."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    for flag, path in (("--vocab-file", vocab_file), ("--merge-file", merge_file)):
        if not path or not os.path.isfile(path):
            raise FileNotFoundError(f"{flag} {path}: file not found (GPT2BPETokenizer needs --vocab-file and "
                                    "--merge-file)")
    try:
        bpe = models.BPE.from_file(vocab_file, merge_file)
    except Exception as exc:
        raise ValueError(f"--vocab-file {vocab_file} / --merge-file {merge_file}: not a GPT-2 BPE pair ({exc})") \
            from None
    tok = HFTokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


class GPT2BPETokenizer(_TokenizersBacked):
    """GPT-2's byte-level BPE (--vocab-file vocab.json, --merge-file merges.txt); eod is <|endoftext|>."""

    def __init__(self, vocab_file: str, merge_file: str) -> None:
        self._files = (str(vocab_file), str(merge_file))
        self._load()

    def _load(self) -> None:
        self._tok = gpt2_bpe(*self._files)
        eod = self._tok.token_to_id(GPT2_EOD)
        if eod is None:
            raise ValueError(f"--vocab-file {self._files[0]}: has no {GPT2_EOD} token, GPT-2's end of document")
        self._eod = eod

    @property
    def files(self) -> tuple[str, str]:
        """(vocab.json, merges.txt)."""
        return self._files

    def __getstate__(self) -> dict:
        return {"files": self._files}

    def __setstate__(self, state: dict) -> None:
        self._files = tuple(state["files"])
        self._load()


def train_byte_level_bpe(text_file: str, vocab_size: int, threads: int = 1):
    """A GPT-2-style byte-level BPE trained on a text file, with ``<|endoftext|>`` as id 0 (the eod)."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError(f"--vocab-size {vocab_size}: byte-level BPE needs at least 257 (256 bytes + {GPT2_EOD})")
    os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, threads)))
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[GPT2_EOD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([text_file], trainer)
    return tok


def save_trained(tok, tokenizer_type: str, prefix: str) -> list[str]:
    """Write a trained byte-level BPE as ``tokenizer_type`` expects it; returns the files written.

    HuggingFaceTokenizer: ``<prefix>/tokenizer.json`` + ``tokenizer_config.json`` (eos_token);
    GPT2BPETokenizer: ``<prefix>-vocab.json`` + ``<prefix>-merges.txt``.
    """
    from megamix.fileio import atomic_write_text

    if tokenizer_type == "HuggingFaceTokenizer":
        os.makedirs(prefix, exist_ok=True)
        paths = [os.path.join(prefix, "tokenizer.json"), os.path.join(prefix, "tokenizer_config.json")]
        atomic_write_text(paths[0], tok.to_str(pretty=True))
        atomic_write_text(paths[1], json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": GPT2_EOD,
                                                "bos_token": GPT2_EOD, "model_max_length": 1 << 30}, indent=1))
        return paths
    if tokenizer_type != "GPT2BPETokenizer":
        raise ValueError(f"--tokenizer-type {tokenizer_type}: byte-level BPE saves as HuggingFaceTokenizer or "
                         "GPT2BPETokenizer")
    vocab, merges = json.loads(tok.to_str())["model"]["vocab"], json.loads(tok.to_str())["model"]["merges"]
    paths = [f"{prefix}-vocab.json", f"{prefix}-merges.txt"]
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    atomic_write_text(paths[0], json.dumps(vocab, ensure_ascii=False))
    lines = [m if isinstance(m, str) else " ".join(m) for m in merges]
    atomic_write_text(paths[1], "#version: 0.2\n" + "\n".join(lines) + "\n")
    return paths
