"""DoGE's proxy run (Fan et al., 2024) as a mixer: sample at w, move w by gradient alignment.

Each phase the loop reports ``"domain_grad_scores"``: per domain j,
lr_t ⟨g_j, g_val⟩ / mean_j ‖g_j‖ clipped to [0, 5 lr_t], averaged over the phase's steps.
Then log w ← log w + score / μ; w ← softmax. Sampling uses the current w (as DoGE's proxy
resamples with its domain weights). A domain with no score (NaN) gets 0. The learned
weights are the step-weighted average of w_t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megamix.mixing import law
from megamix.mixing.base import MethodSpec, MixerContext, Observation, Phase, check_positive, option
from megamix.mixing.proxy import ProxyMixer, last_vector


@dataclass
class DoGEConfig:
    """DoGE proxy settings (MIXING.md, 'DoGE')."""

    mu: float = option(0.01, "--doge-mu", "Bregman regulariser μ: log w += score/μ (default 0.01)")
    phase_steps: int = option(1, "--doge-update-steps", "steps between w updates (default 1, as in the paper)")

    def __post_init__(self) -> None:
        check_positive(self.mu, "--doge-mu")
        if self.phase_steps < 1:
            raise ValueError(f"--doge-update-steps must be >= 1, got {self.phase_steps}")


def doge_update(w: np.ndarray, scores: np.ndarray, mu: float) -> np.ndarray:
    """One DoGE update: w ∝ w · exp(score / μ) (NaN scores count as 0)."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
    return law.eg_step(w, s, 1.0 / mu)


class DoGEMixer(ProxyMixer):
    """DoGE proxy: trains at w and updates w from per-domain gradient-alignment scores."""

    name = "doge"

    def __init__(self, ctx: MixerContext, cfg: DoGEConfig, interval: int) -> None:
        super().__init__(ctx, cfg, interval)

    def next_phase(self, step: int, remaining: int) -> Phase:
        """``phase_steps`` steps sampled at w; evaluates every U steps."""
        steps, evaluate = self._phase_steps_and_eval(step)
        return Phase(self.w, steps, evaluate=evaluate, kind="proxy", signals=("domain_grad_scores",))

    def observe(self, phase: Phase, obs: Observation) -> list[dict]:
        """Update w from the phase's gradient scores."""
        scores = obs.signals.get("domain_grad_scores")
        if scores is None:
            raise ValueError("doge: the loop did not report the 'domain_grad_scores' signal")
        before = self.w
        self.w = doge_update(self.w, scores, self.cfg.mu)
        self._accumulate(obs.steps)
        return [{"event": "doge_update", "step": obs.step, "scores": np.asarray(scores).tolist(),
                 "weights_before": before.tolist(), "weights": self.w.tolist(),
                 "average": self.learned_weights().tolist()}]


METHOD = MethodSpec(
    name="doge", summary="DoGE proxy: weights moved by per-domain gradient alignment with the validation gradient",
    build=lambda ctx, cfg: DoGEMixer(ctx, cfg.options, cfg.update_interval), config=DoGEConfig,
    signals=lambda options: {"domain_grad_scores": "megamix.training.doge_scores:DomainGradScorer"},
    law_estimate=lambda events, options, key: last_vector(events, "doge_update", "scores"))
