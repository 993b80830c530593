#!/usr/bin/env python
"""Law-fidelity report of a run: does the method's A agree with an A* fitted from probes?

Design (one process, CPU or one GPU, no DeepSpeed):

1. Read the run directory: the newest checkpoint's run state (``read_run_state``: the
   run's config and mixture schedule), its weights (``load_state_dict_from_checkpoint``,
   any ZeRO stage), and ``metrics.jsonl`` for the method's own A
   (``megamix.mixing.fidelity.method_a``).
2. Evaluate the checkpoint's per-domain validation loss L on ``--eval-samples-per-domain``
   fixed samples (the run's Evaluator, rank 0 of 1).
3. For each probe mixture p_n (``--num-probes``: the K one-hot-ish q_j, then seeded
   Dirichlet draws), start from a fresh copy of the checkpoint weights and train
   ``--probe-steps`` steps of plain torch AdamW at the run's global batch size, at the
   constant learning rate the run had at the checkpoint (``--probe-lr`` overrides), on a
   BlendedDataset that continues the run's schedule: every probe reads the training
   samples that come after the run's last scheduled segment, so no probe trains on data
   the checkpoint has seen. Each probe's AdamW starts from the run's own Adam state at the
   checkpoint (moments and step count, ``megamix.training.optim_state``; ZeRO 0–2 fp32
   checkpoints), so its steps continue the run's; the LR schedule is not inherited.
   ``--fresh-optimizer`` starts from fresh moments instead: their first updates are
   sign-like, and at a high LR every probe can raise the loss whatever its mixture (the
   tool warns; lower ``--probe-lr``). Evaluate L'_n; dL_n = L − L'_n.
4. Fit A* by least squares, dL_n ≈ A* p_n (``law.fit_linear_dynamic``), report the law's
   R² on the probes, and the agreement of column sums: cosine, centred cosine (the column
   sums less their mean, the part EG's update sees; ±1 at K = 2) and Spearman.
5. Judge the three ways Aioli can estimate A at this checkpoint against A*: ``probes``,
   A = B (Qᵀ)⁻¹ from the K probes at the q_j (one sweep of Aioli's LearnParams; these
   probes are also among A*'s, which favours them); ``gradient``, s · lr · ⟨v_i, P g_j⟩,
   and ``lookahead``, s · (L_i(θ) − L_i(θ − δ_j)) with δ_j Adam's next step had the
   step's gradient been g_j (from the loaded moments), each averaged over
   ``--grad-steps`` batches at the uniform mixture, with P from the loaded Adam state
   (``megamix.training.aioli_gradient``). For each: cosine, centred cosine and Spearman of
   the column sums, cosine and Spearman of the whole matrix. The judge itself is noisy:
   check it against a second report with another ``--seed`` (independent held-out
   mixtures; the estimators do not change) before reading the scores. docs/results.md
   section 18: with 7–11 held-out probes two such judges disagreed at K = 3 and 7
   (column-sum cosine −0.10, 0.06), hence the default of K + max(60, 5K) probes (60 held
   out reproduced at K = 2 and 3).
   A* also depends on ``--probe-steps``, the horizon it measures: section 19 found judges of
   3 and 10 steps that ranked the columns differently on 2 of 5 checkpoints, so compare
   estimators at the horizon you mean (the run's own Aioli probes train
   ``--aioli-lp-steps``).

Output: a table on stdout and, with ``--out FILE``, the whole report as JSON.
The A being judged comes from the run's last round (Aioli) or last update; for a close
comparison take a checkpoint near that round (``--save-interval``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megamix.data.blend import BlendedDataset  # noqa: E402
from megamix.data.domain import build_domain_datasets  # noqa: E402
from megamix.data.schedule import MixtureSchedule  # noqa: E402
from megamix.mixing import fidelity, law  # noqa: E402
from megamix.mixing.config import MixingConfig  # noqa: E402
from megamix.fileio import atomic_write_json, read_json, read_jsonl  # noqa: E402
from megamix.model.gpt import GPT  # noqa: E402
from megamix.training.checkpoint import find_checkpoint  # noqa: E402
from megamix.training.engine import lr_at, param_groups  # noqa: E402
from megamix.mixing.aioli import gradient_estimate  # noqa: E402
from megamix.training.aioli_gradient import MODES, AioliGradientEstimator, ValidationDraws  # noqa: E402
from megamix.training.evaluation import Evaluator  # noqa: E402
from megamix.training.loader import StepBatch, read_micro_batch  # noqa: E402
from megamix.training.optim_state import load_adam_state, optimizer_order, seed_adam  # noqa: E402
from megamix.training.run_state import load_state_dict_from_checkpoint, read_run_state  # noqa: E402


class RunView:
    """What the report needs from a finished (or checkpointed) run directory."""

    def __init__(self, run_dir: str, eval_samples: int | None) -> None:
        self.dir = run_dir
        if find_checkpoint(run_dir) is None:
            raise ValueError(f"{run_dir}: no checkpoint ('latest' file missing); run with --save")
        state = read_run_state(run_dir, verify=False)  # the weights are verified when they are loaded
        self.cfg = state.client["config"]
        self.domains = list(state.client["domains"])
        self.method = state.config.mixing.method
        self.model_cfg = state.config.model
        self.data_cfg = state.config.data if eval_samples is None else dataclasses.replace(
            state.config.data, eval_samples_per_domain=eval_samples)
        self.opt_cfg = state.config.optimizer
        self.training = self.cfg["training"]
        self.tag = state.tag
        self.client = state.client
        self.iteration = state.iteration
        self.events = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))

    def lr(self) -> float:
        """The run's learning rate at the checkpoint's iteration."""
        return lr_at(self.iteration, self.opt_cfg, self.training["train_iters"])

    def options(self):
        """The run's method config (what its ``law_estimate`` reads besides the metrics)."""
        return MixingConfig.from_dict(self.cfg["mixing"]).options


