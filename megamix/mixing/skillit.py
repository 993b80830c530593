"""Skill-It (Chen et al., 2023) as an online mixer: p ∝ exp(η G Σ_{last evals} L)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megamix.fileio import read_json
from megamix.mixing import law
from megamix.mixing.base import MethodSpec, Mixer, MixerContext, Observation, Phase, TimeAverage, check_positive, option


@dataclass
class SkillItConfig:
    """Skill-It's settings (MIXING.md, 'Skill-It')."""

    graph: str | None = option(None, "--skillit-graph", "skills graph JSON {domains, graph} (required)",
                               metavar="FILE")
    eta: float = option(0.2, "--skillit-eta", "Skill-It step size η (default 0.2)")
    window: int = option(3, "--skillit-window", "evaluations summed per update (default 3)")

    def __post_init__(self) -> None:
        if self.graph is None:
            raise ValueError("--mixing-method skillit needs --skillit-graph FILE "
                             "(make one with tools/fit_mixing_law.py --method skillit-graph)")
        check_positive(self.eta, "--skillit-eta")
        if self.window < 1:
            raise ValueError(f"--skillit-window must be >= 1, got {self.window}")


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
        self.average = TimeAverage(ctx.num_domains)

    def next_phase(self, step: int, remaining: int) -> Phase:
        """U steps at the current p, evaluated at the end."""
        return Phase(self.p, self.interval, evaluate=True, kind="train")

    def observe(self, phase: Phase, obs: Observation) -> list[dict]:
        """Add the new evaluation to the window and recompute p."""
        self.average.add(self.p, obs.steps)
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
        return {"p": self.p.tolist(), "history": self.history, **self.average.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.p = np.asarray(state["p"], dtype=np.float64)
        self.history = [list(h) for h in state["history"]]
        self.average.load_state_dict(state)

    def learned_weights(self) -> np.ndarray:
        """Time-average of p over the trained steps."""
        return self.average.value(self.p)


def law_estimate(events: list[dict], options: SkillItConfig, key: str | None) -> tuple[np.ndarray, str]:
    """Skill-It's implied A = diag(L) Gᵀ at its last update (G read from the run's graph file)."""
    done = [e for e in events if e.get("event") == "skillit_update" and "skipped" not in e]
    if not done:
        raise ValueError("no 'skillit_update' event in metrics.jsonl")
    rec = done[-1]
    graph = read_skill_graph(options.graph, tuple(rec["domains"]))
    loss = np.asarray(rec["val_loss"], dtype=np.float64)
    return np.diag(loss) @ graph.T, f"diag(L) G^T at step {rec['step']}"


METHOD = MethodSpec(
    name="skillit", summary="Skill-It: p ∝ exp(η G Σ recent validation losses) with a fixed skills graph",
    build=lambda ctx, cfg: SkillItMixer(ctx, cfg.options, cfg.update_interval), config=SkillItConfig,
    law_estimate=law_estimate)
