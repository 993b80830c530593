"""Aioli (Chen et al., ICLR 2025): learn A online by short probes, move p by exponentiated gradient.

A round of U steps (MIXING.md): LearnParams (k sweeps of K probes of s steps at the
probe mixtures q_j, each column B[:, j] += L_before − L_after), solve A = B (Qᵀ)⁻¹,
normalise, smooth, p ∝ p ⊙ exp(η Σ_i E[i, ·]), then train U − k·K·s steps at p. Rounds are
whole: when fewer than U steps would remain after a round's training part, that part takes
them all, so the last round trains U − k·K·s + (N mod U) steps and no round starts that
could not finish its probes and train after them.

The mixer is a small state machine whose whole state is JSON (``state_dict``): the loop
may checkpoint after any ``next_phase`` and resume straight into ``observe``. The probe
order of round r is drawn from a generator seeded by (seed, r), so it is never stored.

``loss_source='train'``: no validation passes. Each probe is issued as two phases (its
first and second half, same mixture q_j), and the loop reports each phase's per-domain
mean training loss. "L_before" is the first half's mean, "L_after" the second half's: under
the linear law their difference is exactly (s/2)·A q_j whatever the halves' lengths, so the
column gets 2·(L_first − L_second). This keeps every column attributable to its own probe
(a difference with the previous phase would mix two mixtures) and costs no extra steps.
Needs s >= 2. A round where a domain had no tokens in some half (NaN) keeps the weights.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from megamix.mixing import law
from megamix.mixing.base import (MethodSpec, Mixer, MixerContext, Observation, Phase, TimeAverage,
                                 check_positive, option)
from megamix.mixing.weights_file import read_weights_file

ESTIMATORS = ("probes", "gradient", "lookahead")
"""--aioli-estimator values: the paper's probes, or one of the probe-free estimators of
megamix.training.aioli_gradient."""

OBJECTIVES = ("loss", "perplexity")
"""--aioli-objective values: the average validation loss (the paper's) or the average perplexity."""


@dataclass
class AioliConfig:
    """Aioli's settings (MIXING.md, 'Aioli'); the round length U is --mixing-update-interval."""

    eta: float = option(1.0, "--aioli-eta", "EG step size η (default 1.0)")
    lp_rounds: int = option(2, "--aioli-lp-rounds", "probe sweeps k per round (default 2)")
    lp_steps: int = option(10, "--aioli-lp-steps", "steps s per probe (default 10)")
    one_hot_factor: float = option(0.75, "--aioli-one-hot-factor",
                                   "probe weight f on the probed domain, in (1/K, 1] (default 0.75)")
    ema: float | None = option(None, "--aioli-ema", "EMA γ on A in [0, 1) (default off; the paper's runs used 0.1)",
                               type=float)
    normalize_a: bool = option(True, "--aioli-normalize-a",
                               "shift/scale A to a non-negative matrix summing to 1 (default on)", action=argparse.BooleanOptionalAction)
    diagonal: bool = option(False, "--aioli-diagonal", "A = diag(B[j, j] / f)", action="store_true")
    update: str = option("cumulative", "--aioli-update",
                         "EG from the current p (cumulative) or from the start weights each round (reset)",
                         choices=("cumulative", "reset"))
    prior: str | None = option(None, "--aioli-prior", "weights file of prior proportions (the EG start)",
                               metavar="FILE")
    prior_steps: int = option(0, "--aioli-prior-steps", "steps trained on the prior before round 1")
    loss_source: str = option("val", "--aioli-loss-source", "probe losses from validation evaluations or training",
                              choices=("val", "train"))
    estimator: str = option("probes", "--aioli-estimator",
                            "how A is learned: probes (the paper's LearnParams), gradient (per-domain gradients "
                            "preconditioned by the optimizer's state, no probe steps) or lookahead (the validation loss "
                            "change of a virtual Adam step on each domain's gradient)",
                            choices=ESTIMATORS)
    grad_interval: int | None = option(None, "--aioli-grad-interval",
                                       "steps between gradient estimates of A, at most a round (default: half of "
                                       "--mixing-update-interval, two estimates a round; an estimate costs about 2K "
                                       "micro-batch backward passes, so with many domains use one a round)", type=int)
    grad_val_batch: int | None = option(None, "--aioli-grad-val-batch",
                                        "validation samples of each domain per gradient estimate, on each rank "
                                        "(default: --micro-batch-size)", type=int)
    objective: str = option("loss", "--aioli-objective",
                            "what the EG step lowers: the average validation loss (the paper's) or the average "
                            "perplexity (row i of E weighted by exp(L_i) / mean exp(L), from the round's validation "
                            "losses)", choices=OBJECTIVES)

    def __post_init__(self) -> None:
        check_positive(self.eta, "--aioli-eta")
        if self.lp_rounds < 1:
            raise ValueError(f"--aioli-lp-rounds must be >= 1, got {self.lp_rounds}")
        if self.lp_steps < 1:
            raise ValueError(f"--aioli-lp-steps must be >= 1, got {self.lp_steps}")
        if not (0.0 < self.one_hot_factor <= 1.0):
            raise ValueError(f"--aioli-one-hot-factor must be in (1/K, 1], got {self.one_hot_factor}")
        if self.ema is not None and not (0.0 <= self.ema < 1.0):
            raise ValueError(f"--aioli-ema must be in [0, 1), got {self.ema}")
        if self.update not in ("cumulative", "reset"):
            raise ValueError(f"--aioli-update must be 'cumulative' or 'reset', got {self.update!r}")
        if self.prior_steps < 0:
            raise ValueError(f"--aioli-prior-steps must be >= 0, got {self.prior_steps}")
        if self.loss_source not in ("val", "train"):
            raise ValueError(f"--aioli-loss-source must be 'val' or 'train', got {self.loss_source!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"--aioli-estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.grad_interval is not None and self.grad_interval < 1:
            raise ValueError(f"--aioli-grad-interval must be >= 1, got {self.grad_interval}")
        if self.grad_val_batch is not None and self.grad_val_batch < 1:
            raise ValueError(f"--aioli-grad-val-batch must be >= 1, got {self.grad_val_batch}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--aioli-objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.objective == "perplexity" and self.estimator == "probes" and self.loss_source == "train":
            raise ValueError("--aioli-objective perplexity weighs domains by their validation losses: it needs "
                             "--aioli-loss-source val with --aioli-estimator probes")

    def estimate_interval(self, update_interval: int) -> int:
        """Steps between gradient estimates: --aioli-grad-interval, or half a round when not given."""
        return self.grad_interval or max(1, update_interval // 2)

    def check_domains(self, k: int) -> None:
        """Validate the settings that depend on the number of domains K."""
        if k < 2:
            raise ValueError(f"aioli needs at least 2 domains, got {k}")
        if not (1.0 / k < self.one_hot_factor <= 1.0):
            raise ValueError(f"--aioli-one-hot-factor must be in (1/K, 1] = ({1.0 / k:.4g}, 1] "
                             f"for K={k} domains, got {self.one_hot_factor}")


def _arr(x):
    """A float64 array from a JSON list (None stays None)."""
    return None if x is None else np.asarray(x, dtype=np.float64)


def _lst(x):
    """A JSON list from an array (None stays None)."""
    return None if x is None else np.asarray(x, dtype=np.float64).tolist()


GRADIENT_SIGNAL = "aioli_gradient"
"""The per-step gradient estimate of A (megamix.training.aioli_gradient), summed over a round."""


@dataclass
class GradientEstimate:
    """A round's gradient estimate of A, from the sum of its per-step values."""

    a: np.ndarray
    """(K, K) per-step coefficient lr·⟨v_i, P g_j⟩, mean over the steps that saw column j (NaN: none)."""
    column_steps: np.ndarray
    """(K,) estimated steps in which some rank had training samples of domain j."""
    val_loss: np.ndarray
    """(K,) mean loss of the validation micro-batches used (NaN when no step was estimated)."""
    steps: int
    """Steps whose estimate was taken."""


def gradient_estimate(total, k: int) -> GradientEstimate:
    """The estimate from the (K+1)×(K+1) sum of per-step values (None: no step was estimated).

    Layout of a per-step value: ``[:K, :K]`` lr·⟨v_i, P g_j⟩ (0 where no rank had domain j),
    ``[K, :K]`` 1 where some rank had domain j, ``[:K, K]`` the validation micro-batch losses,
    ``[K, K]`` 1.
    """
    total = np.zeros((k + 1, k + 1)) if total is None else np.asarray(total, dtype=np.float64)
    seen, steps = total[k, :k], int(round(total[k, k]))
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(seen > 0, total[:k, :k] / np.maximum(seen, 1), np.nan)
        val = total[:k, k] / steps if steps else np.full(k, np.nan)
    return GradientEstimate(a, seen, val, steps)


class AioliMixer(Mixer):
    """Aioli: rounds of probes (LearnParams), an EG update of p, and training at p."""

    name = "aioli"

    def __init__(self, ctx: MixerContext, cfg: AioliConfig, interval: int) -> None:
        super().__init__(ctx)
        k = ctx.num_domains
        cfg.check_domains(k)
        self.cfg = cfg
        self.interval = interval
        self.gradient = cfg.estimator != "probes"  # gradient or lookahead: no probe phases
        self.probe_total = 0 if self.gradient else cfg.lp_rounds * k * cfg.lp_steps
        if not self.gradient and cfg.loss_source == "train" and cfg.lp_steps < 2:
            raise ValueError(f"--aioli-loss-source train needs --aioli-lp-steps >= 2 (each probe is measured "
                             f"in two halves), got {cfg.lp_steps}")
        self.grad_interval = cfg.estimate_interval(interval)
        if self.gradient and self.grad_interval > interval:
            raise ValueError(f"--aioli-grad-interval ({self.grad_interval}) is longer than a round "
                             f"(--mixing-update-interval {interval}): some rounds would take no estimate and keep p; "
                             f"use at most {interval} (one estimate a round)")
        if interval <= self.probe_total:
            raise ValueError(f"--mixing-update-interval ({interval}) must exceed the probe steps per round "
                             f"k·K·s = {cfg.lp_rounds}·{k}·{cfg.lp_steps} = {self.probe_total} "
                             f"(--aioli-lp-rounds × domains × --aioli-lp-steps)")
        self.q = law.probe_mixtures(k, cfg.one_hot_factor)
        start = np.full(k, 1.0 / k) if cfg.prior is None else read_weights_file(cfg.prior, ctx.domains)
        self.p0 = start
        self.p = start.copy()
        self.stage = "prior" if cfg.prior_steps > 0 else "start"
        self.round = 0
        self.loss = None        # val loss of the model as it is now (None when unknown)
        self.e = None
        self.cur = None         # the round in progress
        self.average = TimeAverage(k)

    # ----------------------------------------------------------------- phases
    def next_phase(self, step: int, remaining: int) -> Phase:
        """Prior, evaluation, probe or training phase, depending on where the round is."""
        if self.stage == "prior":
            return Phase(self.p0, self.cfg.prior_steps, evaluate=True, kind="prior")
        if self.stage == "start":
            early = self._round_preamble(step, remaining)
            if early is not None:
                return early
        if self.stage == "probe":
            return self._probe_phase()
        return self._train_phase(remaining)

    def _train_phase(self, remaining: int) -> Phase:
        """The training part of a round; it absorbs the run's tail when no whole round would fit after it."""
        steps = self.interval - self.probe_total
        info = {"round": self.round}
        if remaining - steps < self.interval and remaining > steps:
            info["absorbed"] = remaining - steps
            steps = remaining
        signals = (GRADIENT_SIGNAL,) if self.gradient else ()
        return Phase(self.p, steps, evaluate=True, kind="train", info=info, signals=signals)

    def _round_preamble(self, step: int, remaining: int) -> Phase | None:
        """The phase needed before probing (tail or eval), or None after starting the probes."""
        info = {"round": self.round}
        if remaining <= self.probe_total:
            self.stage = "train"
            info["reason"] = f"only {remaining} steps left, fewer than a round's probes"
            return Phase(self.p, remaining, evaluate=True, kind="train", info=info)
        if not self.gradient and self.cfg.loss_source == "val" and self.loss is None:
            return Phase(self.p, 0, evaluate=True, kind="eval", info=info)
        self._start_round(step)
        return None

    def _start_round(self, step: int) -> None:
        """Begin LearnParams: fresh B, the round's seeded probe order."""
        k = self.ctx.num_domains
        rng = np.random.default_rng([self.ctx.seed, 0xA101, self.round])
        order = np.concatenate([rng.permutation(k) for _ in range(self.cfg.lp_rounds)])
        self.cur = {"step": step, "order": order.tolist(), "j": 0, "half": 0, "first_half": None,
                    "b": np.zeros((k, k)).tolist(),
                    "weights_before": _lst(self.p), "val_loss_before": _lst(self.loss),
                    "probe_losses": []}
        self.stage = "train" if self.gradient else "probe"

    def _probe_phase(self) -> Phase:
        """Probe j of the current round: s steps at q_{order[j]}."""
        j, s = self.cur["j"], self.cfg.lp_steps
        d = self.cur["order"][j]
        info = {"round": self.round, "probe": j, "domain": self.ctx.domains[d]}
        if self.cfg.loss_source == "val":
            return Phase(self.q[d], s, evaluate=True, kind="probe", info=info)
        info["half"] = self.cur["half"]
        steps = s // 2 if self.cur["half"] == 0 else s - s // 2
        return Phase(self.q[d], steps, evaluate=False, kind="probe", info=info)

    # ---------------------------------------------------------------- observe
    def observe(self, phase: Phase, obs: Observation) -> list[dict]:
        """Record losses; after the last probe of a round, solve for A and update p."""
        self.average.add(self.p, obs.steps)
        before = self.loss
        if obs.val_loss is not None:
            self.loss = np.asarray(obs.val_loss, dtype=np.float64)
        elif obs.steps > 0:
            self.loss = None
        if self.stage == "train" and self.gradient and self.cur is not None:
            return [self._observe_gradient(obs)]
        if self.stage in ("prior", "train"):
            self.stage = "start"
        elif self.stage == "probe":
            return self._observe_probe(phase, obs, before)
        return []

    def _observe_probe(self, phase: Phase, obs: Observation, before: np.ndarray | None) -> list[dict]:
        """Add one probe's loss decrease to B (train source: after its second half); finish the round."""
        if obs.steps < phase.steps:
            self.stage, self.cur = "train", None
            return [{"event": "aioli_round", "round": self.round, "step": obs.step,
                     "skipped": f"probe cut short ({obs.steps} of {phase.steps} steps): run ended"}]
        cur = self.cur
        if self.cfg.loss_source == "val":
            after = self.loss
            decrease = before - after
        else:
            train = np.asarray(obs.train_loss, dtype=np.float64)
            if cur["half"] == 0:
                cur["half"], cur["first_half"] = 1, train.tolist()
                return []
            after = train
            decrease = 2.0 * (np.asarray(cur["first_half"]) - train)
            cur["half"], cur["first_half"] = 0, None
        d = cur["order"][cur["j"]]
        b = np.asarray(cur["b"])
        b[:, d] += decrease
        cur["b"] = b.tolist()
        cur["probe_losses"].append(after.tolist())
        cur["j"] += 1
        if cur["j"] < len(cur["order"]):
            return []
        cfg = self.cfg
        b = np.asarray(cur["b"]) / cfg.lp_rounds
        a = law.solve_a(b, self.q, diagonal=cfg.diagonal, f=cfg.one_hot_factor)
        record = self._finish_round(obs.step, a, {
            "probe_weights": self.q.tolist(), "B": b.tolist(),
            "val_loss_after_probes": _lst(self.loss) if cfg.loss_source == "val" else None,
            "probe_order": cur["order"], "probe_losses": cur["probe_losses"], "diagonal": cfg.diagonal,
            "loss_source": cfg.loss_source}, "non-finite losses in this round's probes; weights kept",
            _arr(cur["val_loss_before"]))
        self.stage = "train"
        return [record]

    def _observe_gradient(self, obs: Observation) -> dict:
        """The round's training phase ended: A from its gradient estimates, then the EG step."""
        est = gradient_estimate(obs.signals.get(GRADIENT_SIGNAL), self.ctx.num_domains)
        why = ("no step of this round was estimated" if est.steps == 0 else
               "a domain had no training samples in any estimated step of this round") + "; weights kept"
        record = self._finish_round(obs.step, est.a, {
            "estimated_steps": est.steps, "column_steps": est.column_steps.tolist(),
            "grad_interval": self.grad_interval, "grad_val_batch": self.cfg.grad_val_batch,
            "val_loss_batches": _lst(est.val_loss)}, why,
            est.val_loss if self.cur["val_loss_before"] is None else _arr(self.cur["val_loss_before"]))
        self.stage = "start"
        return record

    def _finish_round(self, step: int, a: np.ndarray, fields: dict, why_skipped: str,
                      losses: np.ndarray | None) -> dict:
        """Normalise and smooth A, take the EG step; the round's record (``fields`` are the estimator's).

        ``losses``: the round's per-domain validation losses (the evaluation before it; in the
        probe-free first round, the mean of its estimates' validation micro-batches), which weigh
        E's rows under ``--aioli-objective perplexity`` (w = exp(L) / mean exp(L); loss: w = 1).
        """
        cur, cfg = self.cur, self.cfg
        record = {"event": "aioli_round", "round": self.round, "step": step, "estimator": cfg.estimator,
                  "domains": list(self.ctx.domains), "A": a.tolist(), "weights_before": cur["weights_before"],
                  "val_loss_before": cur["val_loss_before"], "update": cfg.update, "eta": cfg.eta, "ema": cfg.ema,
                  "normalize_a": cfg.normalize_a, "objective": cfg.objective, **fields}
        w = None
        if cfg.objective == "perplexity":
            w = law.perplexity_weights(losses) if losses is not None else np.full(len(a), np.nan)
            record.update({"objective_losses": _lst(losses), "objective_weights": w.tolist()})
        if not (np.all(np.isfinite(a)) and (w is None or np.all(np.isfinite(w)))):
            record.update({"A_normalized": None, "E": _lst(self.e), "weights": _lst(self.p), "skipped": why_skipped})
        else:
            an = law.normalize_a(a) if cfg.normalize_a else a
            self.e = law.ema(self.e, an, cfg.ema)
            start = self.p if cfg.update == "cumulative" else self.p0
            self.p = law.eg_step(start, self.e.sum(axis=0) if w is None else w @ self.e, cfg.eta)
            record.update({"A_normalized": an.tolist(), "E": self.e.tolist(), "weights": self.p.tolist()})
        self.round += 1
        self.cur = None
        return record

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to continue exactly (JSON)."""
        return {"stage": self.stage, "round": self.round, "p": _lst(self.p), "p0": _lst(self.p0),
                "loss": _lst(self.loss), "e": _lst(self.e),
                "cur": self.cur, **self.average.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.stage, self.round = state["stage"], int(state["round"])
        self.p, self.p0 = _arr(state["p"]), _arr(state["p0"])
        self.loss, self.e = _arr(state["loss"]), _arr(state["e"])
        self.cur = state["cur"]
        self.average.load_state_dict(state)

    def learned_weights(self) -> np.ndarray:
        """Time-average of p over all steps trained so far (p itself before any step)."""
        return self.average.value(self.p)


def law_estimate(events: list[dict], options: AioliConfig, key: str | None) -> tuple[np.ndarray, str]:
    """A of the last completed round (``key``: 'A' or 'A_normalized', default the latter when present)."""
    done = [e for e in events if e.get("event") == "aioli_round" and "skipped" not in e]
    if not done:
        raise ValueError("no completed 'aioli_round' event in metrics.jsonl (the run never finished a round)")
    rec = done[-1]
    key = key or ("A_normalized" if rec.get("A_normalized") is not None else "A")
    if rec.get(key) is None:
        raise ValueError(f"the last aioli_round (round {rec['round']}) has no {key!r}")
    return np.asarray(rec[key], dtype=np.float64), f"aioli_round {rec['round']} (step {rec['step']}) {key}"


def _signals(options: AioliConfig) -> dict[str, str]:
    """The gradient and lookahead estimators' training-side provider (the probe estimator needs none)."""
    if options.estimator == "probes":
        return {}
    return {GRADIENT_SIGNAL: "megamix.training.aioli_gradient:gradient_signal"}


METHOD = MethodSpec(
    name="aioli", summary="Aioli: learn A each round (probes, or per-domain gradients), move p by exponentiated gradient",
    build=lambda ctx, cfg: AioliMixer(ctx, cfg.options, cfg.update_interval), config=AioliConfig,
    signals=_signals, law_estimate=law_estimate)