class ProbeTrainer:
    """Trains short probes from the checkpoint weights and measures per-domain validation loss."""

    def __init__(self, run: RunView, lr: float, seed: int, device: torch.device, fresh_optimizer: bool) -> None:
        self.run = run
        self.lr = lr
        self.seed = seed
        self.device = device
        self.state = load_state_dict_from_checkpoint(run.dir)
        self.adam_state = None if fresh_optimizer else load_adam_state(
            run.dir, run.tag, optimizer_order(GPT(run.model_cfg), run.opt_cfg.weight_decay))
        self.train_sets = build_domain_datasets(run.data_cfg, "train")
        self.schedule_dict = self.run.client["schedule"]
        valid = self.valid = build_domain_datasets(run.data_cfg, "valid")
        if not valid:
            raise ValueError(f"{run.dir}: the run's --split has no validation part; the report needs one")
        mbs = run.training["micro_batch_size"]
        self.evaluator = Evaluator(valid, run.data_cfg.eval_samples_per_domain, mbs, 0, 1, device)
        self.evals = 0
        self.eval_seconds = 0.0

    def fresh_model(self) -> GPT:
        """A GPT with the checkpoint weights."""
        model = GPT(self.run.model_cfg)
        model.load_state_dict(self.state, strict=True)
        return model.to(self.device)

    def evaluate(self, model: GPT) -> np.ndarray:
        """Per-domain validation loss (K,)."""
        t0 = time.perf_counter()
        val = self.evaluator.evaluate(model)
        self.evals += 1
        self.eval_seconds += time.perf_counter() - t0
        return val

    def _blend(self, weights: np.ndarray, steps: int) -> tuple[BlendedDataset, int]:
        """The run's schedule plus one probe segment; returns the blend and the probe's first sample."""
        schedule = MixtureSchedule.from_dict(self.schedule_dict)
        start = schedule.total_samples
        schedule.append(steps * self.run.training["global_batch_size"], weights)
        return BlendedDataset(self.train_sets, schedule), start

    def model_and_optimizer(self) -> tuple[GPT, torch.optim.Optimizer]:
        """The checkpoint model and an AdamW holding the run's Adam state (fresh with --fresh-optimizer)."""
        model = self.fresh_model().train()
        opt = self.run.opt_cfg
        optim = torch.optim.AdamW(param_groups(model, opt.weight_decay), lr=self.lr,
                                  betas=(opt.adam_beta1, opt.adam_beta2), eps=opt.adam_eps)
        if self.adam_state is not None:
            seed_adam(optim, dict(model.named_parameters()), self.adam_state)
        return model, optim

    def step_batches(self, weights: np.ndarray, steps: int):
        """Each step's StepBatch (all micro-batches of the global batch) on mixture ``weights``."""
        blend, start = self._blend(weights, steps)
        gbs, mbs = self.run.training["global_batch_size"], self.run.training["micro_batch_size"]
        for step in range(steps):
            g0 = start + step * gbs
            micro = [read_micro_batch(blend, np.arange(g0 + m, g0 + m + mbs)).to(self.device)
                     for m in range(0, gbs, mbs)]
            yield StepBatch(step, micro, np.zeros(len(self.train_sets)))

    def train_probe(self, weights: np.ndarray, steps: int) -> GPT:
        """The checkpoint model after ``steps`` AdamW steps on mixture ``weights``."""
        torch.manual_seed(self.seed)
        model, optim = self.model_and_optimizer()
        opt = self.run.opt_cfg
        gbs = self.run.training["global_batch_size"]
        for batch in self.step_batches(weights, steps):
            optim.zero_grad(set_to_none=True)
            for mb in batch.micro_batches:
                loss = model(mb.tokens, mb.labels).sum() / (gbs * mb.tokens.shape[1])
                loss.backward()
            if opt.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), opt.clip_grad)
            optim.step()
        return model

    def val_batch(self, override: int | None = None) -> int:
        """Validation samples a domain per estimate: ``override``, else the run's --aioli-grad-val-batch,
        else its micro-batch."""
        return override or getattr(self.run.options(), "grad_val_batch", None) or self.run.training["micro_batch_size"]

    def gradient_a(self, steps: int, mode: str = "gradient",
                   val_batch: int | None = None) -> tuple[np.ndarray | None, int]:
        """Aioli's probe-free estimate of A per optimizer step (``mode``: gradient or lookahead; mean over
        ``steps`` uniform batches; ``val_batch``: see :meth:`val_batch`) and the steps it took; None
        without the run's Adam state (--fresh-optimizer: no preconditioner)."""
        model, optim = self.model_and_optimizer()
        k, mbs = len(self.train_sets), self.run.training["micro_batch_size"]
        val_batch = self.val_batch(val_batch)
        draws = ValidationDraws(self.valid, self.run.data_cfg.eval_samples_per_domain, val_batch, 0, 1)
        est = AioliGradientEstimator(model, optim, k, self.device, draws, mbs, 1, 0, mode)
        values = [est.before_step(n + 1, batch, self.lr)
                  for n, batch in enumerate(self.step_batches(np.full(k, 1.0 / k), steps))]
        values = [v.cpu().numpy() for v in values if v is not None]
        if not values:
            return None, 0
        got = gradient_estimate(np.sum(values, axis=0), k)
        return got.a, got.steps


