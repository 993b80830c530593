"""GPT model: per-token losses, causality, tying, Megatron init, RoPE, variants, overfitting, config errors."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from megamix.model.gpt import GPT, GPTConfig, default_ffn_hidden_size
from megamix.model.rope import RotaryEmbedding, rotary_tables

V, S = 97, 16


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=V, num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=S)
    return GPTConfig(**{**base, **kw})


def build(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny(**kw))


def batch(seed: int = 1, b: int = 2, s: int = S) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, V, (b, s + 1), generator=g)
    return seq[:, :-1], seq[:, 1:]


# --- losses -------------------------------------------------------------------------------------

def test_per_token_losses_match_cross_entropy_over_logits():
    model = build()
    tokens, labels = batch()
    losses = model(tokens, labels)
    assert losses.shape == (2, S) and losses.dtype == torch.float32
    logits = model(tokens)
    assert logits.shape == (2, S, V)
    ref = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), reduction="none").view(2, S)
    torch.testing.assert_close(losses, ref)
    assert abs(losses.mean().item() - math.log(V)) < 0.5  # small init -> near-uniform predictions


def test_ignored_labels_give_zero_loss():
    model = build()
    tokens, labels = batch()
    labels = labels.clone()
    labels[0, :5] = -100
    losses = model(tokens, labels)
    assert torch.all(losses[0, :5] == 0) and torch.all(losses[0, 5:] > 0)


def test_losses_are_float32_under_bf16_params_and_autocast():
    model = build()
    tokens, labels = batch()
    ref = model(tokens, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = model(tokens, labels)
    assert auto.dtype == torch.float32
    model.bfloat16()
    half = model(tokens, labels)
    assert half.dtype == torch.float32
    assert (half - ref).abs().max() < 0.1 and (auto - ref).abs().max() < 0.1


def test_too_long_input_names_seq_length():
    model = build()
    with pytest.raises(ValueError, match="--seq-length 16"):
        model(torch.zeros(1, S + 1, dtype=torch.long))


# --- causality ----------------------------------------------------------------------------------

@pytest.mark.parametrize("pos", ["rope", "learned_absolute"])
def test_changing_token_t_never_changes_earlier_outputs(pos):
    model = build(position_embedding_type=pos).eval()
    tokens, _ = batch()
    base = model(tokens)
    for t in (0, 5, S - 1):
        changed = tokens.clone()
        changed[:, t] = (changed[:, t] + 1) % V
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert (out[:, t] - base[:, t]).abs().max() > 1e-4  # position t itself does see the change


# --- tying and parameter counts -----------------------------------------------------------------

def test_tied_embedding_is_one_parameter():
    model = build()
    assert model.output_layer.weight is model.word_embeddings.weight
    params = list(model.parameters())
    assert sum(p is model.word_embeddings.weight for p in params) == 1
    tokens, labels = batch()
    model(tokens, labels).mean().backward()
    assert model.word_embeddings.weight.grad is not None


def test_untied_embedding_is_two_parameters():
    tied, untied = build(), build(untie_embeddings_and_output_weights=True)
    assert untied.output_layer.weight is not untied.word_embeddings.weight
    assert untied.num_parameters() - tied.num_parameters() == V * 64
    assert untied.num_parameters(exclude_embeddings=True) == tied.num_parameters(exclude_embeddings=True)


def test_parameter_count_and_flops_by_hand():
    cfg = tiny()
    model = GPT(cfg)
    h, f, L = 64, cfg.ffn_hidden_size, 2
    per_layer = 3 * h * h + h * h + h * 2 * f + f * h + 2 * h  # qkv, dense, fc1 (gate+up), fc2, two norms
    non_embedding = L * per_layer + h  # + final norm
    assert model.num_parameters(exclude_embeddings=True) == non_embedding
    assert model.num_parameters() == non_embedding + V * h
    assert model.flops_per_token() == 6 * (non_embedding + V * h) + 12 * L * h * S
    learned = build(position_embedding_type="learned_absolute")
    assert learned.num_parameters() == non_embedding + V * h + S * h
    assert learned.num_parameters(exclude_embeddings=True) == non_embedding


def test_default_ffn_sizes():
    assert default_ffn_hidden_size(64, "swiglu") == 192  # int(170.67)=170 -> 192
    assert default_ffn_hidden_size(768, "swiglu") == 2048
    assert default_ffn_hidden_size(4096, "swiglu") == 10944  # 10922 rounded up to 64 (LLaMA rounds to 256)
    assert default_ffn_hidden_size(64, "gelu") == 256
    assert tiny(ffn_hidden_size=100).ffn_hidden_size == 100


# --- initialisation -----------------------------------------------------------------------------

def test_megatron_init_std_and_scaled_output_projections():
    torch.manual_seed(0)
    layers, std = 4, 0.02
    model = GPT(GPTConfig(vocab_size=512, num_layers=layers, hidden_size=128, num_attention_heads=4,
                          seq_length=S, add_bias_linear=True, normalization="LayerNorm",
                          untie_embeddings_and_output_weights=True))
    scaled = std / math.sqrt(2 * layers)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            expect = 1.0 if "norm" in name else None
            if expect is None:
                assert torch.all(p == 0), name
            continue
        if "norm" in name:
            assert torch.all(p == 1), name
            continue
        want = scaled if name.endswith(("attn.dense.weight", "mlp.fc2.weight")) else std
        assert abs(p.std().item() - want) / want < 0.05, (name, p.std().item(), want)
        assert abs(p.mean().item()) < 0.1 * want, name
    assert torch.all(model.final_norm.bias == 0)


def test_init_is_seeded():
    a, b, c = build(seed=3), build(seed=3), build(seed=4)
    for (_, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.layers[0].attn.qkv.weight, c.layers[0].attn.qkv.weight)


# --- RoPE ---------------------------------------------------------------------------------------

def test_rope_matches_complex_rotation_reference():
    d, n, base = 8, 12, 10000.0
    rope = RotaryEmbedding(d, n, base)
    x = torch.randn(1, 1, n, d, generator=torch.Generator().manual_seed(0))
    q, _ = rope(x, x)
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2:].double())
    z = z * torch.exp(1j * torch.arange(n, dtype=torch.float64)[:, None] * theta)
    ref = torch.cat([z.real, z.imag], dim=-1).float()
    torch.testing.assert_close(q, ref, rtol=1e-5, atol=1e-5)


def test_rope_dot_product_depends_only_on_offset():
    d, n = 16, 20
    rope = RotaryEmbedding(d, n, 10000.0)
    g = torch.Generator().manual_seed(1)
    q0, k0 = torch.randn(d, generator=g), torch.randn(d, generator=g)
    q, k = rope(q0.expand(1, 1, n, d), k0.expand(1, 1, n, d))
    scores = (q[0, 0] @ k[0, 0].T).double()  # scores[m, n] = <R_m q0, R_n k0>
    for offset in (-7, -1, 0, 3, 11):
        diag = torch.diagonal(scores, offset=offset)
        assert diag.max() - diag.min() < 1e-4, offset
    assert (torch.diagonal(scores, 0)[0] - torch.diagonal(scores, 5)[0]).abs() > 1e-3  # not constant overall


def test_rope_tables_stay_float32_after_bf16_cast():
    rope = RotaryEmbedding(8, 64, 10000.0)
    cos = rope.cos.clone()
    rope.bfloat16()
    assert rope.cos.dtype == torch.float32 and torch.equal(rope.cos, cos)
    assert "cos" not in rope.state_dict()  # non-persistent
    ref_cos, ref_sin = rotary_tables(8, 64, 10000.0)
    assert torch.equal(rope.sin, ref_sin) and torch.equal(rope.cos, ref_cos)


def _train(model: nn.Module, steps: int, lr: float, tokens: torch.Tensor, labels: torch.Tensor,
           stop_below: float = 0.0) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    history = []
    for _ in range(steps):
        loss = model(tokens, labels).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(loss.item())
        if history[-1] < stop_below:
            break
    return history


@pytest.mark.parametrize("pos", ["rope", "learned_absolute"])
def test_rope_and_learned_positions_both_train(pos):
    model = build(position_embedding_type=pos)
    tokens, labels = batch(b=4)
    history = _train(model, 40, 3e-3, tokens, labels)
    assert history[-1] < 0.6 * history[0], (pos, history[0], history[-1])


# --- variants -----------------------------------------------------------------------------------

@pytest.mark.parametrize("activation,normalization,bias", [
    ("swiglu", "RMSNorm", False), ("gelu", "LayerNorm", True), ("gelu", "RMSNorm", False),
    ("swiglu", "LayerNorm", True)])
def test_variants_forward_and_backward(activation, normalization, bias):
    model = build(activation=activation, normalization=normalization, add_bias_linear=bias,
                  hidden_dropout=0.1, attention_dropout=0.1)
    norm_type = nn.RMSNorm if normalization == "RMSNorm" else nn.LayerNorm
    assert isinstance(model.final_norm, norm_type) and isinstance(model.layers[0].norm1, norm_type)
    assert model.layers[0].mlp.fc1.out_features == (2 if activation == "swiglu" else 1) * model.config.ffn_hidden_size
    assert (model.layers[0].attn.qkv.bias is not None) == bias
    tokens, labels = batch()
    model(tokens, labels).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    model.eval()
    torch.testing.assert_close(model(tokens), model(tokens))  # dropout off in eval


def test_overfits_a_tiny_batch():
    model = build(seed=0)
    tokens, labels = batch(seed=2, b=4)
    history = _train(model, 300, 3e-3, tokens, labels, stop_below=0.5)
    assert history[-1] < 0.5, history[::30]


# --- config validation --------------------------------------------------------------------------

@pytest.mark.parametrize("kw,flag", [
    (dict(hidden_size=60, num_attention_heads=8), "--num-attention-heads"),
    (dict(num_layers=0), "--num-layers"),
    (dict(vocab_size=-1), "--vocab-size"),
    (dict(seq_length=0), "--seq-length"),
    (dict(ffn_hidden_size=0), "--ffn-hidden-size"),
    (dict(position_embedding_type="alibi"), "--position-embedding-type"),
    (dict(activation="relu"), "--swiglu/--gelu"),
    (dict(normalization="rmsnorm"), "--normalization"),
    (dict(fused_kernels="yes"), "--fused-kernels"),
    (dict(init_method_std=0.0), "--init-method-std"),
    (dict(norm_epsilon=-1.0), "--norm-epsilon"),
    (dict(hidden_dropout=1.0), "--hidden-dropout"),
    (dict(attention_dropout=-0.1), "--attention-dropout"),
    (dict(hidden_size=36, num_attention_heads=4), "--position-embedding-type rope"),
])
def test_config_errors_name_the_flag(kw, flag):
    with pytest.raises(ValueError, match=re.escape(flag)):
        tiny(**kw)


def test_odd_head_dim_is_fine_with_learned_positions():
    assert tiny(hidden_size=36, num_attention_heads=4, position_embedding_type="learned_absolute").head_dim == 9


# --- DeepSpeed ZeRO -----------------------------------------------------------------------------

ZERO_WORKER = '''
import json, os, sys
import torch
from megamix.training.distributed import distributed_session
from megamix.model.gpt import GPT, GPTConfig
import deepspeed

stage, out = int(sys.argv[1]), sys.argv[2]
with distributed_session() as info:  # tears the group down on every rank before exit
    rank = info.rank
    torch.manual_seed(0)
    model = GPT(GPTConfig(**json.loads(sys.argv[3])))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # plain SGD: no Adam amplification of rounding
    cfg = {"zero_allow_untested_optimizer": True, "train_batch_size": 4, "train_micro_batch_size_per_gpu": 2,
           "gradient_accumulation_steps": 1, "gradient_clipping": 1.0, "zero_optimization": {"stage": stage},
           "steps_per_print": 1 << 30}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    data = torch.tensor(json.loads(sys.argv[4]))
    losses = []
    for step in range(4):
        seq = data[2 * rank: 2 * rank + 2]
        loss = engine(seq[:, :-1], seq[:, 1:]).mean()
        engine.backward(loss)
        engine.step()
        t = loss.detach().clone()
        torch.distributed.all_reduce(t)
        losses.append(t.item() / 2)
    if rank == 0:
        with open(out + ".tmp", "w") as f:
            json.dump(losses, f)
        os.replace(out + ".tmp", out)
'''


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 3])
def test_deepspeed_zero_two_ranks_match_single_process(stage, tmp_path):
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    cfg = dict(vocab_size=64, num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=8)
    data = torch.randint(0, 64, (4, 9), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = GPT(GPTConfig(**cfg))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    ref = []
    for _ in range(4):
        loss = model(data[:, :-1], data[:, 1:]).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ref.append(loss.item())
    (tmp_path / "worker.py").write_text(ZERO_WORKER)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
               PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "losses.json"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "worker.py"), str(stage), str(out), json.dumps(cfg),
                           json.dumps(data.tolist())], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    losses = json.loads(out.read_text())
    assert losses == pytest.approx(ref, rel=1e-5), (losses, ref)
    assert ref[-1] < ref[0] - 0.1  # it did train
