"""Throughput figures of the log: model TFLOP/s per device, MFU against the device's peak, peak memory.

Model FLOPs per token come from :meth:`GPTConfig.flops_per_token` (6 N + 12 L H S, forward
and backward, no recompute counted). MFU = achieved model TFLOP/s per device / the
device's dense bf16 tensor-core peak (``--peak-tflops``, else the table below by device
name); it is omitted (None) where no peak is known, e.g. on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    # (substring of torch.cuda.get_device_name, dense bf16 TFLOP/s from the vendor's datasheet); first match wins
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM (HBM3)
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


def lookup_peak_tflops(device_name: str) -> float | None:
    """The table's dense bf16 peak for a device name, or None when it is not listed."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops
    return None


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """Peak TFLOP/s of one device: ``override`` (--peak-tflops), else the table; None on the CPU or unknown."""
    if override is not None:
        if not override > 0:
            raise ValueError(f"--peak-tflops must be > 0, got {override}")
        return float(override)
    if device.type != "cuda":
        return None
    return lookup_peak_tflops(torch.cuda.get_device_name(device))


@dataclass
class Throughput:
    """Turns a measured tokens/s (all ranks together) into per-device TFLOP/s, MFU and peak memory."""

    flops_per_token: float
    """Training FLOPs per token of the model (GPTConfig.flops_per_token)."""
    world_size: int
    """Devices sharing the tokens/s."""
    peak_tflops: float | None
    """Peak TFLOP/s of one device; None leaves MFU out."""
    device: torch.device = torch.device("cpu")
    """The rank's device (peak memory is read on CUDA)."""

    def measure(self, tokens_per_s: float) -> dict:
        """``tflops_per_device``, ``mfu`` (a fraction, None without a peak) and, on CUDA, ``max_mem_gb``."""
        tflops = tokens_per_s * self.flops_per_token / self.world_size / 1e12
        out = {"tflops_per_device": tflops, "mfu": tflops / self.peak_tflops if self.peak_tflops else None}
        if self.device.type == "cuda":
            out["max_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return out


def progress_fields(figures: dict) -> str:
    """The progress line's throughput part, e.g. ``| TFLOP/s/dev: 445.1 | MFU: 45.0% | mem: 31.2 GB``."""
    parts = []
    if "tflops_per_device" in figures:
        parts.append(f"TFLOP/s/dev: {figures['tflops_per_device']:.1f}")
    if figures.get("mfu") is not None:
        parts.append(f"MFU: {100 * figures['mfu']:.1f}%")
    if "max_mem_gb" in figures:
        parts.append(f"mem: {figures['max_mem_gb']:.1f} GB")
    return "".join(f" | {p}" for p in parts)
