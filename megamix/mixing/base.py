"""The Mixer interface: every mixing method is a Mixer driven by the one phase loop.

The loop repeatedly asks ``mixer.next_phase(step, remaining)`` for a :class:`Phase`,
appends the phase's segment (``steps x global_batch`` samples at ``phase.weights``) to
the mixture schedule, trains those steps, evaluates when the phase asks for it, and
hands the result back with ``mixer.observe(phase, observation)``. Methods that need more
than sampling proportions ask for it through the Phase:

* ``loss_weights``: the step objective becomes
  ``sum_i loss_weights[i] * mean token loss of domain i in the global batch`` instead of
  the plain token mean.
* ``signals``: quantities computed beside the training step (an excess loss over a
  reference model, per-domain gradient scores, ...) by providers the method declares in
  its :class:`MethodSpec`; the loop sums them over the phase and the results arrive in
  ``Observation.signals`` under the same names (``megamix.training.signals``).

A method is one module: its Mixer, its config dataclass (fields declared with
:func:`option`, from which its flags are generated) and ``METHOD = MethodSpec(...)``,
listed once in ``megamix.mixing.registry`` (docs/adding_a_mixer.md).

Every rank runs the mixer on identical, all-reduced inputs; the loop broadcasts the
weights of each new phase from rank 0 and checks them, so a mixer must be deterministic
given its seed and observations. Mixer state must be JSON-serialisable
(``state_dict``); it goes into every checkpoint, together with the phase in progress.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from megamix.data.schedule import normalize_weights


def as_simplex(weights: Any, num_domains: int, what: str = "weights") -> np.ndarray:
    """Validate ``weights`` (finite, non-negative, positive sum, one per domain) and normalise."""
    return normalize_weights(np.asarray(weights, dtype=np.float64).reshape(-1), num_domains, what)


@dataclass(frozen=True)
class Phase:
    """A stretch of training at fixed sampling proportions, as requested by a Mixer."""

    weights: np.ndarray
    """Sampling proportions over the K domains (counts *samples* of seq_length+1 tokens)."""
    steps: int
    """Optimizer steps to train; 0 is allowed for an evaluation-only phase."""
    evaluate: bool = False
    """Run the per-domain validation evaluation at the end of the phase."""
    kind: str = "train"
    """A label recorded in metrics: 'train', 'probe', 'prior', 'eval', ..."""
    loss_weights: np.ndarray | None = None
    """Per-domain weights of the training objective (None: plain token mean)."""
    signals: tuple[str, ...] = ()
    """Per-step quantities the loop must compute; each must be declared by the method's MethodSpec."""
    info: dict = field(default_factory=dict)
    """Method-specific JSON-able fields recorded in the 'phase' metrics event."""

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"Phase.steps must be >= 0, got {self.steps}")
        w = np.asarray(self.weights, dtype=np.float64)
        object.__setattr__(self, "weights", as_simplex(w, w.shape[0], "Phase.weights"))
        if self.loss_weights is not None:
            lw = np.asarray(self.loss_weights, dtype=np.float64)
            if lw.shape != w.shape or not np.all(np.isfinite(lw)) or np.any(lw < 0):
                raise ValueError(f"Phase.loss_weights must be {w.shape[0]} finite non-negative values")
            object.__setattr__(self, "loss_weights", lw)

    def to_dict(self) -> dict:
        """JSON-able form (for checkpoints and metrics)."""
        return {
            "weights": self.weights.tolist(),
            "steps": self.steps,
            "evaluate": self.evaluate,
            "kind": self.kind,
            "loss_weights": None if self.loss_weights is None else self.loss_weights.tolist(),
            "signals": list(self.signals),
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Phase":
        """Inverse of :meth:`to_dict`."""
        lw = d.get("loss_weights")
        return cls(
            weights=np.asarray(d["weights"], dtype=np.float64),
            steps=int(d["steps"]),
            evaluate=bool(d["evaluate"]),
            kind=d.get("kind", "train"),
            loss_weights=None if lw is None else np.asarray(lw, dtype=np.float64),
            signals=tuple(d.get("signals", ())),
            info=d.get("info", {}),
        )


@dataclass
class Observation:
    """What the loop measured during one phase; identical on every rank."""

    step: int
    """Optimizer steps completed in the whole run at the end of the phase."""
    steps: int
    """Steps actually trained in this phase (may be fewer than asked at the end of the run)."""
    train_loss: np.ndarray
    """(K,) per-domain mean token training loss over the phase (NaN where a domain had no tokens)."""
    val_loss: np.ndarray | None = None
    """(K,) per-domain validation loss at the end of the phase, when the phase asked for it."""
    signals: dict[str, np.ndarray] = field(default_factory=dict)
    """Requested per-step signals, averaged over the phase's steps, each (K,)."""


@dataclass(frozen=True)
class MixerContext:
    """Facts about the run that every mixer may use."""

    domains: tuple[str, ...]
    """Domain names, in domain-id order."""
    train_tokens: tuple[int, ...]
    """Tokens in each domain's train split (for 'natural')."""
    train_iters: int
    """Total optimizer steps of the run."""
    global_batch_size: int
    """Samples per optimizer step."""
    seed: int
    """Run seed; mixers derive their own generators from it."""

    @property
    def num_domains(self) -> int:
        """K, the number of domains."""
        return len(self.domains)


class Mixer(ABC):
    """A mixing method: decides the next phase and learns from what the loop observed."""

    name: str = "mixer"

    def __init__(self, ctx: MixerContext) -> None:
        self.ctx = ctx

    @abstractmethod
    def next_phase(self, step: int, remaining: int) -> Phase:
        """The next phase to train, given ``step`` steps done and ``remaining > 0`` left.

        A phase longer than ``remaining`` is cut to ``remaining`` by the loop.
        """

    def observe(self, phase: Phase, obs: Observation) -> list[dict]:
        """Learn from a finished phase; return metrics events (dicts with an 'event' key)."""
        return []

    def state_dict(self) -> dict:
        """JSON-serialisable state, enough to continue exactly after a resume."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""

    def learned_weights(self) -> np.ndarray | None:
        """Proportions this method learned (e.g. time-averaged), for ``--mixture-out``; None if none."""
        return None


class TimeAverage:
    """The step-weighted average of a method's proportions: what ``--mixture-out`` writes."""

    def __init__(self, num_domains: int) -> None:
        self.total = np.zeros(num_domains)
        self.steps = 0

    def add(self, weights: np.ndarray, steps: int) -> None:
        """Count ``weights`` for ``steps`` trained steps."""
        self.total = self.total + np.asarray(weights, dtype=np.float64) * steps
        self.steps += int(steps)

    def value(self, current: np.ndarray) -> np.ndarray:
        """The average so far; ``current`` before any step was trained."""
        return np.asarray(current, dtype=np.float64).copy() if self.steps == 0 else self.total / self.steps

    def state_dict(self) -> dict:
        """JSON form, stored in the mixer's state."""
        return {"avg_sum": self.total.tolist(), "avg_steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.total = np.asarray(state["avg_sum"], dtype=np.float64)
        self.steps = int(state["avg_steps"])


# ------------------------------------------------------------ method declaration
def check_positive(value: float, flag: str) -> None:
    """Raise unless ``value`` is a finite number > 0 (the error names ``flag``)."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{flag} must be a finite number > 0, got {value!r}")


def option(default: Any, flag: str, help: str, **argparse_kwargs: Any) -> Any:
    """A method-config field that carries its command-line flag and help.

    ``argparse_kwargs`` (``type``, ``choices``, ``metavar``, ``action``) go to
    ``add_argument``; without ``type`` or ``action`` the type is that of ``default``.
    """
    return field(default=default, metadata={"flag": flag, "help": help, **argparse_kwargs})


@dataclass(frozen=True)
class MethodSpec:
    """Everything the rest of megamix knows about one mixing method.

    A method module defines its Mixer, its config dataclass (fields declared with
    :func:`option`, so its flags are generated from them) and a ``METHOD = MethodSpec(...)``;
    ``megamix.mixing.registry`` lists the module. Signals are computed on the training side
    by providers named as ``"module:attribute"`` and imported only when the method runs.
    """

    name: str
    """The --mixing-method value."""
    build: Callable[[MixerContext, Any], Mixer]
    """``build(ctx, mixing_config)``: the Mixer; the method's own settings are ``mixing_config.options``."""
    summary: str
    """One line for --help."""
    config: type | None = None
    """The method's config dataclass (its fields become flags); None when it has no options."""
    signals: Callable[[Any], Mapping[str, str]] = lambda options: {}
    """``signals(options)``: {signal name: "module:attribute" of its provider factory} the run must wire."""
    law_estimate: Callable[[list[dict], Any, str | None], tuple[np.ndarray, str]] | None = None
    """``law_estimate(events, options, key)``: the method's A (or its column sums) from metrics events."""
