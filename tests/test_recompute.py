"""Activation recompute (Megatron's flags): the same losses and gradients, with the blocks really re-run."""

from __future__ import annotations

import pytest
import torch

from megamix.model.gpt import GPT, GPTConfig

V, S = 97, 16
MODES = {
    "selective": dict(recompute_granularity="selective"),
    "full-uniform-1": dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1),
    "full-uniform-2": dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=2),
    "full-block-2": dict(recompute_granularity="full", recompute_method="block", recompute_num_layers=2),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(dropout: float = 0.0, **kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, num_layers=3, hidden_size=32, num_attention_heads=4, seq_length=S,
                         hidden_dropout=dropout, attention_dropout=dropout, **kw))


def _loss_and_grads(model: GPT) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(0, V, (2, S + 1), generator=g)
    torch.manual_seed(5)  # the dropout masks
    loss = model(seq[:, :-1], seq[:, 1:]).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _count_calls(model: GPT, kind: str) -> list[int]:
    counts = []
    for i, layer in enumerate(model.layers):
        counts.append(0)
        target = layer if kind == "layer" else layer.attn

        def hook(mod, args, i=i):  # a pre-hook: recompute stops early, before a forward hook would fire
            counts[i] += 1
        if kind == "core":
            original = target._core

            def counted(*a, i=i, original=original):
                counts[i] += 1
                return original(*a)
            target._core = counted
        else:
            target.register_forward_pre_hook(hook)
    return counts


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_same_losses_and_gradients_as_without_recompute(mode, dropout):
    ref_loss, ref_grads = _loss_and_grads(_model(dropout))
    loss, grads = _loss_and_grads(_model(dropout, **MODES[mode]))
    assert torch.equal(loss, ref_loss)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("mode, kind, expected", [
    ("selective", "core", [2, 2, 2]),
    ("full-uniform-1", "layer", [2, 2, 2]),
    ("full-uniform-2", "layer", [2, 2, 2]),
    ("full-block-2", "layer", [2, 2, 1]),
])
def test_the_chosen_parts_run_twice_in_training(mode, kind, expected):
    model = _model(**MODES[mode])
    counts = _count_calls(model, kind)
    _loss_and_grads(model)
    assert counts == expected


def test_no_recompute_in_evaluation():
    model = _model(**MODES["full-uniform-1"])
    counts = _count_calls(model, "layer")
    with torch.no_grad():
        model(torch.zeros(1, S, dtype=torch.long))
    model.eval()
    model(torch.zeros(1, S, dtype=torch.long)).sum().backward()
    assert counts == [2, 2, 2]


@pytest.mark.parametrize("kw, message", [
    (dict(recompute_granularity="full"), "--recompute-method"),
    (dict(recompute_granularity="everything"), "--recompute-granularity"),
    (dict(recompute_method="uniform"), "need --recompute-granularity full"),
    (dict(recompute_granularity="selective", recompute_num_layers=1), "need --recompute-granularity full"),
    (dict(recompute_granularity="full", recompute_method="block", recompute_num_layers=4), "--recompute-num-layers"),
])
def test_bad_recompute_settings_name_the_flag(kw, message):
    with pytest.raises(ValueError, match=message):
        _model(**kw)
