"""Every collective of training puts its tensors on the process group's device.

Under NCCL the group's device is CUDA while torch's default device is the CPU, so a tensor
made without an explicit device (``torch.tensor(x)``) reaches NCCL on the CPU and fails.
No gloo test can see that. Here the real phase loop (StepRunner, Evaluator, mixers, DoGE's
scorer, DoReMi's excess) runs on a tiny model against a recording stand-in for
``torch.distributed`` whose group lives on the CPU while torch's default device is 'meta':
the same mismatch, mirrored, so any collective tensor made without the group's device
arrives on 'meta' and the stand-in fails the test.
"""

from __future__ import annotations

import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as real_dist

from data_fixtures import write_domains
from megamix.data.blend import BlendedDataset
from megamix.data.domain import DomainDataset
from megamix.data.schedule import MixtureSchedule
from megamix.mixing.base import MixerContext
from megamix.mixing.aioli import AioliConfig
from megamix.mixing.config import MixingConfig
from megamix.mixing.doremi import DoReMiConfig
from megamix.mixing.registry import build_mixer
from megamix.model.gpt import GPT, GPTConfig
from megamix.training import distributed
from megamix.training.evaluation import Evaluator
from megamix.training.loop import LoopState, PhaseLoop, LoopHooks
from megamix.training.metrics import MetricsSink
from megamix.training.doge_scores import DomainGradScorer
from megamix.training.doremi_reference import ExcessLoss
from megamix.training.signals import SignalEnv
from megamix.training.step import StepLayout, StepRunner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["code", "prose", "math"]


class RecordingDist:
    """A two-rank stand-in for torch.distributed (this process is rank 0; the other rank adds zeros).

    Every tensor handed to a collective must be on ``device``; the calls are recorded.
    """

    ReduceOp = real_dist.ReduceOp

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.calls: list[tuple[str, torch.device, tuple]] = []

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def get_world_size(self) -> int:
        return 2

    def get_rank(self) -> int:
        return 0

    def get_backend(self) -> str:
        return "fake"

    def _check(self, name: str, t: torch.Tensor) -> None:
        self.calls.append((name, t.device, tuple(t.shape)))
        assert t.device == self.device, (f"{name} was handed a tensor on {t.device}, but the process group "
                                         f"was set up on {self.device}")

    def all_reduce(self, t: torch.Tensor, op=None) -> None:
        self._check("all_reduce", t)

    def broadcast(self, t: torch.Tensor, src: int = 0) -> None:
        self._check("broadcast", t)

    def barrier(self) -> None:
        self.calls.append(("barrier", None, ()))


class TinyEngine(torch.nn.Module):
    """The engine interface StepRunner uses (forward, backward, step, get_lr), plain SGD."""

    def __init__(self, module: torch.nn.Module, lr: float = 0.05) -> None:
        super().__init__()
        self.module, self.lr = module, lr

    def forward(self, tokens, labels):
        return self.module(tokens, labels)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    @torch.no_grad()
    def step(self) -> None:
        for p in self.module.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-self.lr)
                p.grad = None

    def get_lr(self) -> list[float]:
        return [self.lr]


def _mixing(method: str) -> MixingConfig:
    if method == "aioli":
        return MixingConfig(method="aioli", update_interval=6, options=AioliConfig(lp_rounds=1, lp_steps=1))
    if method == "doremi":
        return MixingConfig(method="doremi", update_interval=2, options=DoReMiConfig(reference="unused"))
    return MixingConfig(method=method, update_interval=2)


