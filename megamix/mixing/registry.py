"""build_mixer: turn a MixingConfig into the Mixer for the run."""

from __future__ import annotations

import numpy as np

from megamix.mixing.aioli import AioliMixer
from megamix.mixing.base import Mixer, MixerContext
from megamix.mixing.config import MixingConfig
from megamix.mixing.doge import DoGEMixer
from megamix.mixing.doremi import DoReMiMixer
from megamix.mixing.simple import FixedMixer, natural, stratified
from megamix.mixing.skillit import SkillItMixer
from megamix.mixing.weights_file import read_weights_file


def build_mixer(cfg: MixingConfig, ctx: MixerContext) -> Mixer:
    """The Mixer for ``cfg.method`` over the run described by ``ctx``."""
    u = cfg.update_interval
    if cfg.method == "stratified":
        return stratified(ctx, u)
    if cfg.method == "natural":
        return natural(ctx, u)
    if cfg.method == "static":
        if cfg.mixture_weights is None:
            return FixedMixer(ctx, read_weights_file(cfg.mixture_weights_file, ctx.domains), u)
        return FixedMixer(ctx, np.asarray(cfg.mixture_weights), u)
    if cfg.method == "aioli":
        return AioliMixer(ctx, cfg.aioli, u)
    if cfg.method == "skillit":
        return SkillItMixer(ctx, cfg.skillit, u)
    if cfg.method == "doremi":
        return DoReMiMixer(ctx, cfg.doremi, u)
    if cfg.method == "doge":
        return DoGEMixer(ctx, cfg.doge, u)
    raise ValueError(f"--mixing-method {cfg.method}: not available in this build")
