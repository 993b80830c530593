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
from megamix.training.evaluation import Evaluator, perplexity
from megamix.training.metrics import MetricsSink
from megamix.training.repetition import RepetitionTracker
from megamix.training.step import StepRunner
from megamix.training.throughput import progress_fields


def _host(values) -> np.ndarray | None:
    """A float64 numpy copy of a statistics vector kept on the device (or already on the host)."""
    if values is None:
        return None
    return to_host(values) if isinstance(values, torch.Tensor) else np.asarray(values, dtype=np.float64)


def _device(values, device: torch.device) -> torch.Tensor | None:
    """A statistics vector as a float64 tensor on ``device`` (an exact copy of a restored one)."""
    if values is None or isinstance(values, torch.Tensor):
        return values
    return torch.tensor(np.asarray(values, dtype=np.float64), dtype=torch.float64, device=device)


@dataclass
class LoopState:
    """Everything the loop needs to continue exactly after a resume."""

    iteration: int = 0
    phase: Phase | None = None
    phase_steps_done: int = 0
    phase_steps: int = 0
    phase_stats: np.ndarray | torch.Tensor | None = None
    """Per-domain statistics of the phase so far (a device tensor while training, numpy when restored)."""
    phases_started: int = 0
    log_stats: np.ndarray | torch.Tensor | None = None
    """Per-domain loss sums and token counts since the last 'train' event (device tensor while training)."""
    signal_sums: dict = field(default_factory=dict)
    """Per-step signals (e.g. DoGE's scores) summed over the phase so far."""

    def to_dict(self) -> dict:
        """JSON-able form for the checkpoint."""
        return {
            "iteration": self.iteration,
            "phase": None if self.phase is None else self.phase.to_dict(),
            "phase_steps_done": self.phase_steps_done,
            "phase_steps": self.phase_steps,
            "phase_stats": None if self.phase_stats is None else _host(self.phase_stats).tolist(),
            "phases_started": self.phases_started,
            "log_stats": None if self.log_stats is None else _host(self.log_stats).tolist(),
            "signal_sums": {k: np.asarray(v).tolist() for k, v in self.signal_sums.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LoopState":
        """Inverse of :meth:`to_dict`."""
        arr = lambda v: None if v is None else np.asarray(v, dtype=np.float64)  # noqa: E731
        return cls(iteration=d["iteration"], phase=None if d["phase"] is None else Phase.from_dict(d["phase"]),
                   phase_steps_done=d["phase_steps_done"], phase_steps=d["phase_steps"],
                   phase_stats=arr(d["phase_stats"]), phases_started=d["phases_started"],
                   log_stats=arr(d["log_stats"]),
                   signal_sums={k: arr(v) for k, v in d["signal_sums"].items()})


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
                 evaluator: Evaluator, model, metrics: MetricsSink, train_iters: int, log_interval: int,
                 eval_interval: int | None, hooks: LoopHooks, repetition: RepetitionTracker | None = None) -> None:
        self.mixer = mixer
        self.runner = runner
        self.blend = blend
        self.schedule = schedule
        self.evaluator = evaluator
        self.model = model
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
        state.phase_stats = torch.zeros(3 * self.k, dtype=torch.float64, device=self.device)
        state.phases_started += 1
        self.metrics.record({"event": "phase", "step": state.iteration, "steps": steps, "kind": phase.kind,
                             "weights": self._named(weights), "evaluate": phase.evaluate, "info": phase.info})

    def _finish_phase(self, state: LoopState) -> None:
        phase = state.phase
        val = self._evaluate(state.iteration) if phase.evaluate else None
        stats = _host(state.phase_stats)
        with np.errstate(invalid="ignore", divide="ignore"):
            train_loss = np.where(stats[self.k:2 * self.k] > 0, stats[:self.k] / stats[self.k:2 * self.k], np.nan)
            signals = {}
            if "excess_loss" in phase.signals:
                signals["excess_loss"] = np.where(stats[self.k:2 * self.k] > 0,
                                                  stats[2 * self.k:] / stats[self.k:2 * self.k], 0.0)
        for name, total in state.signal_sums.items():
            signals[name] = np.asarray(total) / max(state.phase_steps, 1)
        obs = Observation(step=state.iteration, steps=state.phase_steps, train_loss=train_loss, val_loss=val,
                          signals=signals)
        for event in self.mixer.observe(phase, obs):
            self.metrics.record(event)
        state.phase = None
        state.phase_stats = None
        state.signal_sums = {}

    def _evaluate(self, iteration: int) -> np.ndarray:
        val = self.evaluator.evaluate(self.model)
        self.metrics.record({"event": "eval", "step": iteration, "val_loss": self._named(val),
                             "val_ppl": self._named(perplexity(val)),
                             "avg_val_loss": float(np.nanmean(val))})
        return val

    # ------------------------------------------------------------------ steps
    def _train_one(self, state: LoopState) -> None:
        phase = state.phase
        t0 = time.perf_counter()
        stats, extras = self.runner.run(state.iteration, loss_weights=phase.loss_weights, signals=phase.signals)
        state.phase_stats[:stats.shape[0]] += stats  # stays on the device: no host sync per step
        for name, values in extras.items():
            state.signal_sums[name] = state.signal_sums.get(name, 0.0) + values
        state.phase_steps_done += 1
        state.iteration += 1
        if self.repetition:
            self.repetition.after_step(state.iteration)
        if state.log_stats is None:
            state.log_stats = torch.zeros(2 * self.k, dtype=torch.float64, device=self.device)
        state.log_stats += stats[:2 * self.k]
        self._interval[0] += 1
        self._interval[1] += time.perf_counter() - t0
        if state.iteration % self.log_interval == 0 or state.iteration == self.train_iters:
            self._log_train(state)
        if self.eval_interval and state.iteration % self.eval_interval == 0 and not (
                phase.evaluate and state.phase_steps_done == state.phase_steps):
            self._evaluate(state.iteration)

    def _log_train(self, state: LoopState) -> None:
        t0 = time.perf_counter()
        log = _host(state.log_stats)  # the interval's one host sync; its wait is the tail of the steps' time
        steps, seconds = self._interval[0], self._interval[1] + time.perf_counter() - t0
        sums, counts = log[:self.k], log[self.k:]
        with np.errstate(invalid="ignore", divide="ignore"):
            per_domain = np.where(counts > 0, sums / counts, np.nan)
        loss = float(sums.sum() / max(counts.sum(), 1))
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
    def run(self, state: LoopState) -> LoopState:
        """Train until ``train_iters`` (or an exit request); return the final state."""
        state.phase_stats = _device(state.phase_stats, self.device)  # a restored state holds numpy
        state.log_stats = _device(state.log_stats, self.device)
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