SCORES = (*fidelity.SCORES, "spearman_matrix")
"""Each estimator's agreement scores against A*, in the order the table prints them."""


def compare(a: np.ndarray | None, a_star: np.ndarray) -> dict:
    """Cosine, centred cosine and Spearman of column sums and of the whole matrix, of an estimate ``a`` against A*."""
    if a is None or not np.all(np.isfinite(a)):
        return {"A": None if a is None else a.tolist(), **dict.fromkeys(SCORES)}
    scores = fidelity.agreement(a, a_star)
    return {"A": a.tolist(), **{k: scores[k] for k in fidelity.SCORES},
            "spearman_matrix": fidelity.spearman(a.ravel(), a_star.ravel())}


def estimator_report(trainer: ProbeTrainer, p: np.ndarray, dl: np.ndarray, a_star: np.ndarray,
                     cfg: fidelity.FidelityConfig, grad_steps: int, val_batch: int | None = None) -> dict:
    """Aioli's estimators of A at the checkpoint, each judged against A* (see step 5 above).

    The judge is A* fitted from the probes other than the q_j when there are at least K of
    them (the probes estimator is built from the q_j), else A* from all probes.
    """
    k = a_star.shape[0]
    held_out = len(p) - k >= k
    judge = fidelity.fit_a_star(p[k:], dl[k:])[0] if held_out else a_star
    a_probes = law.solve_a(dl[:k].T, p[:k], f=cfg.one_hot_factor)
    out = {"judge": "A* from the held-out probes" if held_out else
           "A* from all probes (fewer than K held out: favours the probes estimator)",
           "a_star_judge": judge.tolist(), "probes": compare(a_probes, judge),
           "grad_val_batch": trainer.val_batch(val_batch)}
    for mode in MODES:
        t0 = time.perf_counter()
        a_est, steps = trainer.gradient_a(grad_steps, mode, val_batch)
        rep = compare(None if a_est is None else a_est * cfg.probe_steps, judge)
        rep.update({"steps": steps, "seconds": time.perf_counter() - t0,
                    "note": None if a_est is not None else "no Adam state (--fresh-optimizer): no preconditioner"})
        out[mode] = rep
    return out


