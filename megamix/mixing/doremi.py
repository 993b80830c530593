"""DoReMi's proxy run (Xie et al., 2023) as a mixer: Group-DRO weights α on the training loss.

The proxy samples uniformly; its objective is Σ_i α_i · (mean token loss of domain i)
(``Phase.loss_weights``). After each phase the loop reports the per-domain excess loss
λ_i = mean over domain-i tokens of max(ℓ_proxy − ℓ_ref, 0) (``"excess_loss"``), and
log α ← log α + μ λ; α ← softmax; α ← (1 − c) α + c/K. A domain with no tokens in the
phase (NaN) gets λ_i = 0. The learned weights are the step-weighted average of α_t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megamix.mixing import law
from megamix.mixing.base import MethodSpec, MixerContext, Observation, Phase, check_positive, option
from megamix.mixing.proxy import ProxyMixer, last_vector


@dataclass
class DoReMiConfig:
    """DoReMi proxy settings (MIXING.md, 'DoReMi')."""

    reference: str | None = option(None, "--doremi-reference", "checkpoint of the reference model (required)",
                                   metavar="DIR")
    step_size: float = option(1.0, "--doremi-step-size", "step size μ of the α update (default 1.0)")
    smoothing: float = option(1e-3, "--doremi-smoothing", "mixing c with the uniform distribution (default 1e-3)")
    phase_steps: int = option(1, "--doremi-update-steps", "steps between α updates (default 1, as in the paper)")

    def __post_init__(self) -> None:
        if self.reference is None:
            raise ValueError("--mixing-method doremi needs --doremi-reference DIR (the reference model's checkpoint)")
        check_positive(self.step_size, "--doremi-step-size")
        if not (0.0 <= self.smoothing < 1.0):
            raise ValueError(f"--doremi-smoothing must be in [0, 1), got {self.smoothing}")
        if self.phase_steps < 1:
            raise ValueError(f"--doremi-update-steps must be >= 1, got {self.phase_steps}")


def doremi_update(alpha: np.ndarray, excess: np.ndarray, step_size: float, smoothing: float) -> np.ndarray:
    """One DoReMi α update from the per-domain excess losses (NaN counts as 0)."""
    lam = np.nan_to_num(np.asarray(excess, dtype=np.float64), nan=0.0)
    a = law.softmax(np.log(np.maximum(alpha, 1e-300)) + step_size * lam)
    return (1.0 - smoothing) * a + smoothing / a.shape[0]


class DoReMiMixer(ProxyMixer):
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


METHOD = MethodSpec(
    name="doremi", summary="DoReMi proxy: Group-DRO loss weights from the excess loss over a reference model",
    build=lambda ctx, cfg: DoReMiMixer(ctx, cfg.options, cfg.update_interval), config=DoReMiConfig,
    signals=lambda options: {"excess_loss": "megamix.training.doremi_reference:excess_loss"},
    law_estimate=lambda events, options, key: last_vector(events, "doremi_update", "excess_loss"))
