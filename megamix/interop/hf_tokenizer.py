"""Write a megamix run's tokenizer in the form ``transformers.AutoTokenizer`` loads, offline.

* SentencePieceTokenizer: the .model converted to a ``tokenizers`` BPE that follows the
  model's own normaliser settings (``transformers``' SentencePiece converter, legacy
  prefixing, which matches ``SentencePieceProcessor.encode``).
* HuggingFaceTokenizer: its tokenizer.json (and config files) copied as they are.
* GPT2BPETokenizer: the byte-level BPE built from vocab.json + merges.txt.
* NullTokenizer: ids are the text; there is nothing to write (the model still loads).

No special token is added when encoding, as in training; the end-of-document id is eos.
"""

from __future__ import annotations

import os
import shutil

from megamix.data.tokenizer import Tokenizer, TokenizerConfig

_COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _sentencepiece_backend(model_path: str):
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    with open(model_path, "rb") as f:
        proto.ParseFromString(f.read())
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    return SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)


def _save_fast(backend, tok: Tokenizer, out_dir: str, **special) -> None:
    from transformers import PreTrainedTokenizerFast

    eos = backend.id_to_token(tok.eod)
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, model_max_length=1 << 30, **special)
    fast.save_pretrained(out_dir)


def _copy_hf_files(path: str, out_dir: str) -> None:
    src_dir = path if os.path.isdir(path) else os.path.dirname(path)
    if not os.path.isdir(path):
        shutil.copyfile(path, os.path.join(out_dir, "tokenizer.json"))
    for name in _COPIED:
        src = os.path.join(src_dir, name)
        if os.path.isfile(src) and not os.path.exists(os.path.join(out_dir, name)):
            shutil.copyfile(src, os.path.join(out_dir, name))


def save_hf_tokenizer(cfg: TokenizerConfig, out_dir: str) -> str:
    """Write the tokenizer of ``cfg`` into ``out_dir``; return one line saying what was written."""
    kind = cfg.tokenizer_type
    if kind == "NullTokenizer":
        return "NullTokenizer: no tokenizer files (token ids are the text); AutoTokenizer will not load one"
    tok = cfg.build()
    if kind == "HuggingFaceTokenizer":
        _copy_hf_files(cfg.tokenizer_model, out_dir)
        if not os.path.isfile(os.path.join(out_dir, "tokenizer_config.json")):
            _save_fast(tok.backend, tok, out_dir)
        return f"HuggingFaceTokenizer: copied {cfg.tokenizer_model}"
    if kind == "GPT2BPETokenizer":
        _save_fast(tok.backend, tok, out_dir, bos_token=tok.backend.id_to_token(tok.eod))
        return f"GPT2BPETokenizer: byte-level BPE from {cfg.vocab_file} + {cfg.merge_file}"
    backend = _sentencepiece_backend(cfg.tokenizer_model)
    sp = tok.processor
    special = {name: sp.id_to_piece(i) for name, i in (("bos_token", sp.bos_id()), ("unk_token", sp.unk_id()))
               if i >= 0}
    _save_fast(backend, tok, out_dir, **special)
    return f"SentencePieceTokenizer: converted {cfg.tokenizer_model}"
