"""megamix GPT <-> Hugging Face LlamaForCausalLM: logits, generate, round trip, refusals (fp32, CPU)."""

from __future__ import annotations

import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from megamix.interop.export import init_from_hf, save_hf_model  # noqa: E402
from megamix.interop.hf import HFMappingError, check_exportable  # noqa: E402
from megamix.model.gpt import GPT, GPTConfig  # noqa: E402

# fp32 on CPU: the two implementations differ only in summation order (SDPA vs eager attention).
ATOL = 1e-5


def _gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=256, num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=32,
               fused_kernels="none", init_method_std=0.1)
    cfg.update(kw)
    model = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():  # non-trivial norm weights and biases, so a swapped tensor shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _export(model: GPT, out) -> "transformers.PreTrainedModel":
    save_hf_model(model.state_dict(), model.config, str(out), bos_token_id=1, eos_token_id=2)
    return transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()


@pytest.mark.parametrize("kw", [{}, {"untie_embeddings_and_output_weights": True},
                                {"add_bias_linear": True, "rotary_base": 500, "norm_epsilon": 1e-6,
                                 "ffn_hidden_size": 96}])
def test_logits_of_converted_model_match(tmp_path, kw):
    model = _gpt(**kw)
    hf = _export(model, tmp_path / "hf")
    assert type(hf).__name__ == "LlamaForCausalLM"
    tokens = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert ours.shape == theirs.shape == (3, 32, 256)
    assert ours.abs().max() > 1.0  # the comparison is not between two near-zero tensors
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)
    with open(tmp_path / "hf" / "config.json") as f:
        config = json.load(f)
    assert config["tie_word_embeddings"] == (not kw.get("untie_embeddings_and_output_weights", False))


def test_generate_matches_greedy_decoding(tmp_path):
    model = _gpt()
    hf = _export(model, tmp_path / "hf")
    prompt = torch.tensor([[5, 17, 42, 9]])
    out = hf.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    tokens = prompt
    with torch.no_grad():
        for _ in range(8):
            tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert out.tolist() == tokens.tolist()


@pytest.mark.parametrize("kw", [{}, {"untie_embeddings_and_output_weights": True}])
def test_round_trip_gives_identical_weights_and_losses(tmp_path, kw):
    model = _gpt(**kw)
    save_hf_model(model.state_dict(), model.config, str(tmp_path / "hf"))
    back = _gpt(seed=99, **kw)  # different initial weights, overwritten by the import
    init_from_hf(back, str(tmp_path / "hf"))
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    tokens = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(tokens[:, :-1], tokens[:, 1:]), back(tokens[:, :-1], tokens[:, 1:]))
    if not kw:
        assert back.output_layer.weight is back.word_embeddings.weight


@pytest.mark.parametrize("kw, flag", [({"position_embedding_type": "learned_absolute"}, "--position-embedding-type"),
                                      ({"activation": "gelu"}, "--gelu"),
                                      ({"normalization": "LayerNorm"}, "--normalization LayerNorm")])
def test_variants_without_llama_counterpart_are_refused(tmp_path, kw, flag):
    model = _gpt(**kw)
    with pytest.raises(HFMappingError, match=flag):
        check_exportable(model.config)
    with pytest.raises(HFMappingError, match=flag):
        save_hf_model(model.state_dict(), model.config, str(tmp_path / "hf"))
    assert not os.path.exists(tmp_path / "hf" / "model.safetensors")


def test_import_refuses_other_shapes_naming_flag_and_tensor(tmp_path):
    save_hf_model(_gpt().state_dict(), _gpt().config, str(tmp_path / "hf"))
    with pytest.raises(HFMappingError, match=r"--num-layers is 3 here but the HF model has 2"):
        init_from_hf(_gpt(num_layers=3), str(tmp_path / "hf"))
    with pytest.raises(HFMappingError, match=r"--hidden-size is 128 here but the HF model has 64"):
        init_from_hf(_gpt(hidden_size=128), str(tmp_path / "hf"))
    # a tensor of the wrong shape inside an otherwise matching checkpoint
    from safetensors.torch import load_file, save_file

    path = tmp_path / "hf" / "model.safetensors"
    state = load_file(str(path))
    state["model.layers.1.mlp.down_proj.weight"] = torch.zeros(64, 100)
    save_file(state, str(path), metadata={"format": "pt"})
    with pytest.raises(HFMappingError, match=r"layers\.1\.mlp\.fc2\.weight has shape \(64, 100\).*\(64, 192\)"):
        init_from_hf(_gpt(), str(tmp_path / "hf"))


def test_load_hf_flag_needs_a_model_directory(tmp_path):
    from megamix.training.config import TrainingConfig

    with pytest.raises(ValueError, match=r"--load-hf .*no config.json"):
        TrainingConfig(load_hf=str(tmp_path))
