"""Optional fast paths, detected once at import: apex fused norms and Adam, torch fused AdamW.

``auto`` uses a fast path when it is present and the plain torch one otherwise; asking
explicitly for a missing fast path raises, it never falls back silently.

Note that PyPI's ``apex`` is an unrelated project: only NVIDIA apex built with its CUDA
extensions (``fused_layer_norm_cuda``, ``amp_C``) counts as present.
"""

from __future__ import annotations

import importlib
from typing import Callable, Iterable

import torch
from torch import nn

NORM_KINDS = ("RMSNorm", "LayerNorm")
NORM_CHOICES = ("auto", "apex", "none")
ADAM_CHOICES = ("auto", "apex", "torch-fused", "none")


def _importable(*names: str) -> bool:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # a broken or foreign install may raise anything, not only ImportError
            return False
    return True


def _has_apex_norm() -> bool:
    if not _importable("apex.normalization", "fused_layer_norm_cuda"):
        return False
    norm = importlib.import_module("apex.normalization")
    return hasattr(norm, "FusedLayerNorm") and hasattr(norm, "FusedRMSNorm")


def _has_apex_adam() -> bool:
    if not _importable("apex.optimizers", "amp_C"):
        return False
    return hasattr(importlib.import_module("apex.optimizers"), "FusedAdam")


def _cpu_fused_adamw_works() -> bool:
    """Try one fused AdamW step on a CPU tensor (supported from torch 2.4)."""
    try:
        p = nn.Parameter(torch.ones(4))
        p.grad = torch.full((4,), 0.5)
        torch.optim.AdamW([p], lr=0.1, fused=True).step()
        return bool(torch.all(p < 1.0))
    except Exception:
        return False


def _torch_fused_adamw_devices() -> frozenset[str]:
    devices = {"cpu"} if _cpu_fused_adamw_works() else set()
    if torch.cuda.is_available():  # CUDA fused AdamW exists since torch 2.0; not probed to avoid a context
        devices.add("cuda")
    return frozenset(devices)


HAS_APEX_NORM: bool = _has_apex_norm()
"""NVIDIA apex FusedLayerNorm/FusedRMSNorm with their CUDA kernel are importable."""
HAS_APEX_ADAM: bool = _has_apex_adam()
"""NVIDIA apex FusedAdam with its CUDA kernel is importable."""
TORCH_FUSED_ADAMW_DEVICES: frozenset[str] = _torch_fused_adamw_devices()
"""Device types on which ``torch.optim.AdamW(fused=True)`` works."""
HAS_TORCH_FUSED_ADAMW: bool = ("cuda" if torch.cuda.is_available() else "cpu") in TORCH_FUSED_ADAMW_DEVICES
"""torch fused AdamW works on the default device (CUDA when present, else CPU)."""
HAS_FLASH_SDPA: bool = torch.cuda.is_available() and torch.backends.cuda.is_flash_attention_available()
"""scaled_dot_product_attention can dispatch to flash attention (informational)."""

_announced: list[bool] = [False]


def _device_type(device: torch.device | str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def resolve_norm(fused: str) -> str:
    """Which norm implementation ``fused`` (auto | apex | none) selects: "apex" or "torch"."""
    if fused not in NORM_CHOICES:
        raise ValueError(f"--fused-kernels: expected one of {'|'.join(NORM_CHOICES)}, got {fused!r}")
    if fused == "apex" and not HAS_APEX_NORM:
        raise RuntimeError("--fused-kernels apex was requested but NVIDIA apex with its fused_layer_norm_cuda "
                           "extension is not importable; install apex built with --cuda_ext, or pass "
                           "--fused-kernels auto|none")
    return "apex" if fused == "apex" or (fused == "auto" and HAS_APEX_NORM) else "torch"


def resolve_adam(fused: str, device: torch.device | str | None = None) -> str:
    """Which Adam ``fused`` (auto | apex | torch-fused | none) selects on ``device``.

    Returns "apex", "torch-fused" or "torch". Under auto the order is apex (CUDA only),
    then torch fused AdamW, then plain AdamW.
    """
    if fused not in ADAM_CHOICES:
        raise ValueError(f"--optimizer-impl: expected one of {'|'.join(ADAM_CHOICES)}, got {fused!r}")
    dev = _device_type(device)
    apex_ok = HAS_APEX_ADAM and dev == "cuda"
    torch_ok = dev in TORCH_FUSED_ADAMW_DEVICES
    if fused == "apex" and not apex_ok:
        why = "is not importable" if not HAS_APEX_ADAM else f"needs CUDA parameters, device is {dev}"
        raise RuntimeError(f"--optimizer-impl apex was requested but apex FusedAdam {why}; "
                           "pass --optimizer-impl auto|torch-fused|none")
    if fused == "torch-fused" and not torch_ok:
        raise RuntimeError(f"--optimizer-impl torch-fused was requested but torch {torch.__version__} has no "
                           f"fused AdamW on {dev}; pass --optimizer-impl auto|none")
    if fused == "auto":
        return "apex" if apex_ok else "torch-fused" if torch_ok else "torch"
    return {"apex": "apex", "torch-fused": "torch-fused", "none": "torch"}[fused]


def make_norm(kind: str, dim: int, eps: float, fused: str = "auto") -> nn.Module:
    """A LayerNorm or RMSNorm over the last ``dim`` features: apex's or torch's per ``fused``."""
    if kind not in NORM_KINDS:
        raise ValueError(f"--normalization: expected one of {'|'.join(NORM_KINDS)}, got {kind!r}")
    if resolve_norm(fused) == "apex":
        norm = importlib.import_module("apex.normalization")
        cls = norm.FusedRMSNorm if kind == "RMSNorm" else norm.FusedLayerNorm
        return cls(dim, eps=eps)
    return nn.RMSNorm(dim, eps=eps) if kind == "RMSNorm" else nn.LayerNorm(dim, eps=eps)


def make_adam(params: Iterable, lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
              fused: str = "auto", device: torch.device | str | None = None) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) over ``params``: apex FusedAdam, torch fused or plain, per ``fused``."""
    impl = resolve_adam(fused, device)
    kw = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    if impl == "apex":
        return importlib.import_module("apex.optimizers").FusedAdam(params, adam_w_mode=True, **kw)
    return torch.optim.AdamW(params, fused=True if impl == "torch-fused" else None, **kw)


def describe(fused_kernels: str = "auto", optimizer_impl: str = "auto",
             device: torch.device | str | None = None) -> str:
    """One line saying which fast paths the given settings use on ``device``."""
    dev = _device_type(device)
    norm = {"apex": "apex fused", "torch": "torch"}[resolve_norm(fused_kernels)]
    adam = {"apex": "apex FusedAdam", "torch-fused": "torch fused AdamW",
            "torch": "torch AdamW (foreach)"}[resolve_adam(optimizer_impl, device)]
    attn = "flash available" if HAS_FLASH_SDPA else "math/efficient kernels"
    return f"fast paths on {dev}: norms={norm}, optimizer={adam}, attention=torch SDPA ({attn})"


def announce(logger_fn: Callable[[str], object] = print, fused_kernels: str = "auto",
             optimizer_impl: str = "auto", device: torch.device | str | None = None) -> bool:
    """Log :func:`describe` once per process; returns whether this call logged it."""
    if _announced[0]:
        return False
    logger_fn(describe(fused_kernels, optimizer_impl, device))
    _announced[0] = True
    return True
