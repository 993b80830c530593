"""build_mixer: turn a MixingConfig into the Mixer for the run."""

from __future__ import annotations

import numpy as np

from megamix.mixing.base import Mixer, MixerContext
from megamix.mixing.config import MixingConfig
from megamix.mixing.simple import FixedMixer, natural, stratified


def build_mixer(cfg: MixingConfig, ctx: MixerContext) -> Mixer:
    """The Mixer for ``cfg.method`` over the run described by ``ctx``."""
    if cfg.method == "stratified":
        return stratified(ctx, cfg.update_interval)
    if cfg.method == "natural":
        return natural(ctx, cfg.update_interval)
    if cfg.method == "static":
        return FixedMixer(ctx, np.asarray(cfg.mixture_weights), cfg.update_interval)
    raise ValueError(f"--mixing-method {cfg.method}: not available in this build")
