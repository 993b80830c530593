"""A complete mixing method in one file: "toy" up-weights the domains whose training loss is highest.

Every --mixing-update-interval steps: p ∝ exp(tilt · L_train), where L_train is the
per-domain training loss of the phase just trained. It also asks the step for two
signals, to show both kinds: ``toy_worst_token`` (per sample: the largest token loss,
averaged per token of each domain) and ``toy_lr`` (per step: the learning rate, for each
domain). Use it with ``--mixing-plugin toy_mixer --mixing-method toy --toy-tilt 0.5``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from megamix.mixing import law
from megamix.mixing.base import (MethodSpec, Mixer, MixerContext, Observation, Phase, TimeAverage,
                                 check_positive, option)
from megamix.training.signals import SignalEnv, SignalProvider


@dataclass
class ToyConfig:
    """The toy method's settings; each field declares its flag."""

    tilt: float = option(0.1, "--toy-tilt", "how strongly p follows the training loss (default 0.1)")

    def __post_init__(self) -> None:
        check_positive(self.tilt, "--toy-tilt")


class ToyMixer(Mixer):
    """p ∝ exp(tilt · training loss of the last phase)."""

    name = "toy"

    def __init__(self, ctx: MixerContext, cfg: ToyConfig, interval: int) -> None:
        super().__init__(ctx)
        self.cfg, self.interval = cfg, interval
        self.p = np.full(ctx.num_domains, 1.0 / ctx.num_domains)
        self.average = TimeAverage(ctx.num_domains)

    def next_phase(self, step: int, remaining: int) -> Phase:
        """U steps at p, with both signals."""
        return Phase(self.p, self.interval, evaluate=False, kind="train", signals=("toy_worst_token", "toy_lr"))

    def observe(self, phase: Phase, obs: Observation) -> list[dict]:
        """Move p towards the domains that were hardest in the phase."""
        self.average.add(self.p, obs.steps)
        loss = np.nan_to_num(obs.train_loss, nan=0.0)
        self.p = law.softmax(self.cfg.tilt * loss)
        return [{"event": "toy_update", "step": obs.step, "train_loss": loss.tolist(), "weights": self.p.tolist(),
                 "worst_token": obs.signals["toy_worst_token"].tolist(), "lr": obs.signals["toy_lr"].tolist()}]

    def state_dict(self) -> dict:
        """p and the time average (JSON)."""
        return {"p": self.p.tolist(), **self.average.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned."""
        self.p = np.asarray(state["p"], dtype=np.float64)
        self.average.load_state_dict(state)

    def learned_weights(self) -> np.ndarray:
        """The time-averaged p (what --mixture-out writes)."""
        return self.average.value(self.p)


class WorstToken(SignalProvider):
    """Per sample: its largest token loss (a per-sample signal, averaged per token by the loop)."""

    per_sample = True

    def sample_values(self, micro_batch, losses: torch.Tensor) -> torch.Tensor:
        """The max over the sample's tokens, counted once per token so the phase value is its mean."""
        return losses.detach().max(dim=1).values * losses.shape[1]


class LearningRate(SignalProvider):
    """Per step: the learning rate, the same for every domain (a per-step signal)."""

    def __init__(self, num_domains: int, device: torch.device) -> None:
        self.k, self.device = num_domains, device

    def before_step(self, step: int, batch, lr: float) -> torch.Tensor:
        """lr for each domain (identical on every rank without a collective)."""
        return torch.full((self.k,), lr, dtype=torch.float64, device=self.device)


METHOD = MethodSpec(
    name="toy", summary="toy: p ∝ exp(tilt · training loss) (an example plug-in)",
    build=lambda ctx, cfg: ToyMixer(ctx, cfg.options, cfg.update_interval), config=ToyConfig,
    signals=lambda options: {"toy_worst_token": "toy_mixer:worst_token", "toy_lr": "toy_mixer:learning_rate"})


def worst_token(env: SignalEnv, options: ToyConfig) -> WorstToken:
    """Factory of the per-sample signal (called once by the run, before training)."""
    return WorstToken()


def learning_rate(env: SignalEnv, options: ToyConfig) -> LearningRate:
    """Factory of the per-step signal."""
    return LearningRate(env.layout.num_domains, env.device)
