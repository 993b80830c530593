"""The fixed-proportion methods: stratified (uniform), natural (by token count), static (given)."""

from __future__ import annotations

import numpy as np

from megamix.mixing.base import MethodSpec, Mixer, MixerContext, Phase, as_simplex
from megamix.mixing.weights_file import read_weights_file


class FixedMixer(Mixer):
    """Trains at one fixed mixture, in phases of ``interval`` steps, evaluating at step 0 and after each phase."""

    name = "static"

    def __init__(self, ctx: MixerContext, weights: np.ndarray, interval: int) -> None:
        super().__init__(ctx)
        self.weights = as_simplex(weights, ctx.num_domains, f"{self.name} weights")
        self.interval = interval
        self._start_evaluated = False

    def next_phase(self, step: int, remaining: int) -> Phase:
        """An evaluation of the untrained model first, then intervals at the fixed weights, each evaluated."""
        if step == 0 and not self._start_evaluated:
            self._start_evaluated = True
            return Phase(self.weights, 0, evaluate=True, kind="eval")
        return Phase(self.weights, min(self.interval, remaining), evaluate=True)

    def learned_weights(self) -> np.ndarray:
        """The fixed weights (so any method can write a --mixture-out file)."""
        return self.weights


def stratified(ctx: MixerContext, interval: int) -> FixedMixer:
    """p = 1/K throughout: the reference every method is compared with."""
    mixer = FixedMixer(ctx, np.ones(ctx.num_domains), interval)
    mixer.name = "stratified"
    return mixer


def natural(ctx: MixerContext, interval: int) -> FixedMixer:
    """p proportional to each domain's train-split token count."""
    mixer = FixedMixer(ctx, np.asarray(ctx.train_tokens, dtype=np.float64), interval)
    mixer.name = "natural"
    return mixer


def _static(ctx: MixerContext, cfg) -> FixedMixer:
    """The weights from --data-path, or from the --mixture-weights file read by domain name."""
    if cfg.mixture_weights is None:
        return FixedMixer(ctx, read_weights_file(cfg.mixture_weights_file, ctx.domains), cfg.update_interval)
    return FixedMixer(ctx, np.asarray(cfg.mixture_weights), cfg.update_interval)


METHODS = (
    MethodSpec(name="stratified", summary="p = 1/K throughout (the reference)",
               build=lambda ctx, cfg: stratified(ctx, cfg.update_interval)),
    MethodSpec(name="natural", summary="p proportional to each domain's train tokens",
               build=lambda ctx, cfg: natural(ctx, cfg.update_interval)),
    MethodSpec(name="static", summary="fixed p from --data-path weights or --mixture-weights FILE", build=_static),
)