def run_report(run_dir: str, cfg: fidelity.FidelityConfig, eval_samples: int | None = None,
               probe_lr: float | None = None, a_key: str | None = None, log=print, fresh_optimizer: bool = False,
               grad_steps: int = 4, grad_val_batch: int | None = None) -> dict:
    """Train the probes, fit A*, compare with the run's A and with Aioli's estimators; the report as a dict."""
    run = RunView(run_dir, eval_samples)
    own, source = fidelity.method_a(run.method, run.events, run.options(), a_key)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    lr = run.lr() if probe_lr is None else probe_lr
    trainer = ProbeTrainer(run, lr, cfg.seed, device, fresh_optimizer)
    p = fidelity.probe_design(len(run.domains), cfg)
    t0 = time.perf_counter()
    before = trainer.evaluate(trainer.fresh_model())
    dl = []
    for n, weights in enumerate(p):
        after = trainer.evaluate(trainer.train_probe(weights, cfg.probe_steps))
        dl.append(before - after)
        log(f"probe {n + 1}/{len(p)} p={np.round(weights, 3).tolist()} avg dL={float(np.mean(dl[-1])):.4f}")
    dl = np.asarray(dl)
    if np.all(dl.mean(axis=1) < 0):
        moments = "fresh Adam moments" if fresh_optimizer else "the run's Adam state"
        log(f"warning: every probe raised the loss at LR {lr:.3g} ({moments}); A* is unreliable, "
            "try a lower --probe-lr")
    a_star, r2 = fidelity.fit_a_star(p, dl)
    report = {"run": os.path.abspath(run_dir), "checkpoint": run.tag, "iteration": run.iteration,
              "method": run.method, "method_a_source": source, "domains": run.domains,
              "method_a": own.tolist(), "a_star": a_star.tolist(), "law_r2": r2,
              "probe_mixtures": p.tolist(), "probe_loss_decrease": dl.tolist(), "val_loss_before": before.tolist(),
              "probe_steps": cfg.probe_steps, "probe_lr": lr, "seed": cfg.seed,
              "optimizer_state": "fresh" if fresh_optimizer else "run",
              "estimators": estimator_report(trainer, p, dl, a_star, cfg, grad_steps, grad_val_batch),
              "eval_samples_per_domain": run.data_cfg.eval_samples_per_domain,
              "seconds": time.perf_counter() - t0, "evaluations": trainer.evals}
    report.update(fidelity.agreement(own, a_star))
    return report


