"""Replay: train on another run's recorded mixture schedule, with no method in the loop.

Every run writes ``schedule.json``: the mixture each global sample was drawn from, segment
by segment. ``--mixing-method replay --replay-schedule RUN/schedule.json`` trains each of
its segments as one phase, so replaying an online run's schedule gives that run's training
data to the last sample at none of its method's cost. ``--replay-mirror`` reverses every
segment's tilt away from uniform (p' = 2/K - p): the same tilts in the opposite direction,
the control that tells a method's gain from the direction of its tilts apart from the gain
of changing p at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megamix.data.schedule import MixtureSchedule
from megamix.mixing.base import MethodSpec, Mixer, MixerContext, Phase, as_simplex, option


@dataclass
class ReplayConfig:
    """The schedule to replay (--replay-schedule) and its transform (--replay-mirror)."""

    schedule: str | None = option(None, "--replay-schedule",
                                  "a run's schedule.json to train on, segment by segment (required)", metavar="FILE")
    mirror: bool = option(False, "--replay-mirror",
                          "reverse every segment's tilt away from uniform: p' = 2/K - p (negative entries "
                          "clipped to 0, then renormalised)", action="store_true")

    def __post_init__(self) -> None:
        if self.schedule is None:
            raise ValueError("--mixing-method replay needs --replay-schedule FILE (a run's schedule.json)")


def mirrored(weights: np.ndarray) -> np.ndarray:
    """``weights`` reflected through the uniform mixture (2/K - p), clipped at 0 and renormalised."""
    k = weights.shape[0]
    return as_simplex(np.clip(2.0 / k - weights, 0.0, None), k, "mirrored weights")


def read_schedule(path: str, domains: tuple[str, ...], global_batch: int,
                  mirror: bool = False) -> list[tuple[int, np.ndarray]]:
    """The (steps, weights) segments of a stored schedule, weights in ``domains`` order."""
    try:
        schedule = MixtureSchedule.load(path)
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"--replay-schedule {path}: cannot read it as a run's schedule.json ({e})") from None
    names = list(schedule.domains)
    if sorted(names) != sorted(domains):
        raise ValueError(f"--replay-schedule {path}: domains {names} do not match the run's {list(domains)}")
    order = [names.index(d) for d in domains]
    out = []
    for i, seg in enumerate(schedule.segments):
        if seg.num_samples % global_batch:
            raise ValueError(f"--replay-schedule {path}: segment {i} has {seg.num_samples} samples, not a whole "
                             f"number of --global-batch-size {global_batch} batches")
        w = np.asarray(seg.weights, dtype=np.float64)[order]
        out.append((seg.num_samples // global_batch, mirrored(w) if mirror else w))
    if not out:
        raise ValueError(f"--replay-schedule {path}: the schedule has no segments")
    return out


class ReplayMixer(Mixer):
    """Trains each recorded segment as one phase (evaluated at its end), in order."""

    name = "replay"

    def __init__(self, ctx: MixerContext, segments: list[tuple[int, np.ndarray]], path: str = "") -> None:
        super().__init__(ctx)
        total = sum(s for s, _ in segments)
        if total < ctx.train_iters:
            raise ValueError(f"--replay-schedule {path}: its segments cover {total} steps, fewer than "
                             f"--train-iters {ctx.train_iters}")
        self.starts = np.cumsum([0] + [s for s, _ in segments])
        self.segments = segments
        self._start_evaluated = False

    def next_phase(self, step: int, remaining: int) -> Phase:
        """The rest of the segment that contains ``step`` (stateless, so a resume continues exactly)."""
        if step == 0 and not self._start_evaluated:
            self._start_evaluated = True
            return Phase(self.segments[0][1], 0, evaluate=True, kind="eval")
        i = int(np.searchsorted(self.starts, step, side="right")) - 1
        return Phase(self.segments[i][1], int(self.starts[i + 1]) - step, evaluate=True,
                     info={"segment": i})

    def learned_weights(self) -> np.ndarray:
        """The step-weighted mean of the segments up to --train-iters (for --mixture-out)."""
        n, total = self.ctx.train_iters, np.zeros(self.ctx.num_domains)
        for (steps, w), start in zip(self.segments, self.starts):
            total += w * max(0, min(steps, n - int(start)))
        return total / n


def _build(ctx: MixerContext, cfg) -> ReplayMixer:
    opts = cfg.options
    return ReplayMixer(ctx, read_schedule(opts.schedule, ctx.domains, ctx.global_batch_size, opts.mirror),
                       opts.schedule)


METHOD = MethodSpec(name="replay", summary="train on a run's recorded schedule.json, segment by segment (optionally mirrored)",
                    build=_build, config=ReplayConfig)
