"""Optional fast paths: detection (NVIDIA apex vs lookalikes), selection rules, and plain-vs-fused agreement."""

import sys
import types

import pytest
import torch
from torch import nn

from megamix.model import fused
from megamix.model.gpt import GPT, GPTConfig

no_apex_norm = pytest.mark.skipif(fused.HAS_APEX_NORM, reason="apex fused norms are installed here")
no_apex_adam = pytest.mark.skipif(fused.HAS_APEX_ADAM, reason="apex FusedAdam is installed here")
needs_cpu_fused_adamw = pytest.mark.skipif("cpu" not in fused.TORCH_FUSED_ADAMW_DEVICES,
                                           reason=f"torch {torch.__version__} has no CPU fused AdamW")


# --- detection ----------------------------------------------------------------------------------

def test_flags_are_plain_booleans():
    for name in ("HAS_APEX_NORM", "HAS_APEX_ADAM", "HAS_TORCH_FUSED_ADAMW", "HAS_FLASH_SDPA"):
        assert isinstance(getattr(fused, name), bool), name


def _fake_modules(monkeypatch, **modules):
    for name, attrs in modules.items():
        mod = types.ModuleType(name)
        mod.__path__ = []  # a package, so submodule imports go through sys.modules
        for key, value in attrs.items():
            setattr(mod, key, value)
        monkeypatch.setitem(sys.modules, name, mod)


def test_pypi_apex_lookalike_is_not_detected(monkeypatch):
    for name in ("apex", "apex.normalization", "apex.optimizers", "fused_layer_norm_cuda", "amp_C"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    _fake_modules(monkeypatch, apex={"__version__": "0.9.10dev"})  # PyPI "apex": no submodules
    assert not fused._has_apex_norm() and not fused._has_apex_adam()


def test_apex_python_part_without_cuda_extensions_is_not_detected(monkeypatch):
    for name in ("fused_layer_norm_cuda", "amp_C"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes import fail
    _fake_modules(monkeypatch, apex={}, **{"apex.normalization": {"FusedLayerNorm": nn.LayerNorm,
                                                                  "FusedRMSNorm": nn.RMSNorm},
                                           "apex.optimizers": {"FusedAdam": torch.optim.AdamW}})
    assert not fused._has_apex_norm() and not fused._has_apex_adam()


def test_import_that_raises_anything_counts_as_missing(monkeypatch):
    class Exploding:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "apex":
                raise OSError("libcudart.so: cannot open shared object file")
            return None

    for name in list(sys.modules):
        if name == "apex" or name.startswith("apex."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [Exploding(), *sys.meta_path])
    assert not fused._has_apex_norm() and not fused._has_apex_adam()


def test_complete_apex_is_detected(monkeypatch):
    _fake_modules(monkeypatch, apex={}, fused_layer_norm_cuda={}, amp_C={},
                  **{"apex.normalization": {"FusedLayerNorm": nn.LayerNorm, "FusedRMSNorm": nn.RMSNorm},
                     "apex.optimizers": {"FusedAdam": torch.optim.AdamW}})
    assert fused._has_apex_norm() and fused._has_apex_adam()


# --- norms --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,cls", [("RMSNorm", nn.RMSNorm), ("LayerNorm", nn.LayerNorm)])
def test_plain_norms(kind, cls):
    norm = fused.make_norm(kind, 32, 1e-6, "none")
    assert type(norm) is cls and norm.eps == 1e-6
    x = torch.randn(3, 32)
    if kind == "RMSNorm":
        ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    else:
        ref = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), ref)


@no_apex_norm
def test_auto_norm_falls_back_to_torch_without_apex():
    assert fused.resolve_norm("auto") == "torch"
    assert type(fused.make_norm("RMSNorm", 8, 1e-5, "auto")) is nn.RMSNorm


@no_apex_norm
def test_explicit_apex_norm_without_apex_raises():
    with pytest.raises(RuntimeError, match="--fused-kernels apex"):
        fused.make_norm("LayerNorm", 8, 1e-5, "apex")
    with pytest.raises(RuntimeError, match="--fused-kernels apex"):
        GPT(GPTConfig(vocab_size=16, num_layers=1, hidden_size=16, num_attention_heads=2, seq_length=8,
                      fused_kernels="apex"))


def test_bad_norm_arguments_name_the_flag():
    with pytest.raises(ValueError, match="--fused-kernels"):
        fused.make_norm("RMSNorm", 8, 1e-5, "fast")
    with pytest.raises(ValueError, match="--normalization"):
        fused.make_norm("BatchNorm", 8, 1e-5, "none")


def test_apex_norm_selected_when_present(monkeypatch):
    class FakeFusedRMSNorm(nn.RMSNorm):
        pass

    _fake_modules(monkeypatch, apex={}, **{"apex.normalization": {"FusedRMSNorm": FakeFusedRMSNorm,
                                                                  "FusedLayerNorm": nn.LayerNorm}})
    monkeypatch.setattr(fused, "HAS_APEX_NORM", True)
    assert type(fused.make_norm("RMSNorm", 8, 1e-5, "apex")) is FakeFusedRMSNorm
    assert type(fused.make_norm("RMSNorm", 8, 1e-5, "auto")) is FakeFusedRMSNorm
    assert type(fused.make_norm("RMSNorm", 8, 1e-5, "none")) is nn.RMSNorm


