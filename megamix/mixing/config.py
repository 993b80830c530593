"""MixingConfig: which mixing method runs, the settings every method shares, and its own options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from megamix.config_dict import config_from_dict
from megamix.mixing.registry import import_plugins, method_spec


@dataclass
class MixingConfig:
    """Settings shared by every mixing method, plus the running method's own config (``options``)."""

    method: str = "stratified"
    """A registered method name (--mixing-method)."""
    update_interval: int = 200
    """Steps per phase / round (--mixing-update-interval); an online method's round length U."""
    mixture_weights: tuple[float, ...] | None = None
    """Static weights, from --data-path weights or --mixture-weights FILE."""
    mixture_weights_file: str | None = None
    """--mixture-weights FILE when it could not be read yet (read by domain name when the mixer is built)."""
    mixture_out: str | None = None
    """Write the method's learned proportions here at the end (--mixture-out)."""
    options: Any = None
    """The method's config dataclass instance (its MethodSpec.config); None for a method without options."""
    plugins: tuple[str, ...] = ()
    """Modules imported to register methods from outside megamix (--mixing-plugin)."""

    def __post_init__(self) -> None:
        self.plugins = tuple(self.plugins)
        import_plugins(self.plugins)
        spec = method_spec(self.method)
        if spec.config is None and self.options is not None:
            raise ValueError(f"--mixing-method {self.method} takes no options, got {self.options!r}")
        if spec.config is not None:
            if self.options is None:
                self.options = spec.config()
            elif not isinstance(self.options, spec.config):
                raise TypeError(f"--mixing-method {self.method}: options must be a {spec.config.__name__}, "
                                f"got {type(self.options).__name__}")
        if self.update_interval < 1:
            raise ValueError(f"--mixing-update-interval must be >= 1, got {self.update_interval}")
        if self.mixture_weights is not None and self.mixture_weights_file is not None:
            raise ValueError("static weights given twice: in --data-path and with --mixture-weights; keep one")
        if self.method == "static" and self.mixture_weights is None and self.mixture_weights_file is None:
            raise ValueError("--mixing-method static needs weights: give them in --data-path "
                             "(W1 PREFIX1 W2 PREFIX2 ...) or with --mixture-weights FILE")

    @classmethod
    def from_dict(cls, d: dict) -> "MixingConfig":
        """Inverse of ``dataclasses.asdict``: the options dict becomes the method's config again.

        The run's ``--mixing-plugin`` modules are imported first, so a plug-in method reads back too.
        """
        import_plugins(d.get("plugins", ()) if isinstance(d, dict) else ())
        spec = method_spec(d.get("method", cls.method)) if isinstance(d, dict) else None
        nested = {"options": spec.config} if spec and spec.config and d.get("options") is not None else {}
        return config_from_dict(cls, d, "mixing", nested)
