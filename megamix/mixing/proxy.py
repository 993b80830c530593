"""ProxyMixer: the shared shape of the per-step proxy methods (current weights, their time average)."""

from __future__ import annotations

import numpy as np

from megamix.mixing.base import Mixer, MixerContext, TimeAverage


class ProxyMixer(Mixer):
    """Weights updated every ``options.phase_steps`` steps from a training-side signal; evaluated every U steps."""

    def __init__(self, ctx: MixerContext, options, interval: int) -> None:
        super().__init__(ctx)
        self.cfg = options
        self.interval = interval
        self.w = np.full(ctx.num_domains, 1.0 / ctx.num_domains)
        self.average = TimeAverage(ctx.num_domains)

    def _phase_steps_and_eval(self, step: int) -> tuple[int, bool]:
        """The next phase's length and whether it ends on a multiple of the update interval U."""
        steps = self.cfg.phase_steps
        return steps, (step + steps) // self.interval > step // self.interval

    def _accumulate(self, steps: int) -> None:
        """Count the (updated) weights for ``steps`` steps in the time average."""
        self.average.add(self.w, steps)

    def state_dict(self) -> dict:
        """Current weights and the average accumulators."""
        return {"w": self.w.tolist(), **self.average.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.w = np.asarray(state["w"], dtype=np.float64)
        self.average.load_state_dict(state)

    def learned_weights(self) -> np.ndarray:
        """The time-averaged weights (the current ones before any update)."""
        return self.average.value(self.w)


def last_vector(events: list[dict], kind: str, field: str) -> tuple[np.ndarray, str]:
    """The ``field`` vector of the last ``kind`` event (a proxy method's column sums of A)."""
    found = [e for e in events if e.get("event") == kind]
    if not found:
        raise ValueError(f"no {kind!r} event in metrics.jsonl")
    rec = found[-1]
    return np.asarray(rec[field], dtype=np.float64), f"{kind} {field} at step {rec['step']}"
