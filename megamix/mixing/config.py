"""MixingConfig: which mixing method runs, its shared settings and each method's own config."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from megamix.config_dict import config_from_dict

METHODS = ("stratified", "natural", "static", "aioli", "skillit", "doremi", "doge")


def _positive(value: float, flag: str) -> None:
    """Raise unless ``value`` is a finite number > 0."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{flag} must be a finite number > 0, got {value!r}")


@dataclass
class AioliConfig:
    """Aioli's settings (MIXING.md, 'Aioli'); the round length U is MixingConfig.update_interval."""

    eta: float = 1.0
    """Exponentiated-gradient step size η (--aioli-eta)."""
    lp_rounds: int = 2
    """Sweeps k of the K probes per round (--aioli-lp-rounds)."""
    lp_steps: int = 10
    """Training steps s per probe (--aioli-lp-steps)."""
    one_hot_factor: float = 0.75
    """Probe weight f on the probed domain, in (1/K, 1] (--aioli-one-hot-factor)."""
    ema: float | None = None
    """EMA factor γ on A, in [0, 1); None disables smoothing (--aioli-ema)."""
    normalize_a: bool = True
    """Shift A to non-negative and scale it to sum 1 (--aioli-normalize-a)."""
    diagonal: bool = False
    """Use A = diag(B[j, j] / f) (--aioli-diagonal)."""
    update: str = "cumulative"
    """'cumulative' (p ∝ p·exp(η ΣE)) or 'reset' (from the start weights each round) (--aioli-update)."""
    prior: str | None = None
    """Weights file of prior proportions, the EG starting point (--aioli-prior)."""
    prior_steps: int = 0
    """Steps trained on the prior (uniform without --aioli-prior) before the first round (--aioli-prior-steps)."""
    loss_source: str = "val"
    """'val' (evaluate after each probe) or 'train' (probe training losses) (--aioli-loss-source)."""

    def __post_init__(self) -> None:
        _positive(self.eta, "--aioli-eta")
        if self.lp_rounds < 1:
            raise ValueError(f"--aioli-lp-rounds must be >= 1, got {self.lp_rounds}")
        if self.lp_steps < 1:
            raise ValueError(f"--aioli-lp-steps must be >= 1, got {self.lp_steps}")
        if not (0.0 < self.one_hot_factor <= 1.0):
            raise ValueError(f"--aioli-one-hot-factor must be in (1/K, 1], got {self.one_hot_factor}")
        if self.ema is not None and not (0.0 <= self.ema < 1.0):
            raise ValueError(f"--aioli-ema must be in [0, 1), got {self.ema}")
        if self.update not in ("cumulative", "reset"):
            raise ValueError(f"--aioli-update must be 'cumulative' or 'reset', got {self.update!r}")
        if self.prior_steps < 0:
            raise ValueError(f"--aioli-prior-steps must be >= 0, got {self.prior_steps}")
        if self.loss_source not in ("val", "train"):
            raise ValueError(f"--aioli-loss-source must be 'val' or 'train', got {self.loss_source!r}")

    def check_domains(self, k: int) -> None:
        """Validate the settings that depend on the number of domains K."""
        if k < 2:
            raise ValueError(f"aioli needs at least 2 domains, got {k}")
        if not (1.0 / k < self.one_hot_factor <= 1.0):
            raise ValueError(f"--aioli-one-hot-factor must be in (1/K, 1] = ({1.0 / k:.4g}, 1] "
                             f"for K={k} domains, got {self.one_hot_factor}")


@dataclass
class SkillItConfig:
    """Skill-It's settings (MIXING.md, 'Skill-It')."""

    graph: str | None = None
    """JSON file {"domains": [...], "graph": K×K} of the skills graph (--skillit-graph)."""
    eta: float = 0.2
    """Step size η (--skillit-eta)."""
    window: int = 3
    """Number of most recent evaluations summed in the update (--skillit-window)."""

    def __post_init__(self) -> None:
        _positive(self.eta, "--skillit-eta")
        if self.window < 1:
            raise ValueError(f"--skillit-window must be >= 1, got {self.window}")


