"""MixingConfig: which mixing method runs and its shared settings."""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("stratified", "natural", "static", "aioli", "skillit", "doremi", "doge")


@dataclass
class MixingConfig:
    """Settings shared by every mixing method (method-specific ones live in their own configs)."""

    method: str = "stratified"
    """One of METHODS."""
    update_interval: int = 200
    """Steps per phase / round (--mixing-update-interval); Aioli's round length U."""
    mixture_weights: tuple[float, ...] | None = None
    """Static weights, from --data-path weights or --mixture-weights FILE."""
    mixture_out: str | None = None
    """Write the method's learned proportions here at the end (--mixture-out)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--mixing-method: unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.update_interval < 1:
            raise ValueError(f"--mixing-update-interval must be >= 1, got {self.update_interval}")
        if self.method == "static" and self.mixture_weights is None:
            raise ValueError("--mixing-method static needs weights: give them in --data-path "
                             "(W1 PREFIX1 W2 PREFIX2 ...) or with --mixture-weights FILE")
