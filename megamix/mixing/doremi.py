"""DoReMi's proxy run (Xie et al., 2023) as a mixer: Group-DRO weights α on the training loss.

The proxy samples uniformly; its objective is Σ_i α_i · (mean token loss of domain i)
(``Phase.loss_weights``). After each phase the loop reports the per-domain excess loss
λ_i = mean over domain-i tokens of max(ℓ_proxy − ℓ_ref, 0) (``"excess_loss"``), and
log α ← log α + μ λ; α ← softmax; α ← (1 − c) α + c/K. A domain with no tokens in the
phase (NaN) gets λ_i = 0. The learned weights are the step-weighted average of α_t.
"""

from __future__ import annotations

import numpy as np

from megamix.mixing import law
from megamix.mixing.base import Mixer, MixerContext, Observation, Phase
from megamix.mixing.config import DoReMiConfig


def doremi_update(alpha: np.ndarray, excess: np.ndarray, step_size: float, smoothing: float) -> np.ndarray:
    """One DoReMi α update from the per-domain excess losses (NaN counts as 0)."""
    lam = np.nan_to_num(np.asarray(excess, dtype=np.float64), nan=0.0)
    a = law.softmax(np.log(np.maximum(alpha, 1e-300)) + step_size * lam)
    return (1.0 - smoothing) * a + smoothing / a.shape[0]


class _AveragingMixer(Mixer):
    """Shared state of the per-step proxies: current weights and their step-weighted average."""

    def __init__(self, ctx: MixerContext, cfg, interval: int) -> None:
        super().__init__(ctx)
        self.cfg = cfg
        self.interval = interval
        self.w = np.full(ctx.num_domains, 1.0 / ctx.num_domains)
        self.avg_sum = np.zeros(ctx.num_domains)
        self.avg_steps = 0

    def _phase_steps_and_eval(self, step: int) -> tuple[int, bool]:
        """The next phase's length and whether it ends on a multiple of the update interval U."""
        steps = self.cfg.phase_steps
        return steps, (step + steps) // self.interval > step // self.interval

    def _accumulate(self, steps: int) -> None:
        """Count the (updated) weights for ``steps`` steps in the time average."""
        self.avg_sum += self.w * steps
        self.avg_steps += steps

    def state_dict(self) -> dict:
        """Current weights and the average accumulators."""
        return {"w": self.w.tolist(), "avg_sum": self.avg_sum.tolist(), "avg_steps": self.avg_steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.w = np.asarray(state["w"], dtype=np.float64)
        self.avg_sum = np.asarray(state["avg_sum"], dtype=np.float64)
        self.avg_steps = int(state["avg_steps"])

    def learned_weights(self) -> np.ndarray:
        """The time-averaged weights (the current ones before any update)."""
        return self.w.copy() if self.avg_steps == 0 else self.avg_sum / self.avg_steps


class DoReMiMixer(_AveragingMixer):
    """DoReMi proxy: uniform sampling, α-weighted objective, α updated from excess losses."""

    name = "doremi"

    def __init__(self, ctx: MixerContext, cfg: DoReMiConfig, interval: int) -> None:
        super().__init__(ctx, cfg, interval)

    def next_phase(self, step: int, remaining: int) -> Phase:
        """``phase_steps`` steps at uniform sampling with loss weights α; evaluates every U steps."""
        steps, evaluate = self._phase_steps_and_eval(step)
        k = self.ctx.num_domains
        return Phase(np.ones(k), steps, evaluate=evaluate, kind="proxy", loss_weights=self.w,
                     signals=("excess_loss",))

    def observe(self, phase: Phase, obs: Observation) -> list[dict]:
        """Update α from the phase's excess losses."""
        excess = obs.signals.get("excess_loss")
        if excess is None:
            raise ValueError("doremi: the loop did not report the 'excess_loss' signal")
        before = self.w
        self.w = doremi_update(self.w, excess, self.cfg.step_size, self.cfg.smoothing)
        self._accumulate(obs.steps)
        return [{"event": "doremi_update", "step": obs.step, "excess_loss": np.asarray(excess).tolist(),
                 "weights_before": before.tolist(), "weights": self.w.tolist(),
                 "average": self.learned_weights().tolist()}]