@dataclass
class DoReMiConfig:
    """DoReMi proxy settings (MIXING.md, 'DoReMi')."""

    reference: str | None = None
    """Checkpoint directory of the reference model (--doremi-reference)."""
    step_size: float = 1.0
    """Step size μ of the α update (--doremi-step-size)."""
    smoothing: float = 1e-3
    """Mixing c with the uniform distribution, in [0, 1) (--doremi-smoothing)."""
    phase_steps: int = 1
    """Steps between α updates (--doremi-update-steps); 1 as in the paper."""

    def __post_init__(self) -> None:
        _positive(self.step_size, "--doremi-step-size")
        if not (0.0 <= self.smoothing < 1.0):
            raise ValueError(f"--doremi-smoothing must be in [0, 1), got {self.smoothing}")
        if self.phase_steps < 1:
            raise ValueError(f"--doremi-update-steps must be >= 1, got {self.phase_steps}")


@dataclass
class DoGEConfig:
    """DoGE proxy settings (MIXING.md, 'DoGE')."""

    mu: float = 0.01
    """Bregman regulariser μ: log w += score / μ (--doge-mu)."""
    phase_steps: int = 1
    """Steps between w updates (--doge-update-steps); 1 as in the paper."""

    def __post_init__(self) -> None:
        _positive(self.mu, "--doge-mu")
        if self.phase_steps < 1:
            raise ValueError(f"--doge-update-steps must be >= 1, got {self.phase_steps}")


@dataclass
class MixingConfig:
    """Settings shared by every mixing method, plus each method's own config."""

    method: str = "stratified"
    """One of METHODS."""
    update_interval: int = 200
    """Steps per phase / round (--mixing-update-interval); Aioli's round length U."""
    mixture_weights: tuple[float, ...] | None = None
    """Static weights, from --data-path weights or --mixture-weights FILE."""
    mixture_weights_file: str | None = None
    """--mixture-weights FILE when it could not be read yet (read by domain name in build_mixer)."""
    mixture_out: str | None = None
    """Write the method's learned proportions here at the end (--mixture-out)."""
    aioli: AioliConfig = field(default_factory=AioliConfig)
    """Aioli's settings (used when method == 'aioli')."""
    skillit: SkillItConfig = field(default_factory=SkillItConfig)
    """Skill-It's settings (used when method == 'skillit')."""
    doremi: DoReMiConfig = field(default_factory=DoReMiConfig)
    """DoReMi's settings (used when method == 'doremi')."""
    doge: DoGEConfig = field(default_factory=DoGEConfig)
    """DoGE's settings (used when method == 'doge')."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--mixing-method: unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.update_interval < 1:
            raise ValueError(f"--mixing-update-interval must be >= 1, got {self.update_interval}")
        if self.mixture_weights is not None and self.mixture_weights_file is not None:
            raise ValueError("static weights given twice: in --data-path and with --mixture-weights; keep one")
        if self.method == "static" and self.mixture_weights is None and self.mixture_weights_file is None:
            raise ValueError("--mixing-method static needs weights: give them in --data-path "
                             "(W1 PREFIX1 W2 PREFIX2 ...) or with --mixture-weights FILE")
        if self.method == "skillit" and self.skillit.graph is None:
            raise ValueError("--mixing-method skillit needs --skillit-graph FILE "
                             "(make one with tools/fit_mixing_law.py --method skillit-graph)")
        if self.method == "doremi" and self.doremi.reference is None:
            raise ValueError("--mixing-method doremi needs --doremi-reference DIR (the reference model's checkpoint)")

    @classmethod
    def from_dict(cls, d: dict) -> "MixingConfig":
        """Inverse of ``dataclasses.asdict``: each method's config rebuilt from its sub-dict."""
        return config_from_dict(cls, d, "mixing", {"aioli": AioliConfig, "skillit": SkillItConfig,
                                                    "doremi": DoReMiConfig, "doge": DoGEConfig})
