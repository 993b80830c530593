"""A simulated training environment for mixer tests: losses follow the linear dynamic law.

``LinearLawEnv`` moves per-domain losses by L ← L − scale · A p + noise each step;
``drive`` runs a Mixer against it exactly as the phase loop does (cut to ``remaining``,
evaluate when asked, observe), optionally round-tripping the mixer state and the phase in
progress through JSON at every phase boundary, as a checkpoint/resume would.
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np

from megamix.mixing.base import Mixer, Observation, Phase


class LinearLawEnv:
    """Per-domain losses evolving by the linear dynamic law, with seeded Gaussian noise."""

    def __init__(self, a, l0, noise: float = 0.0, seed: int = 0, scale: float = 1e-3,
                 signal_fns: dict[str, Callable] | None = None) -> None:
        self.a = np.asarray(a, dtype=np.float64)
        self.loss = np.asarray(l0, dtype=np.float64).copy()
        self.noise = noise
        self.scale = scale
        self.rng = np.random.default_rng(seed)
        self.signal_fns = signal_fns or {}
        self.trained = []  # (weights, steps) of every phase

    def step(self, p: np.ndarray) -> np.ndarray:
        """One training step at mixture p; returns the loss before the step."""
        before = self.loss.copy()
        self.loss = self.loss - self.scale * (self.a @ p) + self.noise * self.rng.normal(size=self.loss.shape)
        return before

    def train(self, p: np.ndarray, steps: int, signals=()) -> tuple[np.ndarray, dict]:
        """Train ``steps`` steps at p: mean train loss (NaN where p is 0) and averaged signals."""
        k = self.loss.shape[0]
        self.trained.append((np.asarray(p).tolist(), steps))
        if steps == 0:
            return np.full(k, np.nan), {}
        sums, sig = np.zeros(k), {}
        for _ in range(steps):
            for name in signals:
                sig[name] = sig.get(name, 0.0) + np.asarray(self.signal_fns[name](p, self.loss), dtype=np.float64)
            sums += self.step(p)
        train = np.where(np.asarray(p) > 0, sums / steps, np.nan)
        return train, {name: v / steps for name, v in sig.items()}

    def evaluate(self) -> np.ndarray:
        """Per-domain validation loss now."""
        return self.loss.copy()


def _roundtrip(mixer: Mixer, make_mixer: Callable[[], Mixer]) -> Mixer:
    """A fresh mixer restored from ``mixer``'s state sent through JSON."""
    state = json.loads(json.dumps(mixer.state_dict()))
    fresh = make_mixer()
    fresh.load_state_dict(state)
    return fresh


def drive(mixer: Mixer, env: LinearLawEnv, total_steps: int, roundtrip: bool = False,
          make_mixer: Callable[[], Mixer] | None = None, record: list | None = None) -> tuple[Mixer, list[dict]]:
    """Run ``mixer`` for ``total_steps`` as the loop does; returns the (last) mixer and its events."""
    step, events = 0, []
    while step < total_steps:
        remaining = total_steps - step
        phase = mixer.next_phase(step, remaining)
        if roundtrip:
            mixer = _roundtrip(mixer, make_mixer)
            phase = Phase.from_dict(json.loads(json.dumps(phase.to_dict())))
        steps = min(phase.steps, remaining)
        train, signals = env.train(phase.weights, steps, phase.signals)
        step += steps
        val = env.evaluate() if phase.evaluate else None
        if record is not None:
            record.append({"step": step, "kind": phase.kind, "steps": steps, "weights": phase.weights.tolist(),
                           "loss_weights": None if phase.loss_weights is None else phase.loss_weights.tolist(),
                           "signals": list(phase.signals)})
        events += mixer.observe(phase, Observation(step, steps, train, val, signals))
        for ev in events:
            assert "event" in ev
        if roundtrip:
            mixer = _roundtrip(mixer, make_mixer)
    return mixer, events
