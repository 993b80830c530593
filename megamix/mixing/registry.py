"""The mixing methods: one module each, listed here once; ``build_mixer`` makes the run's Mixer.

A method module exports ``METHOD`` (or ``METHODS``, a tuple) of :class:`MethodSpec`.
A method outside megamix is a module named with ``--mixing-plugin MODULE``: it is imported
before the flags are built, and its ``METHOD``/``METHODS`` registered (``register_method``
does the same from Python). See docs/adding_a_mixer.md.
"""

from __future__ import annotations

import importlib

from megamix.mixing.base import MethodSpec, Mixer, MixerContext

BUILTIN_MODULES = (
    "megamix.mixing.simple",
    "megamix.mixing.aioli",
    "megamix.mixing.skillit",
    "megamix.mixing.doremi",
    "megamix.mixing.doge",
    "megamix.mixing.replay",
)

_METHODS: dict[str, MethodSpec] = {}
_builtins_loaded = False


def register_method(spec: MethodSpec) -> MethodSpec:
    """Make ``spec`` available as ``--mixing-method spec.name``; re-registering the same spec is a no-op."""
    _load_builtins()
    known = _METHODS.get(spec.name)
    if known is not None and known is not spec:
        raise ValueError(f"mixing method {spec.name!r} is already registered (by {known.build.__module__})")
    _METHODS[spec.name] = spec
    return spec


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for name in BUILTIN_MODULES:
        module = importlib.import_module(name)
        for spec in getattr(module, "METHODS", ()) or (module.METHOD,):
            register_method(spec)


def import_plugins(modules) -> None:
    """Import each ``--mixing-plugin`` module (importing it registers its methods)."""
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"--mixing-plugin {name}: cannot import it ({e}); is its folder on PYTHONPATH?") from e
        for spec in getattr(module, "METHODS", ()) or ((module.METHOD,) if hasattr(module, "METHOD") else ()):
            register_method(spec)


def method_names() -> tuple[str, ...]:
    """Every registered method, built-ins first."""
    _load_builtins()
    return tuple(_METHODS)


def method_spec(name: str) -> MethodSpec:
    """The spec of method ``name``; a clear error naming the choices otherwise."""
    names = method_names()
    if name not in _METHODS:
        raise ValueError(f"--mixing-method: unknown method {name!r}; choose from {', '.join(names)}")
    return _METHODS[name]


def build_mixer(cfg, ctx: MixerContext) -> Mixer:
    """The Mixer for ``cfg.method`` (a MixingConfig) over the run described by ``ctx``."""
    return method_spec(cfg.method).build(ctx, cfg)
