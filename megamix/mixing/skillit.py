"""Skill-It (Chen et al., 2023) as an online mixer: p ∝ exp(η G Σ_{last evals} L)."""

from __future__ import annotations


import numpy as np

from megamix.fileio import read_json

from megamix.mixing import law
from megamix.mixing.base import Mixer, MixerContext, Observation, Phase
from megamix.mixing.config import SkillItConfig


def read_skill_graph(path: str, domains: tuple[str, ...]) -> np.ndarray:
    """G (K×K) from a graph file {"domains": [...], "graph": K×K}, rows/cols matched by name."""
    obj = read_json(path, f"--skillit-graph {path}")
    names, graph = obj.get("domains"), obj.get("graph")
    if not isinstance(names, list) or graph is None:
        raise ValueError(f"--skillit-graph {path}: expected {{\"domains\": [...], \"graph\": K×K}}")
    g = np.asarray(graph, dtype=np.float64)
    if g.shape != (len(names), len(names)) or not np.all(np.isfinite(g)):
        raise ValueError(f"--skillit-graph {path}: 'graph' must be a finite {len(names)}×{len(names)} matrix, "
                         f"got shape {g.shape}")
    if sorted(names) != sorted(domains):
        raise ValueError(f"--skillit-graph {path}: domains {names} do not match the run's {list(domains)}")
    idx = [names.index(d) for d in domains]
    return g[np.ix_(idx, idx)]


class SkillItMixer(Mixer):
    """Skill-It online: every U steps, p ∝ exp(η G Σ of the last ``window`` evaluated losses)."""

    name = "skillit"

    def __init__(self, ctx: MixerContext, cfg: SkillItConfig, interval: int,
                 graph: np.ndarray | None = None) -> None:
        super().__init__(ctx)
        self.cfg = cfg
        self.interval = interval
        self.g = read_skill_graph(cfg.graph, ctx.domains) if graph is None else np.asarray(graph, dtype=np.float64)
        self.p = law.softmax(cfg.eta * self.g.sum(axis=1))
        self.history: list[list[float]] = []
        self.avg_sum = np.zeros(ctx.num_domains)
        self.avg_steps = 0

    def next_phase(self, step: int, remaining: int) -> Phase:
        """U steps at the current p, evaluated at the end."""
        return Phase(self.p, self.interval, evaluate=True, kind="train")

    def observe(self, phase: Phase, obs: Observation) -> list[dict]:
        """Add the new evaluation to the window and recompute p."""
        self.avg_sum += self.p * obs.steps
        self.avg_steps += obs.steps
        if obs.val_loss is None:
            return []
        val = np.asarray(obs.val_loss, dtype=np.float64)
        event = {"event": "skillit_update", "step": obs.step, "domains": list(self.ctx.domains),
                 "val_loss": val.tolist(), "weights_before": self.p.tolist()}
        if not np.all(np.isfinite(val)):
            event.update({"weights": self.p.tolist(), "skipped": "non-finite validation loss; weights kept"})
            return [event]
        self.history = (self.history + [val.tolist()])[-self.cfg.window:]
        self.p = law.softmax(self.cfg.eta * (self.g @ np.sum(self.history, axis=0)))
        event["weights"] = self.p.tolist()
        return [event]

    def state_dict(self) -> dict:
        """p, the loss window and the time-average accumulators."""
        return {"p": self.p.tolist(), "history": self.history, "avg_sum": self.avg_sum.tolist(),
                "avg_steps": self.avg_steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.p = np.asarray(state["p"], dtype=np.float64)
        self.history = [list(h) for h in state["history"]]
        self.avg_sum = np.asarray(state["avg_sum"], dtype=np.float64)
        self.avg_steps = int(state["avg_steps"])

    def learned_weights(self) -> np.ndarray:
        """Time-average of p over the trained steps."""
        return self.p.copy() if self.avg_steps == 0 else self.avg_sum / self.avg_steps
