"""Preemption: an exit signal (SIGTERM, SIGUSR1) asks every rank to finish its step, save and exit 0.

Slurm and cloud schedulers send SIGTERM (Slurm's ``--signal=USR1@T`` sends SIGUSR1) some time
before they kill a job. The handler only sets a flag; after each step the ranks sum their
flags with one all-reduce, so a signal seen by any rank stops all of them after the same step.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

import torch

from megamix.training.distributed import all_reduce_sum

DEFAULT_EXIT_SIGNALS = ("SIGTERM", "SIGUSR1")


def parse_exit_signals(text: str) -> tuple[str, ...]:
    """``"SIGTERM,SIGUSR1"`` (or ``"none"``) as a tuple of signal names; ValueError naming the flag."""
    if text.strip().lower() in ("", "none"):
        return ()
    names = []
    for part in text.split(","):
        name = part.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        if not isinstance(getattr(signal, name, None), signal.Signals) or name in ("SIGKILL", "SIGSTOP"):
            raise ValueError(f"--exit-signals: {part.strip()!r} is not a signal that can be caught "
                             "(e.g. SIGTERM,SIGUSR1, or none)")
        names.append(name)
    return tuple(dict.fromkeys(names))


@dataclass
class ExitSignalHandler:
    """Records exit signals; :meth:`agreed` tells every rank, after a step, whether any rank got one."""

    signals: tuple[str, ...] = DEFAULT_EXIT_SIGNALS
    received: str | None = None
    """The name of the first signal this rank received, if any."""
    _previous: dict = field(default_factory=dict)

    def install(self) -> "ExitSignalHandler":
        """Install the handlers (keeping the previous ones for :meth:`restore`); returns self."""
        for name in self.signals:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def agreed(self) -> bool:
        """True on every rank when any rank received an exit signal; collective when signals are handled."""
        if not self.signals:
            return False
        flag = torch.tensor([0.0 if self.received is None else 1.0], dtype=torch.float64)
        return bool(all_reduce_sum(flag).item() > 0)

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
