"""DataConfig: which domains are trained on, how they are split, packed and cached."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from megamix.data.schedule import normalize_weights

_DOCUMENT_SUFFIX = "_text_document"


@dataclass(frozen=True)
class DomainSpec:
    """One domain of ``--data-path``: its name, dataset prefix and optional static weight."""

    name: str
    """Domain name (file name of the prefix without ``_text_document`` unless given as NAME=PREFIX)."""
    prefix: str
    """Path prefix of the MMIDIDX dataset (``<prefix>.bin`` / ``<prefix>.idx``)."""
    weight: float | None = None
    """Static mixture weight from ``--data-path W1 PREFIX1 ...``; None when not given."""

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "=/ ,"):
            raise ValueError(f"--data-path: domain name {self.name!r} must be non-empty and free of '=', '/', ' ', ','")
        if not self.prefix:
            raise ValueError(f"--data-path: domain {self.name!r} has an empty prefix")
        if self.weight is not None and (not math.isfinite(self.weight) or self.weight < 0):
            raise ValueError(f"--data-path: weight of domain {self.name!r} must be finite and >= 0, "
                             f"got {self.weight}")


def default_domain_name(prefix: str) -> str:
    """Domain name of a prefix: its file name with a trailing ``_text_document`` removed."""
    base = os.path.basename(prefix.rstrip("/"))
    if base.endswith(_DOCUMENT_SUFFIX) and len(base) > len(_DOCUMENT_SUFFIX):
        base = base[: -len(_DOCUMENT_SUFFIX)]
    return base


def _parse_prefix(token: str) -> tuple[str, str]:
    """(name, prefix) of one ``PREFIX`` or ``NAME=PREFIX`` token."""
    if "=" in token:
        name, prefix = token.split("=", 1)
        if not name or not prefix:
            raise ValueError(f"--data-path: {token!r} is not NAME=PREFIX (both parts must be non-empty)")
        return name, prefix
    return default_domain_name(token), token


def _as_weight(token: str) -> float | None:
    try:
        return float(token)
    except ValueError:
        return None


def parse_data_path(tokens: list[str]) -> list[DomainSpec]:
    """Domains from Megatron's ``--data-path`` forms: ``P1 P2 ...`` or ``W1 P1 W2 P2 ...`` (P = [NAME=]PREFIX)."""
    tokens = [t for tok in tokens for t in str(tok).split()]
    if not tokens:
        raise ValueError("--data-path: expected at least one dataset prefix, got none")
    weighted = _as_weight(tokens[0]) is not None
    if weighted:
        if len(tokens) % 2:
            raise ValueError(f"--data-path: weighted form needs pairs W1 PREFIX1 W2 PREFIX2 ..., "
                             f"got an odd number of items ({len(tokens)}): {tokens}")
        pairs = [(tokens[i], tokens[i + 1]) for i in range(0, len(tokens), 2)]
    else:
        pairs = [(None, t) for t in tokens]
    specs = [_spec_of(w, p, weighted) for w, p in pairs]
    _check_unique(specs)
    if weighted:
        normalize_weights([s.weight for s in specs], what="--data-path: weights")
    return specs


def _spec_of(weight_token: str | None, prefix_token: str, weighted: bool) -> DomainSpec:
    weight = None
    if weighted:
        weight = _as_weight(weight_token)
        if weight is None:
            raise ValueError(f"--data-path: expected a weight before prefix {prefix_token!r}, got {weight_token!r}")
    elif _as_weight(prefix_token) is not None:
        raise ValueError(f"--data-path: {prefix_token!r} looks like a weight; give a weight before every "
                         "prefix or before none")
    name, prefix = _parse_prefix(prefix_token)
    return DomainSpec(name=name, prefix=prefix, weight=weight)


def _check_unique(specs: list[DomainSpec]) -> None:
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"--data-path: duplicate domain name {spec.name!r} (prefixes {seen[spec.name]!r} and "
                             f"{spec.prefix!r}); name them with NAME=PREFIX")
        seen[spec.name] = spec.prefix


