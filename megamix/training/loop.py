"""The phase loop: every mixing method is this loop.

Ask the mixer for a Phase, append its segment to the schedule, train its steps, evaluate
when asked, hand the result back with ``mixer.observe``. The loop state (iteration,
schedule, phase in progress and its partial sums, mixer state) is what a checkpoint
records, so a resumed run continues mid-phase exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from megamix.data.blend import BlendedDataset
from megamix.data.schedule import MixtureSchedule
from megamix.mixing.base import Mixer, Observation, Phase
from megamix.training.distributed import broadcast_and_check, group_device, to_host
from megamix.training.domain_stats import DomainStats
from megamix.training.evaluation import Evaluator, perplexity
from megamix.training.metrics import MetricsSink
from megamix.training.repetition import RepetitionTracker
from megamix.training.step import StepRunner
from megamix.training.throughput import progress_fields


def _on_device(value, device: torch.device) -> torch.Tensor:
    """A per-step signal sum as a float64 tensor on ``device`` (an exact copy of a restored one)."""
    if isinstance(value, torch.Tensor):
        return value
    return torch.tensor(np.asarray(value, dtype=np.float64), dtype=torch.float64, device=device)


def _stats(value, device: torch.device) -> DomainStats | None:
    """DomainStats from a restored dict (a live one is returned as is)."""
    if value is None or isinstance(value, DomainStats):
        return value
    return DomainStats.from_dict(value, device)


@dataclass
class LoopState:
    """Everything the loop needs to continue exactly after a resume."""

    iteration: int = 0
    phase: Phase | None = None
    phase_steps_done: int = 0
    phase_steps: int = 0
    phase_stats: DomainStats | dict | None = None
    """Per-domain statistics of the phase so far (on the device while training, a dict when restored)."""
    phases_started: int = 0
    log_stats: DomainStats | dict | None = None
    """Per-domain loss sums and token counts since the last 'train' event."""
    signal_sums: dict = field(default_factory=dict)
    """Per-step signals (e.g. gradient scores) summed over the phase so far."""

    def to_dict(self) -> dict:
        """JSON-able form for the checkpoint."""
        as_dict = lambda st: None if st is None else (st if isinstance(st, dict) else st.to_dict())  # noqa: E731
        return {
            "iteration": self.iteration,
            "phase": None if self.phase is None else self.phase.to_dict(),
            "phase_steps_done": self.phase_steps_done,
            "phase_steps": self.phase_steps,
            "phase_stats": as_dict(self.phase_stats),
            "phases_started": self.phases_started,
            "log_stats": as_dict(self.log_stats),
            "signal_sums": {k: (to_host(v) if isinstance(v, torch.Tensor) else np.asarray(v)).tolist()
                            for k, v in self.signal_sums.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LoopState":
        """Inverse of :meth:`to_dict` (statistics stay dicts until the loop puts them on its device)."""
        return cls(iteration=d["iteration"], phase=None if d["phase"] is None else Phase.from_dict(d["phase"]),
                   phase_steps_done=d["phase_steps_done"], phase_steps=d["phase_steps"],
                   phase_stats=d["phase_stats"], phases_started=d["phases_started"], log_stats=d["log_stats"],
                   signal_sums={k: np.asarray(v, dtype=np.float64) for k, v in d["signal_sums"].items()})


@dataclass
class LoopHooks:
    """Callbacks the loop calls; the entry point wires them to checkpointing and timing."""

    save: Callable[[LoopState], None] = lambda state: None
    """Checkpoint the run at ``state``."""
    should_save: Callable[[int], bool] = lambda iteration: False
    """Whether to checkpoint after ``iteration`` steps."""
    should_exit: Callable[[int], bool] = lambda iteration: False
    """Whether to save and stop after ``iteration`` steps (--exit-interval)."""
    lr: Callable[[], float] = lambda: float("nan")
    """The current learning rate, for logging."""
    throughput: Callable[[float], dict] = lambda tokens_per_s: {}
    """Extra 'train' event fields from the measured tokens/s (TFLOP/s per device, MFU, memory)."""


class PhaseLoop:
    """Drives a Mixer through the run on one rank (all ranks run it in lock step)."""

    def __init__(self, mixer: Mixer, runner: StepRunner, blend: BlendedDataset, schedule: MixtureSchedule,
                 evaluator: Evaluator, engine, metrics: MetricsSink, train_iters: int, log_interval: int,
                 eval_interval: int | None, hooks: LoopHooks, repetition: RepetitionTracker | None = None) -> None:
        self.mixer = mixer
        self.runner = runner
        self.blend = blend
        self.schedule = schedule
        self.evaluator = evaluator
        self.engine = engine
        self.metrics = metrics
        self.train_iters = train_iters
        self.log_interval = log_interval
        self.eval_interval = eval_interval
        self.hooks = hooks
        self.repetition = repetition
        self.domains = list(mixer.ctx.domains)
        self.k = len(self.domains)
        self._interval = [0, 0.0]  # steps and seconds since the last 'train' event
        self.device = group_device()

    # ----------------------------------------------------------------- phases
    def _begin_phase(self, state: LoopState) -> None:
        t0 = time.perf_counter()
        remaining = self.train_iters - state.iteration
        phase = self.mixer.next_phase(state.iteration, remaining)
        weights = broadcast_and_check(phase.weights, f"weights of phase {state.phases_started}")
        if phase.steps == 0 and not phase.evaluate:
            raise RuntimeError(f"mixer {self.mixer.name} returned an empty phase (0 steps, no evaluation)")
        steps = min(phase.steps, remaining)
        if steps:
            self.schedule.append(steps * self.runner.layout.global_batch_size, weights)
            self.blend.sync()
            if self.repetition:
                self.repetition.check_phase(state.iteration)
        state.phase, state.phase_steps, state.phase_steps_done = phase, steps, 0
        state.phase_stats = DomainStats(self.k, self.device, self.runner.sample_signals(phase.signals))
        state.phases_started += 1
        self.metrics.record({"event": "phase", "step": state.iteration, "steps": steps, "kind": phase.kind,
                             "weights": self._named(weights), "evaluate": phase.evaluate, "info": phase.info,
                             "begin_s": time.perf_counter() - t0})

    def _finish_phase(self, state: LoopState) -> None:
        phase = state.phase
        val = self._evaluate(state.iteration) if phase.evaluate else None
        stats = state.phase_stats.to_cpu()
        signals = self.runner.finish_signals(phase.signals, state.signal_sums, stats, state.phase_steps)
        obs = Observation(step=state.iteration, steps=state.phase_steps, train_loss=stats.mean(), val_loss=val,
                          signals=signals)
        for event in self.mixer.observe(phase, obs):
            self.metrics.record(event)
        state.phase = None
        state.phase_stats = None
        state.signal_sums = {}

    def _evaluate(self, iteration: int) -> np.ndarray:
        t0 = time.perf_counter()
        val = self.evaluator.evaluate(self.engine)
        self.metrics.record({"event": "eval", "step": iteration, "val_loss": self._named(val),
                             "val_ppl": self._named(perplexity(val)),
                             "avg_val_loss": float(np.nanmean(val)), "eval_s": time.perf_counter() - t0})
        return val

    # ------------------------------------------------------------------ steps
    def _train_one(self, state: LoopState) -> None:
        phase = state.phase
        t0 = time.perf_counter()
        stats, values = self.runner.step(state.iteration, loss_weights=phase.loss_weights, signals=phase.signals)
        state.phase_stats.add_(stats)  # stays on the device: no host sync per step
        for name, value in values.items():
            state.signal_sums[name] = state.signal_sums[name] + value if name in state.signal_sums else value
        state.phase_steps_done += 1
        state.iteration += 1
        if self.repetition:
            self.repetition.after_step(state.iteration)
        if state.log_stats is None:
            state.log_stats = DomainStats(self.k, self.device)
        state.log_stats.add_(stats)
        self._interval[0] += 1
        self._interval[1] += time.perf_counter() - t0
        if state.iteration % self.log_interval == 0 or state.iteration == self.train_iters:
            self._log_train(state)
        if self.eval_interval and state.iteration % self.eval_interval == 0 and not (
                phase.evaluate and state.phase_steps_done == state.phase_steps):
            self._evaluate(state.iteration)

    def _log_train(self, state: LoopState) -> None:
        t0 = time.perf_counter()
        log = state.log_stats.to_cpu()  # the interval's one host sync; its wait is the tail of the steps' time
        steps, seconds = self._interval[0], self._interval[1] + time.perf_counter() - t0
        per_domain = log.mean()
        loss, counts = log.totals()
        step_time = seconds / steps if steps else float("nan")
        lay = self.runner.layout
        tokens_per_s = lay.global_batch_size * lay.seq_length / step_time
        figures = self.hooks.throughput(tokens_per_s)
        event = {"event": "train", "step": state.iteration, "loss": loss, "domain_loss": self._named(per_domain),
                 "domain_tokens": self._named(counts),
                 "weights": self._named(state.phase.weights), "lr": self.hooks.lr(), "tokens_per_s": tokens_per_s,
                 "step_time_s": step_time, **figures, "phase_kind": state.phase.kind}
        if self.repetition:
            event["domain_epochs"] = self._named(self.repetition.epochs())
        self.metrics.record(event)
        self.metrics.print(
            f" iteration {state.iteration:>7d}/{self.train_iters} | consumed samples: "
            f"{state.iteration * lay.global_batch_size:>9d} | ms/step: {step_time * 1e3:8.1f} | "
            f"lr: {event['lr']:.3E} | loss: {loss:.4f} | tokens/s: {tokens_per_s:,.0f}{progress_fields(figures)} | "
            f"phase: {state.phase.kind} {state.phase_steps_done}/{state.phase_steps}"
            + (f" | epochs: {self.repetition.describe()}" if self.repetition else ""))
        state.log_stats = None
        self._interval = [0, 0.0]

    # ------------------------------------------------------------------- run
    def train(self, state: LoopState) -> LoopState:
        """Train until ``train_iters`` (or an exit request); return the final state."""
        state.phase_stats = _stats(state.phase_stats, self.device)  # a restored state holds dicts
        state.log_stats = _stats(state.log_stats, self.device)
        state.signal_sums = {k: _on_device(v, self.device) for k, v in state.signal_sums.items()}
        while True:
            if state.phase is None:
                if state.iteration >= self.train_iters:
                    return state
                self._begin_phase(state)
            if state.phase_steps_done == state.phase_steps:  # an evaluation-only phase
                self._finish_phase(state)
                continue
            self._train_one(state)
            if state.phase_steps_done == state.phase_steps:
                self._finish_phase(state)
            exiting = self.hooks.should_exit(state.iteration)
            if exiting or self.hooks.should_save(state.iteration):
                self.hooks.save(state)
            if exiting:
                return state

    def _named(self, values: np.ndarray) -> dict:
        return {name: float(v) for name, v in zip(self.domains, values)}
