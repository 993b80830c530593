"""RNG states in checkpoints: every generator that decides a sample or a dropout mask comes back."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from megamix.training import checkpoint
from megamix.training.checkpoint import rng_state, set_rng_state


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_cpu_states_round_trip_through_json():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    saved = json.loads(json.dumps(rng_state()))
    assert "cuda" not in saved  # no GPU here
    expected = _draws()
    set_rng_state(saved)
    assert _draws() == expected


class _FakeCuda:
    """Stands in for torch.cuda on a CPU machine: one device with a byte-tensor RNG state."""

    def __init__(self, available: bool = True) -> None:
        self.state = torch.arange(16, dtype=torch.uint8)
        self.available = available

    def is_available(self) -> bool:
        return self.available

    def is_initialized(self) -> bool:
        return self.available

    def get_rng_state(self) -> torch.Tensor:
        return self.state.clone()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self.state = state.clone()


def test_cuda_state_is_saved_and_restored(monkeypatch):
    fake = _FakeCuda()
    monkeypatch.setattr(checkpoint.torch, "cuda", fake)
    saved = json.loads(json.dumps(rng_state()))
    assert "cuda" in saved
    fake.state = torch.zeros(16, dtype=torch.uint8)  # the generator moved on
    set_rng_state(saved)
    assert torch.equal(fake.state, torch.arange(16, dtype=torch.uint8))


def test_gpu_checkpoint_on_a_machine_without_gpu_warns(monkeypatch):
    monkeypatch.setattr(checkpoint.torch, "cuda", _FakeCuda())
    saved = rng_state()
    monkeypatch.setattr(checkpoint.torch, "cuda", _FakeCuda(available=False))
    with pytest.warns(UserWarning, match="CUDA RNG state"):
        set_rng_state(saved)