def _short(key: str) -> str:
    return key.replace("centred_cosine", "centred").replace("_column_sums", " cols").replace("_matrix", " A")


def estimator_table(estimators: dict) -> str:
    """Aioli's estimators against A*: one row per estimator, one column per agreement score."""
    lines = [f"{'estimator vs A*':<16}" + "".join(f"{_short(k):>15}" for k in SCORES)]
    for name in ("probes", *MODES):
        rep = estimators[name]
        lines.append(f"{name:<16}" + "".join(f"{'n/a' if rep[k] is None else format(rep[k], '.4f'):>15}"
                                             for k in SCORES))
    return "\n".join(lines + [f"judge: {estimators['judge']}"])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run directory (config.json, metrics.jsonl, checkpoints)")
    ap.add_argument("--num-probes", type=int, default=None,
                    help="probe mixtures (default K + max(60, 5K): fewer held-out probes gave two independent judges "
                         "(--seed) that disagreed at K >= 3; at least K)")
    ap.add_argument("--probe-steps", type=int, default=10,
                    help="steps per probe, the horizon A* measures (default 10; its column ranking can change "
                         "between 3 and 10)")
    ap.add_argument("--eval-samples-per-domain", type=int, default=None, help="default: the run's")
    ap.add_argument("--one-hot-factor", type=float, default=0.75, help="f of the q_j probes (default 0.75)")
    ap.add_argument("--probe-lr", type=float, default=None, help="default: the run's LR at the checkpoint")
    ap.add_argument("--a-key", choices=("A", "A_normalized", "E"), default=None,
                    help="which Aioli matrix to judge (default A_normalized, or A when normalisation is off)")
    ap.add_argument("--fresh-optimizer", action="store_true",
                    help="probes start from fresh Adam moments instead of the run's (no gradient estimate then)")
    ap.add_argument("--grad-steps", type=int, default=4,
                    help="uniform-mixture batches the gradient estimate of A averages (default 4)")
    ap.add_argument("--grad-val-batch", type=int, default=None,
                    help="validation samples a domain per estimate (default: the run's --aioli-grad-val-batch, "
                         "else its micro-batch)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the report as JSON here")
    args = ap.parse_args(argv)
    try:
        if args.grad_steps < 1:
            raise ValueError(f"--grad-steps must be >= 1, got {args.grad_steps}")
        if args.grad_val_batch is not None and args.grad_val_batch < 1:
            raise ValueError(f"--grad-val-batch must be >= 1, got {args.grad_val_batch}")
        config = os.path.join(args.run, "config.json")
        read_json(config, config)  # a missing or broken config is named before anything else loads
        cfg = fidelity.FidelityConfig(num_probes=args.num_probes, probe_steps=args.probe_steps,
                                      one_hot_factor=args.one_hot_factor, seed=args.seed)
        report = run_report(args.run, cfg, args.eval_samples_per_domain, args.probe_lr, args.a_key,
                            fresh_optimizer=args.fresh_optimizer, grad_steps=args.grad_steps,
                            grad_val_batch=args.grad_val_batch)
    except (ValueError, FileNotFoundError) as err:
        print(f"mixing_law_fidelity: error: {err}", file=sys.stderr)
        return 2
    print(f"law fidelity of {report['run']} ({report['method']}, {report['method_a_source']}; "
          f"A* from {len(report['probe_mixtures'])} probes of {report['probe_steps']} steps at {report['checkpoint']})")
    print(fidelity.format_table(report["domains"], report))
    print(estimator_table(report["estimators"]))
    if args.out:
        atomic_write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