def _loop(tmp_path, method: str, prefetch: int) -> PhaseLoop:
    prefixes = write_domains(tmp_path, NAMES, num_docs=30, mean_len=40, vocab_size=250)
    seq, gbs, mbs, iters = 16, 8, 2, 8
    split = (0.8, 0.1, 0.1)
    cache = str(tmp_path / "cache")
    train = [DomainDataset(p, n, i, "train", seq, split, 1, cache) for i, (p, n) in enumerate(zip(prefixes, NAMES))]
    valid = [DomainDataset(p, n, i, "valid", seq, split, 1, cache) for i, (p, n) in enumerate(zip(prefixes, NAMES))]
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, num_layers=1, hidden_size=32, num_attention_heads=2, seq_length=seq))
    engine = TinyEngine(model)
    schedule = MixtureSchedule(NAMES, gbs)
    blend = BlendedDataset(train, schedule)
    cpu = torch.device("cpu")
    layout = StepLayout(gbs, mbs, seq, 0, 1, len(NAMES))
    evaluator = Evaluator(valid, 4, mbs, 0, 1, cpu)
    env = SignalEnv(engine, layout, cpu, SimpleNamespace(training=SimpleNamespace(zero_stage=0)), evaluator.batches)
    providers = {"doge": {"domain_grad_scores": lambda: DomainGradScorer(env)},
                 "doremi": {"excess_loss": lambda: ExcessLoss(GPT(model.config))}}.get(method, {})
    runner = StepRunner(engine, blend, layout, cpu, {name: make() for name, make in providers.items()},
                        prefetch=prefetch)
    ctx = MixerContext(domains=tuple(NAMES), train_tokens=tuple(int(d.num_tokens) for d in train),
                       train_iters=iters, global_batch_size=gbs, seed=1)
    return PhaseLoop(build_mixer(_mixing(method), ctx), runner, blend, schedule, evaluator, engine,
                     MetricsSink(str(tmp_path / "run"), True), iters, 2, 4, LoopHooks())


@pytest.fixture
def recording(monkeypatch):
    """Install the stand-in with its group on the CPU and make torch's default device 'meta'."""
    fake = RecordingDist("cpu")
    monkeypatch.setattr(distributed, "dist", fake)
    distributed.set_group_device("cpu")
    yield fake
    distributed.set_group_device(None)


@pytest.mark.parametrize("method, prefetch", [("aioli", 2), ("doge", 0), ("doremi", 1)])
def test_loop_collectives_use_the_group_device(tmp_path, recording, method, prefetch):
    loop = _loop(tmp_path, method, prefetch)
    torch.set_default_device("meta")  # the "wrong" device, as the CPU is under NCCL
    try:
        state = loop.run(LoopState())
    finally:
        torch.set_default_device(None)
        loop.runner.close()
    assert state.iteration == 8
    kinds = [c[0] for c in recording.calls]
    assert kinds.count("broadcast") >= 2, kinds  # the weights of every phase
    assert kinds.count("all_reduce") >= 8 + 2, kinds  # per-step statistics, phase checks, evaluations
    assert all(c[1] == torch.device("cpu") for c in recording.calls if c[0] != "barrier")
    if method == "doge":  # the K domain gradients and the validation gradient in one all-reduce
        assert any(c[0] == "all_reduce" and len(c[2]) == 2 and c[2][0] == len(NAMES) + 1 for c in recording.calls)
    if method == "doremi":  # loss sums, token counts and excess losses in one tensor
        assert any(c[0] == "all_reduce" and c[2] == (3, len(NAMES)) for c in recording.calls)


def test_tensor_on_another_device_is_moved_to_the_group_device(monkeypatch):
    fake = RecordingDist("meta")
    monkeypatch.setattr(distributed, "dist", fake)
    distributed.set_group_device("meta")
    try:
        out = distributed.all_reduce_sum(torch.ones(3, dtype=torch.float64))
    finally:
        distributed.set_group_device(None)
    assert out.device == torch.device("meta")
    assert fake.calls == [("all_reduce", torch.device("meta"), (3,))]


def test_broadcast_and_check_refuses_a_differing_rank(recording):
    class Differ(RecordingDist):
        def broadcast(self, t, src=0):
            super().broadcast(t, src)
            t.add_(1.0)  # rank 0 sent something else than this rank computed

        def all_reduce(self, t, op=None):
            super().all_reduce(t, op)

    distributed.dist = Differ("cpu")
    with pytest.raises(RuntimeError, match="differ between ranks"):
        distributed.broadcast_and_check(np.array([0.5, 0.5]), "weights of phase 0")


def test_only_the_distributed_module_issues_tensor_collectives():
    pattern = re.compile(r"\b(all_reduce|broadcast|all_gather|reduce_scatter|send|recv)\(")
    offenders = []
    for root, _, files in os.walk(os.path.join(REPO, "megamix")):
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(".py") and not path.endswith(os.path.join("training", "distributed.py")):
                with open(path) as f:
                    text = f.read()
                if re.search(r"\bdist\.", text) and pattern.search(text):
                    offenders.append(os.path.relpath(path, REPO))
    assert offenders == []
