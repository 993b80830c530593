"""Tokenizers with Megatron's type names: SentencePieceTokenizer, HuggingFaceTokenizer, GPT2BPETokenizer
and NullTokenizer (the two in the middle live in ``hf_tokenizers.py``)."""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from typing import Sequence

TOKENIZER_TYPES = ("SentencePieceTokenizer", "HuggingFaceTokenizer", "GPT2BPETokenizer", "NullTokenizer")


class Tokenizer(abc.ABC):
    """Text <-> token ids, with an end-of-document id appended between documents."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids (every id is in ``[0, vocab_size)``)."""

    @property
    @abc.abstractmethod
    def eod(self) -> int:
        """Id appended at the end of each document."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of one text."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of a sequence of token ids."""

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        """Token ids of each text, in order."""
        return [self.encode(t) for t in texts]


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; the end-of-document id is the model's EOS id."""

    def __init__(self, model_path: str) -> None:
        self._model_path = str(model_path)
        self._load()

    def _load(self) -> None:
        import sentencepiece as spm

        path = self._model_path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--tokenizer-model {path}: SentencePiece model file not found")
        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(path)
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"--tokenizer-model {path}: not a valid SentencePiece model ({exc})") from exc
        if sp.eos_id() < 0:
            raise ValueError(f"--tokenizer-model {path}: the model has no EOS id; train it with an EOS "
                             f"piece (e.g. tools/train_tokenizer.py) so documents can be separated")
        self._sp = sp

    def __getstate__(self) -> dict:
        return {"model_path": self._model_path}

    def __setstate__(self, state: dict) -> None:
        self._model_path = state["model_path"]
        self._load()

    @property
    def model_path(self) -> str:
        """Path of the .model file."""
        return self._model_path

    @property
    def processor(self):
        """The underlying ``sentencepiece.SentencePieceProcessor``."""
        return self._sp

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def eod(self) -> int:
        return self._sp.eos_id()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return self._sp.encode(list(texts), num_threads=num_threads)


class NullTokenizer(Tokenizer):
    """Test tokenizer: text is whitespace-separated integer ids; eod is ``vocab_size`` (one extra id)."""

    def __init__(self, vocab_size: int) -> None:
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"--vocab-size for NullTokenizer must be a positive integer, got {vocab_size!r}")
        self._size = vocab_size

    @property
    def vocab_size(self) -> int:
        return self._size + 1

    @property
    def eod(self) -> int:
        return self._size

    def encode(self, text: str) -> list[int]:
        try:
            ids = [int(tok) for tok in text.split()]
        except ValueError as exc:
            raise ValueError(f"NullTokenizer expects whitespace-separated integer ids: {exc}") from None
        for i in ids:
            if not 0 <= i < self._size:
                raise ValueError(f"NullTokenizer: id {i} outside [0, {self._size})")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(str(int(i)) for i in ids)


@dataclass
class TokenizerConfig:
    """Which tokenizer to build (--tokenizer-type, --tokenizer-model, --vocab-size, --vocab-file, --merge-file)."""

    tokenizer_type: str = "SentencePieceTokenizer"
    """Megatron type name: one of TOKENIZER_TYPES."""
    tokenizer_model: str | None = None
    """SentencePiece .model file, or a tokenizer.json / its directory (HuggingFaceTokenizer)."""
    vocab_size: int | None = None
    """Vocabulary size without the eod id (NullTokenizer)."""
    vocab_file: str | None = None
    """GPT-2 BPE vocab.json (GPT2BPETokenizer)."""
    merge_file: str | None = None
    """GPT-2 BPE merges.txt (GPT2BPETokenizer)."""

    def __post_init__(self) -> None:
        if self.tokenizer_type not in TOKENIZER_TYPES:
            raise ValueError(f"--tokenizer-type: unsupported {self.tokenizer_type!r}; "
                             f"expected one of {', '.join(TOKENIZER_TYPES)}")
        if self.tokenizer_type in ("SentencePieceTokenizer", "HuggingFaceTokenizer") and not self.tokenizer_model:
            raise ValueError(f"--tokenizer-type {self.tokenizer_type} needs --tokenizer-model PATH")
        if self.tokenizer_type == "GPT2BPETokenizer" and not (self.vocab_file and self.merge_file):
            raise ValueError("--tokenizer-type GPT2BPETokenizer needs --vocab-file vocab.json and "
                             "--merge-file merges.txt")
        if self.tokenizer_type == "NullTokenizer" and self.vocab_size is None:
            raise ValueError("--tokenizer-type NullTokenizer needs --vocab-size N")

    def build(self) -> Tokenizer:
        """Construct the tokenizer."""
        if self.tokenizer_type == "SentencePieceTokenizer":
            return SentencePieceTokenizer(self.tokenizer_model)
        if self.tokenizer_type == "HuggingFaceTokenizer":
            from megamix.data.hf_tokenizers import HuggingFaceTokenizer

            return HuggingFaceTokenizer(self.tokenizer_model)
        if self.tokenizer_type == "GPT2BPETokenizer":
            from megamix.data.hf_tokenizers import GPT2BPETokenizer

            return GPT2BPETokenizer(self.vocab_file, self.merge_file)
        return NullTokenizer(self.vocab_size)


def train_sentencepiece(text_file: str, model_prefix: str, vocab_size: int, seed: int = 1234,
                        threads: int = 1, max_sentence_length: int = 16384) -> str:
    """Train a byte-fallback BPE SentencePiece model (unk 0, bos 1, eos 2) on a one-sentence-per-line
    file; writes ``<model_prefix>.model`` and ``.vocab`` atomically and returns the .model path."""
    import sentencepiece as spm

    if vocab_size < 260:
        raise ValueError(f"--vocab-size {vocab_size}: byte fallback needs at least 260 (256 bytes + specials)")
    out_dir = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(out_dir, exist_ok=True)
    tmp_prefix = os.path.join(out_dir, f".{os.path.basename(model_prefix)}.tmp-{os.getpid()}")
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            input=text_file, model_prefix=tmp_prefix, vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, character_coverage=0.9995, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            num_threads=threads, max_sentence_length=max_sentence_length, split_digits=True,
            shuffle_input_sentence=True, hard_vocab_limit=False, minloglevel=2)
        for ext in (".vocab", ".model"):
            os.replace(tmp_prefix + ext, model_prefix + ext)
    finally:
        for ext in (".vocab", ".model"):
            if os.path.exists(tmp_prefix + ext):
                os.unlink(tmp_prefix + ext)
    return model_prefix + ".model"