@pytest.mark.skipif(not (fused.HAS_APEX_NORM and torch.cuda.is_available()), reason="needs apex and CUDA")
@pytest.mark.parametrize("kind", ["RMSNorm", "LayerNorm"])
def test_apex_norm_agrees_with_torch(kind):
    torch.manual_seed(0)
    x = torch.randn(4, 7, 256, device="cuda", requires_grad=True)
    plain, apex = (fused.make_norm(kind, 256, 1e-5, f).cuda() for f in ("none", "apex"))
    y0, y1 = plain(x), apex(x)
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-4)
    g0, = torch.autograd.grad(y0.square().sum(), x)
    g1, = torch.autograd.grad(y1.square().sum(), x)
    torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-4)


# --- Adam ---------------------------------------------------------------------------------------

def _adam(impl: str, device: str = "cpu") -> tuple[torch.optim.Optimizer, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).to(device)
    opt = fused.make_adam(model.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                          fused=impl, device=device)
    return opt, model


def _run(opt: torch.optim.Optimizer, model: nn.Module, steps: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    device = next(model.parameters()).device
    for _ in range(steps):
        x = torch.randn(16, 8, generator=g).to(device)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return [p.detach().cpu().clone() for p in model.parameters()]


def test_plain_adam_is_torch_adamw_with_the_settings():
    opt, _ = _adam("none")
    assert type(opt) is torch.optim.AdamW and not opt.defaults["fused"]
    d = opt.defaults
    assert (d["lr"], d["betas"], d["eps"], d["weight_decay"]) == (1e-2, (0.9, 0.95), 1e-8, 0.1)


@needs_cpu_fused_adamw
def test_torch_fused_adamw_agrees_with_plain():
    fused_opt, fused_model = _adam("torch-fused")
    assert fused_opt.defaults["fused"] is True
    plain = _run(*_adam("none"))
    for a, b in zip(_run(fused_opt, fused_model), plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(plain[0], _adam("none")[1][0].weight.detach())  # the steps moved the weights


@pytest.mark.skipif(not (fused.HAS_APEX_ADAM and torch.cuda.is_available()), reason="needs apex and CUDA")
def test_apex_adam_agrees_with_plain():
    apex_params = _run(*_adam("apex", "cuda"))
    for a, b in zip(apex_params, _run(*_adam("none", "cuda"))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@no_apex_adam
def test_explicit_apex_adam_without_apex_raises():
    with pytest.raises(RuntimeError, match="--optimizer-impl apex"):
        _adam("apex")


def test_apex_adam_on_cpu_raises_even_when_present(monkeypatch):
    monkeypatch.setattr(fused, "HAS_APEX_ADAM", True)
    with pytest.raises(RuntimeError, match="needs CUDA"):
        fused.resolve_adam("apex", "cpu")


def test_auto_adam_order(monkeypatch):
    monkeypatch.setattr(fused, "HAS_APEX_ADAM", True)
    monkeypatch.setattr(fused, "TORCH_FUSED_ADAMW_DEVICES", frozenset({"cpu", "cuda"}))
    assert fused.resolve_adam("auto", "cuda") == "apex"
    assert fused.resolve_adam("auto", "cpu") == "torch-fused"
    monkeypatch.setattr(fused, "HAS_APEX_ADAM", False)
    assert fused.resolve_adam("auto", "cuda:0") == "torch-fused"
    monkeypatch.setattr(fused, "TORCH_FUSED_ADAMW_DEVICES", frozenset())
    assert fused.resolve_adam("auto", "cpu") == "torch"
    with pytest.raises(RuntimeError, match="--optimizer-impl torch-fused"):
        fused.resolve_adam("torch-fused", "cpu")
    assert type(_adam("auto")[0]) is torch.optim.AdamW


def test_bad_adam_choice_names_the_flag():
    with pytest.raises(ValueError, match="--optimizer-impl"):
        fused.resolve_adam("fastest", "cpu")


# --- announce -----------------------------------------------------------------------------------

def test_announce_logs_once_and_says_what_is_used(monkeypatch):
    monkeypatch.setattr(fused, "_announced", [False])
    lines = []
    assert fused.announce(lines.append, "none", "none", "cpu") is True
    assert fused.announce(lines.append, "none", "none", "cpu") is False
    assert len(lines) == 1
    assert "norms=torch" in lines[0] and "torch AdamW" in lines[0] and "cpu" in lines[0]


@no_apex_norm
def test_announce_under_auto_reports_the_fallback(monkeypatch):
    monkeypatch.setattr(fused, "_announced", [False])
    lines = []
    fused.announce(lines.append, "auto", "auto", "cpu")
    expected = "torch fused AdamW" if "cpu" in fused.TORCH_FUSED_ADAMW_DEVICES else "torch AdamW"
    assert "norms=torch," in lines[0] and expected in lines[0]
