"""The mixing flags: add them to a parser and turn parsed arguments into a MixingConfig.

Method-specific flags default to None so that a flag given for a method that is not
running is reported as a contradiction instead of being silently ignored.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from megamix.mixing.config import (METHODS, AioliConfig, DoGEConfig, DoReMiConfig, MixingConfig,
                                   SkillItConfig)
from megamix.mixing.weights_file import read_weights_file

# flag dest -> config field, per method
_AIOLI = {"aioli_eta": "eta", "aioli_lp_rounds": "lp_rounds", "aioli_lp_steps": "lp_steps",
          "aioli_one_hot_factor": "one_hot_factor", "aioli_ema": "ema", "aioli_normalize_a": "normalize_a",
          "aioli_diagonal": "diagonal", "aioli_update": "update", "aioli_prior": "prior",
          "aioli_prior_steps": "prior_steps", "aioli_loss_source": "loss_source"}
_SKILLIT = {"skillit_graph": "graph", "skillit_eta": "eta", "skillit_window": "window"}
_DOREMI = {"doremi_reference": "reference", "doremi_step_size": "step_size", "doremi_smoothing": "smoothing",
           "doremi_update_steps": "phase_steps"}
_DOGE = {"doge_mu": "mu", "doge_update_steps": "phase_steps"}
_GROUPS = {"aioli": (_AIOLI, AioliConfig), "skillit": (_SKILLIT, SkillItConfig),
           "doremi": (_DOREMI, DoReMiConfig), "doge": (_DOGE, DoGEConfig)}


def _add_aioli(g: argparse._ArgumentGroup) -> None:
    """Aioli's flags (MIXING.md)."""
    g.add_argument("--aioli-eta", type=float, help="EG step size η (default 1.0)")
    g.add_argument("--aioli-lp-rounds", type=int, help="probe sweeps k per round (default 2)")
    g.add_argument("--aioli-lp-steps", type=int, help="steps s per probe (default 10)")
    g.add_argument("--aioli-one-hot-factor", type=float, help="probe weight f in (1/K, 1] (default 0.75)")
    g.add_argument("--aioli-ema", type=float, help="EMA γ on A (default off; the paper's runs used 0.1)")
    g.add_argument("--aioli-normalize-a", action=argparse.BooleanOptionalAction, default=None,
                   help="shift/scale A to a non-negative matrix summing to 1 (default on)")
    g.add_argument("--aioli-diagonal", action="store_true", default=None, help="A = diag(B[j, j] / f)")
    g.add_argument("--aioli-update", choices=("cumulative", "reset"), help="EG from current p or from the start")
    g.add_argument("--aioli-prior", metavar="FILE", help="weights file of prior proportions")
    g.add_argument("--aioli-prior-steps", type=int, help="steps trained on the prior before round 1")
    g.add_argument("--aioli-loss-source", choices=("val", "train"), help="probe losses from val evals or train")


def _add_baselines(g: argparse._ArgumentGroup) -> None:
    """Skill-It, DoReMi and DoGE flags."""
    g.add_argument("--skillit-graph", metavar="FILE", help="skills graph JSON {domains, graph}")
    g.add_argument("--skillit-eta", type=float, help="Skill-It step size η (default 0.2)")
    g.add_argument("--skillit-window", type=int, help="evaluations summed per update (default 3)")
    g.add_argument("--doremi-reference", metavar="DIR", help="checkpoint of the DoReMi reference model")
    g.add_argument("--doremi-step-size", type=float, help="DoReMi step size μ (default 1.0)")
    g.add_argument("--doremi-smoothing", type=float, help="DoReMi uniform smoothing c (default 1e-3)")
    g.add_argument("--doremi-update-steps", type=int, help="steps between α updates (default 1)")
    g.add_argument("--doge-mu", type=float, help="DoGE μ: log w += score/μ (default 0.01)")
    g.add_argument("--doge-update-steps", type=int, help="steps between w updates (default 1)")


def add_mixing_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every mixing flag to ``parser`` (returned for chaining)."""
    g = parser.add_argument_group("mixing")
    g.add_argument("--mixing-method", choices=METHODS, default=None,
                   help="default: static when --data-path has weights or --mixture-weights is given, "
                        "else stratified")
    g.add_argument("--mixing-update-interval", type=int, default=200, help="steps per phase / Aioli round U")
    g.add_argument("--mixture-weights", metavar="FILE", help="weights file for --mixing-method static")
    g.add_argument("--mixture-out", metavar="FILE", help="write the learned proportions here at the end")
    _add_aioli(g)
    _add_baselines(g)
    return parser


def _flag(dest: str) -> str:
    """The command-line spelling of an argparse dest."""
    return "--" + dest.replace("_", "-")


def _method_config(args: argparse.Namespace, method: str, name: str):
    """The config of method ``name`` from its flags; error when given for another method."""
    fields, cls = _GROUPS[name]
    given = {field: getattr(args, dest) for dest, field in fields.items() if getattr(args, dest, None) is not None}
    if given and method != name:
        flags = [_flag(d) for d, f in fields.items() if f in given]
        raise ValueError(f"{', '.join(flags)} only apply to --mixing-method {name}, "
                         f"but the method is {method}")
    return cls(**given)


def _static_weights(args: argparse.Namespace, data_path_weights: list[float] | None,
                    domains: Sequence[str] | None) -> tuple[float, ...] | None:
    """Weights from --data-path or --mixture-weights (never both); None while a file awaits the domains."""
    file = getattr(args, "mixture_weights", None)
    if file is not None and data_path_weights is not None:
        raise ValueError("weights given twice: in --data-path (W PREFIX pairs) and with --mixture-weights; keep one")
    if file is not None and domains is not None:
        return tuple(read_weights_file(file, domains).tolist())
    return None if data_path_weights is None else tuple(float(w) for w in data_path_weights)


def mixing_config_from_args(args: argparse.Namespace, data_path_weights: list[float] | None,
                            domains: Sequence[str] | None = None) -> MixingConfig:
    """The MixingConfig of parsed ``args``.

    With ``domains`` (names), a --mixture-weights file is read and checked now; without,
    its path is kept and build_mixer reads it by domain name.
    """
    weights = _static_weights(args, data_path_weights, domains)
    file = getattr(args, "mixture_weights", None)
    pending = file if (file is not None and weights is None) else None
    method = args.mixing_method or ("static" if weights is not None or pending else "stratified")
    if (weights is not None or pending) and method != "static":
        source = "--mixture-weights" if getattr(args, "mixture_weights", None) else "weights in --data-path"
        raise ValueError(f"{source} set static proportions, which contradicts --mixing-method {method}; "
                         f"drop them or use --mixing-method static")
    return MixingConfig(method=method, update_interval=args.mixing_update_interval, mixture_weights=weights,
                        mixture_weights_file=pending, mixture_out=args.mixture_out,
                        **{name: _method_config(args, method, name) for name in _GROUPS})
