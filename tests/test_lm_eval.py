"""lm-eval runs a local task (a YAML over a local jsonl) offline on a converted tiny model, and its
bits-per-byte is the converted model's own log-likelihood.

lm-eval is not a megamix dependency (it brings ~480 MB: datasets, pyarrow, pandas, scikit-learn,
nltk, accelerate), so this test is skipped where ``lm_eval`` is not installed.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "the court held that a contract def return import numpy theorem proof lemma chapter river".split()

TASK = """task: megamix_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
"""


def _tiny_model_with_tokenizer(tmp_path):
    """A random megamix GPT and a byte-level BPE trained here, exported together."""
    from megamix.data.tokenizer import TokenizerConfig
    from megamix.interop.export import save_hf_model
    from megamix.interop.hf_tokenizer import save_hf_tokenizer
    from megamix.model.gpt import GPT, GPTConfig

    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25))) for _ in range(200)]
    (tmp_path / "corpus").mkdir()
    with open(tmp_path / "corpus" / "p.jsonl", "w") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import train_tokenizer

    assert train_tokenizer.main(["--input-dirs", str(tmp_path / "corpus"), "--tokenizer-type",
                                 "HuggingFaceTokenizer", "--vocab-size", "300", "--model-prefix",
                                 str(tmp_path / "tok"), "--threads", "1"]) == 0
    cfg = TokenizerConfig("HuggingFaceTokenizer", str(tmp_path / "tok"))
    tok = cfg.build()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=384, num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=128,
                          fused_kernels="none", init_method_std=0.05)).eval()
    save_hf_model(model.state_dict(), model.config, str(tmp_path / "hf"), tok.eod, tok.eod)
    save_hf_tokenizer(cfg, str(tmp_path / "hf"))
    return model, tok, docs[:8]


@pytest.mark.slow
def test_lm_eval_local_task_offline_on_a_converted_model(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval", reason="lm-eval is optional (pip install lm-eval)")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok, docs = _tiny_model_with_tokenizer(tmp_path)
    with open(tmp_path / "docs.jsonl", "w") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "megamix_local.yaml").write_text(TASK.format(docs=tmp_path / "docs.jsonl"))
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    res = simple_evaluate(model="hf", model_args=f"pretrained={tmp_path / 'hf'},dtype=float32",
                          tasks=["megamix_local"], task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
                          device="cpu", batch_size=4)
    bpb = res["results"]["megamix_local"]["bits_per_byte,none"]
    # the same quantity from megamix's model: every token predicted after the end-of-text token
    nll, nbytes = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            ids = torch.tensor([[tok.eod] + tok.encode(doc)])
            nll += float(model(ids[:, :-1], ids[:, 1:]).sum())
            nbytes += len(doc.encode("utf-8"))
    assert bpb == pytest.approx(nll / nbytes / math.log(2), rel=1e-4)
