"""The mixing flags: generated from the registered methods' configs, parsed into a MixingConfig.

Each method's flags come from its config dataclass (fields declared with
``megamix.mixing.base.option``). They default to None here, so that a flag given for a
method that is not running is reported as a contradiction instead of being silently ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Sequence

from megamix.mixing.config import MixingConfig
from megamix.mixing.registry import import_plugins, method_names, method_spec
from megamix.mixing.weights_file import read_weights_file

_PASSED = ("choices", "metavar", "type", "action")


def _argparse_kwargs(f: dataclasses.Field) -> dict:
    """add_argument keywords of one option field (its type from the default when not declared)."""
    meta = f.metadata
    kwargs = {key: meta[key] for key in _PASSED if key in meta}
    if "type" not in kwargs and "action" not in kwargs and f.default is not None:
        kwargs["type"] = type(f.default)
    if "action" not in kwargs and "choices" not in kwargs:
        kwargs.setdefault("metavar", f.name.upper())
    return {"help": meta["help"], "default": None, "dest": f.name, **kwargs}


def _option_fields(config: type | None) -> list[dataclasses.Field]:
    """The fields of a method config that carry a flag."""
    return [] if config is None else [f for f in dataclasses.fields(config) if "flag" in f.metadata]


def import_plugin_flags(argv: Sequence[str]) -> None:
    """Import the ``--mixing-plugin`` modules named in ``argv`` (before the parser lists the methods)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--mixing-plugin", action="append", default=[])
    import_plugins(pre.parse_known_args(argv)[0].mixing_plugin)


def add_mixing_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the shared mixing flags and every registered method's flags to ``parser`` (returned)."""
    g = parser.add_argument_group("mixing")
    g.add_argument("--mixing-plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE (on PYTHONPATH) to register its mixing methods; repeatable")
    names = method_names()
    g.add_argument("--mixing-method", choices=names, default=None,
                   help="; ".join(f"{n}: {method_spec(n).summary}" for n in names)
                   + ". Default: static when --data-path has weights or --mixture-weights is given, else stratified")
    g.add_argument("--mixing-update-interval", type=int, default=200, help="steps per phase (a round of an online method)")
    g.add_argument("--mixture-weights", metavar="FILE", help="weights file for --mixing-method static")
    g.add_argument("--mixture-out", metavar="FILE", help="write the learned proportions here at the end")
    for name in names:
        fields = _option_fields(method_spec(name).config)
        if fields:
            group = parser.add_argument_group(f"mixing: {name}")
            for f in fields:
                kwargs = _argparse_kwargs(f)
                kwargs["dest"] = _dest(name, f)
                group.add_argument(f.metadata["flag"], **kwargs)
    return parser


def _dest(method: str, f: dataclasses.Field) -> str:
    """The argparse dest of a method option (namespaced, so two methods may share a field name)."""
    return f"mixing__{method}__{f.name}"


def _options(args: argparse.Namespace, method: str):
    """The running method's config from its flags; an error when another method's flag was given."""
    for name in method_names():
        if name == method:
            continue
        given = [f.metadata["flag"] for f in _option_fields(method_spec(name).config)
                 if getattr(args, _dest(name, f), None) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to --mixing-method {name}, but the method is {method}")
    config = method_spec(method).config
    if config is None:
        return None
    values = {f.name: getattr(args, _dest(method, f)) for f in _option_fields(config)
              if getattr(args, _dest(method, f), None) is not None}
    return config(**values)


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
    its path is kept and the static method reads it by domain name when it is built.
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
                        mixture_weights_file=pending, mixture_out=args.mixture_out, options=_options(args, method),
                        plugins=tuple(getattr(args, "mixing_plugin", ())))