def parse_split(text: str) -> tuple[float, float, float]:
    """Train/valid/test fractions from ``--split`` (``"98,1,1"``; ``"98,2"`` means test 0), normalised."""
    parts = [p.strip() for p in str(text).replace("/", ",").split(",")]
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"--split: expected up to three comma-separated numbers like 98,1,1, got {text!r}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"--split: expected numbers like 98,1,1, got {text!r}") from None
    values += [0.0] * (3 - len(values))
    return _normalise_split(values, text)


def _normalise_split(values: list[float], text: object) -> tuple[float, float, float]:
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"--split: fractions must be finite and >= 0, got {text!r}")
    total = sum(values)
    if total <= 0:
        raise ValueError(f"--split: fractions must have a positive sum, got {text!r}")
    if values[0] <= 0:
        raise ValueError(f"--split: the train fraction must be > 0, got {text!r}")
    if abs(total - 1.0) < 1e-12:  # already normalised (a stored config): keep the exact floats
        return tuple(values)  # type: ignore[return-value]
    return tuple(v / total for v in values)  # type: ignore[return-value]


SPLITS = ("train", "valid", "test")


@dataclass
class DataConfig:
    """Data settings: domains (--data-path), split, packing, seed, cache and eval set size."""

    data_path: list[DomainSpec] = field(default_factory=list)
    """Domains in order; also accepts the raw ``--data-path`` tokens (parsed with parse_data_path)."""
    split: tuple[float, float, float] = (0.98, 0.01, 0.01)
    """Train/valid/test document fractions (--split; a "98,1,1" string is parsed), normalised."""
    seq_length: int = 1024
    """Tokens per training sample (--seq-length); windows read seq_length + 1 tokens."""
    seed: int = 1234
    """Seed of the epoch order and sample shuffle, and of the document split unless split_seed is set (--seed)."""
    split_seed: int | None = None
    """Seed of the train/valid/test document split alone; None means --seed (--split-seed)."""
    data_cache_path: str | None = None
    """Directory for cached index files (--data-cache-path); default ``<dir of first prefix>/cache``."""
    eval_samples_per_domain: int = 64
    """Fixed validation samples evaluated per domain (--eval-samples-per-domain)."""
    dataloader_prefetch: int = 2
    """Steps of batches assembled ahead by a background thread; 0 reads in the step (--dataloader-prefetch)."""

    def __post_init__(self) -> None:
        if self.data_path and all(isinstance(d, str) for d in self.data_path):
            self.data_path = parse_data_path(list(self.data_path))
        if not self.data_path or not all(isinstance(d, DomainSpec) for d in self.data_path):
            raise ValueError("--data-path: expected at least one domain (PREFIX or W PREFIX pairs)")
        _check_unique(self.data_path)
        if len({d.weight is None for d in self.data_path}) > 1:
            raise ValueError("--data-path: give a weight for every domain or for none")
        self.split = parse_split(self.split) if isinstance(self.split, str) else _normalise_split(
            [float(v) for v in self.split], self.split)
        self._check_ints()

    def _check_ints(self) -> None:
        if not isinstance(self.seq_length, int) or self.seq_length < 1:
            raise ValueError(f"--seq-length must be an integer >= 1, got {self.seq_length!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed must be an integer >= 0, got {self.seed!r}")
        if self.split_seed is not None and (not isinstance(self.split_seed, int) or self.split_seed < 0):
            raise ValueError(f"--split-seed must be an integer >= 0, got {self.split_seed!r}")
        if not isinstance(self.eval_samples_per_domain, int) or self.eval_samples_per_domain < 0:
            raise ValueError(f"--eval-samples-per-domain must be an integer >= 0, got {self.eval_samples_per_domain!r}")
        if not isinstance(self.dataloader_prefetch, int) or self.dataloader_prefetch < 0:
            raise ValueError(f"--dataloader-prefetch must be an integer >= 0, got {self.dataloader_prefetch!r}")

    @property
    def weights(self) -> tuple[float, ...] | None:
        """Static weights from --data-path (as given, not normalised), or None."""
        if self.data_path[0].weight is None:
            return None
        return tuple(float(d.weight) for d in self.data_path)  # type: ignore[arg-type]

    @property
    def cache_dir(self) -> str:
        """Directory of the cached index files (data_cache_path or ``<dir of first prefix>/cache``)."""
        if self.data_cache_path:
            return self.data_cache_path
        return os.path.join(os.path.dirname(os.path.abspath(self.data_path[0].prefix)), "cache")
