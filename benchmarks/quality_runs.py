"""The runs behind benchmarks/mixing_quality.py: one function per method, every run resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from benchmarks.paper_profile import ROUNDS, aioli_recipe
from benchmarks.quality_records import check_same_run, host, mean_mixture
from megamix.fileio import atomic_write_json, read_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPLIT = "98,1,1"  # --split of every quality run (train, validation, test documents per domain)
PAPER_SPLIT_SEED = 1  # the paper profile's --split-seed unless one is given: the split fixed across seeds


@dataclass
class QualitySpec:
    """The CPU-scale model and training recipe shared by every run of the benchmark."""

    corpus: str
    out: str
    train_iters: int = 160
    nproc: int = 2
    num_layers: int = 4
    hidden_size: int = 128
    heads: int = 4
    seq_length: int = 128
    micro_batch: int = 8
    global_batch: int = 32
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup: int = 10
    eval_samples: int = 16
    test_samples: int = 128
    round_length: int = 50
    lp_rounds: int = 1
    lp_steps: int = 4
    aioli_warmup: int = 50
    profile: str = "quick"
    split_seed: int | None = None
    eval_micro_batch: int | None = None
    warmup_fraction: float | None = None
    report_only: bool = False  # tabulate finished runs; train nothing (--report-only)
    grad_interval: int = 10  # --aioli-grad-interval of the aioli-grad rows
    grad_val_batch: int | None = None  # --aioli-grad-val-batch of the aioli-grad rows (None: the micro-batch)

    def _val_batch_note(self) -> str:
        """', B validation samples a domain per estimate' when --grad-val-batch set it, else ''."""
        if self.grad_val_batch is None:
            return ""
        return f", {self.grad_val_batch} validation samples a domain per estimate"

    def warmup_iters(self, iters: int) -> int:
        """LR warm-up steps of a run of ``iters`` steps (a fraction of it in the paper profile)."""
        return int(self.warmup_fraction * iters) if self.warmup_fraction is not None else self.warmup

    def describe(self, ks: list[int] | None = None) -> str:
        """One paragraph stating the model and recipe (printed and written with the table)."""
        split = ("the document split re-drawn by every seed" if self.split_seed is None
                 else f"the document split fixed across seeds (--split-seed {self.split_seed})")
        warm = (f"warmup {self.warmup_fraction:.0%} of the steps" if self.warmup_fraction is not None
                else f"warmup {self.warmup}")
        text = (f"Corpus: {os.path.abspath(self.corpus)}. Model: GPT {self.num_layers} layers, hidden "
                f"{self.hidden_size}, {self.heads} heads, seq {self.seq_length}, SentencePiece tokenizer of the "
                "corpus; "
                f"{self.train_iters} steps of {self.global_batch} samples ({self.global_batch * self.seq_length} "
                f"tokens/step), AdamW lr {self.lr} cosine to {self.min_lr}, {warm}; {self.nproc} CPU processes "
                f"(gloo, fp32). Eval: {self.eval_samples} validation samples per domain; test: {self.test_samples} "
                f"test samples per domain; {split}.")
        if self.profile != "paper":
            return text + (f" Aioli: round U={self.round_length}, k={self.lp_rounds}, s={self.lp_steps}, f=0.75, "
                           f"eta=1, first round after {self.aioli_warmup} warm-up steps on the start mixture "
                           "(--aioli-prior-steps).")
        recipes = [aioli_recipe(k, self.round_length).describe() for k in sorted(set(ks or [2, 3]))]
        return (text + " Aioli (paper profile):\n" + "\n".join(f"- {r}" for r in recipes)
                + f"\n- aioli-grad: the same recipe per K with --aioli-estimator gradient (no probe steps; A from "
                f"per-domain gradients preconditioned by Adam's state, an estimate every {self.grad_interval} steps"
                f"{self._val_batch_note()})"
                + f"\n- aioli-look: the same with --aioli-estimator lookahead (A from the validation loss change of a "
                f"virtual Adam step on each domain's gradient, every {self.grad_interval} steps)"
                + "\n- a row ending in -ppl: that Aioli with --aioli-objective perplexity (the EG step lowers the "
                "average perplexity, not the average loss)"
                + "\n- a row ending in -own: that Aioli with megamix's K >= 4 recipe at every K (cumulative update, "
                "eta 1, no EMA, one round on the start mixture first), so p is not held near uniform")

    def to_dict(self) -> dict:
        """JSON-able form."""
        return asdict(self)

    def base_flags(self, domains: list[str], seed: int, iters: int) -> list[str]:
        """pretrain_gpt_mix.py flags common to every run."""
        prefixes = [os.path.join(self.corpus, f"{d}_text_document") for d in domains]
        flags = ["--data-path", *prefixes, "--num-layers", str(self.num_layers),
                 "--hidden-size", str(self.hidden_size), "--num-attention-heads", str(self.heads),
                 "--seq-length", str(self.seq_length), "--micro-batch-size", str(self.micro_batch),
                 "--global-batch-size", str(self.global_batch), "--train-iters", str(iters), "--lr", str(self.lr),
                 "--min-lr", str(self.min_lr), "--lr-warmup-iters", str(self.warmup_iters(iters)),
                 "--seed", str(seed), "--tokenizer-type", "SentencePieceTokenizer",
                 "--tokenizer-model", os.path.join(self.corpus, "tokenizer.model"),
                 "--eval-samples-per-domain", str(self.eval_samples),
                 "--test-samples-per-domain", str(self.test_samples), "--split", SPLIT,
                 "--log-interval", "10", "--mixing-update-interval", str(self.round_length),
                 "--data-cache-path", os.path.join(self.out, "cache")]
        if self.split_seed is not None:
            flags += ["--split-seed", str(self.split_seed)]
        if self.eval_micro_batch is not None:
            flags += ["--eval-micro-batch-size", str(self.eval_micro_batch)]
        return flags

    def aioli_flags(self, k_domains: int = 2, own: bool = False) -> list[str]:
        """Aioli's hyperparameters at this scale (per K in the paper profile; ``own``: its K >= 4 recipe;
        the quick and full profiles have one recipe, and mixing_quality.py refuses ``-own`` rows there)."""
        if self.profile == "paper":
            return aioli_recipe(k_domains, self.round_length, own).flags()
        return ["--mixing-method", "aioli", "--aioli-lp-rounds", str(self.lp_rounds),
                "--aioli-lp-steps", str(self.lp_steps), "--aioli-prior-steps", str(self.aioli_warmup)]


def paper_spec(corpus: str, out: str, train_iters: int = 1000, nproc: int = 2,
               split_seed: int = PAPER_SPLIT_SEED) -> QualitySpec:
    """The ``--profile paper`` recipe: T = 20 rounds of N // 20 steps, 10 % warm-up, cosine to 0.2x the peak."""
    if train_iters < 2 * ROUNDS:
        raise ValueError(f"--train-iters {train_iters}: the paper profile needs >= {2 * ROUNDS} steps "
                         f"({ROUNDS} rounds of >= 2 steps)")
    return QualitySpec(corpus=corpus, out=out, train_iters=train_iters, nproc=nproc, num_layers=2, hidden_size=128,
                       heads=4, seq_length=128, micro_batch=8, global_batch=16, lr=2e-3, min_lr=4e-4,
                       eval_samples=64, test_samples=512, round_length=train_iters // ROUNDS, lp_rounds=0,
                       lp_steps=0, aioli_warmup=0, profile="paper", split_seed=split_seed, eval_micro_batch=64,
                       warmup_fraction=0.1)


class NotRun(Exception):
    """A run that has not finished, met under --report-only."""


def _done(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, "test_results.json"))


def train(spec: QualitySpec, run_dir: str, domains: list[str], seed: int, flags: list[str],
          iters: int | None = None, label: str = "") -> dict:
    """Train one run (resuming it if interrupted, skipping it if finished); return its record."""
    iters = iters or spec.train_iters
    t0 = time.time()
    cmd_flags = [*spec.base_flags(domains, seed, iters), *flags, "--save", run_dir, "--load", run_dir]
    check_same_run(run_dir, domains, cmd_flags)
    if not _done(run_dir) and spec.report_only:
        raise NotRun(run_dir)
    if not _done(run_dir):
        os.makedirs(run_dir, exist_ok=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec.nproc}",
               os.path.join(REPO, "pretrain_gpt_mix.py"), *cmd_flags]
        env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"), PYTHONPATH=REPO)
        with open(os.path.join(run_dir, "train.log"), "a") as log:
            proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"run failed (rc {proc.returncode}); see {run_dir}/train.log")
        atomic_write_json(os.path.join(run_dir, "wall.json"), {"wall_s": time.time() - t0, "host": host()})
    with open(os.path.join(run_dir, "test_results.json")) as f:
        res = json.load(f)
    wall_file = os.path.join(run_dir, "wall.json")
    timing = read_json(wall_file, wall_file) if os.path.isfile(wall_file) else {}
    print(f"  {label or run_dir}: avg test ppl {res['avg_test_ppl']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    return {"run_dir": run_dir, "steps": iters, "test_ppl": res["test_ppl"], "avg_test_ppl": res["avg_test_ppl"],
            "avg_test_loss": res["avg_test_loss"], "worst_domain": res["worst_domain"],
            "worst_test_ppl": res["worst_test_ppl"], "wall_s": timing.get("wall_s"), "host": timing.get("host"),
            "mean_weights": mean_mixture(run_dir)}


def _fit(kind: str, runs: list[str], out: str) -> str:
    if not os.path.isfile(out):
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "fit_mixing_law.py"), *runs,
                        "--method", kind, "--out", out], check=True)
    return out


def _weights_file(spec: QualitySpec, path: str, domains: list[str], weights: list[float],
                  source: str = "mixing_quality sweep") -> str:
    """The path of a static mixture's weights file, written there unless it exists or the benchmark
    only reports (--report-only tabulates finished runs and leaves the run directories as they are)."""
    from megamix.mixing.weights_file import write_weights_file

    if not spec.report_only and not os.path.isfile(path):
        write_weights_file(path, domains, weights, {"source": source})
    return path


def _sweep_mixtures(k: int, seed: int, count: int = 6) -> list[list[float]]:
    """Grid of MIXING.md: K = 2 → p1 in 0.1..0.9; K >= 3 → a seeded Dirichlet cover plus the uniform mixture."""
    import numpy as np

    if k == 2:
        return [[float(round(p, 1)), float(round(1 - p, 1))] for p in np.arange(0.1, 1.0, 0.1)]
    rng = np.random.default_rng([seed, k])
    return [[1.0 / k] * k] + [list(map(float, rng.dirichlet(np.ones(k)))) for _ in range(count)]


def sweep(spec: QualitySpec, root: str, domains: list[str], seed: int, iters: int) -> list[str]:
    """Static runs over the sweep mixtures; returns their run directories."""
    dirs = []
    for i, p in enumerate(_sweep_mixtures(len(domains), seed)):
        run_dir = os.path.join(root, f"mix{i:02d}")
        wf = _weights_file(spec, os.path.join(root, f"mix{i:02d}.weights.json"), domains, p)
        train(spec, run_dir, domains, seed, ["--mixing-method", "static", "--mixture-weights", wf], iters,
              label=f"sweep {i} {[round(x, 2) for x in p]}")
        dirs.append(run_dir)
    return dirs


def single_domain_runs(spec: QualitySpec, root: str, domains: list[str], seed: int, iters: int) -> list[str]:
    """Skill-It's K runs, each on one domain only."""
    dirs = []
    for i, d in enumerate(domains):
        onehot = [1.0 if j == i else 0.0 for j in range(len(domains))]
        wf = _weights_file(spec, os.path.join(root, f"only_{d}.weights.json"), domains, onehot,
                           f"mixing_quality single-domain run of {d}")
        run_dir = os.path.join(root, f"only_{d}")
        train(spec, run_dir, domains, seed, ["--mixing-method", "static", "--mixture-weights", wf], iters,
              label=f"single-domain {d}")
        dirs.append(run_dir)
    return dirs


def learn_mixture(spec: QualitySpec, method: str, root: str, domains: list[str], seed: int,
                  iters: int) -> tuple[str, int]:
    """A baseline's learned proportions from runs of ``iters`` steps: (weights file, extra steps spent)."""
    out = os.path.join(root, f"{method}.weights.json")
    if method in ("grid", "dml"):
        runs = sweep(spec, os.path.join(root, "sweep"), domains, seed, iters)
        return _fit(method, runs, out), iters * len(runs)
    if method == "skillit":
        graph, extra = skill_graph(spec, root, domains, seed, iters)
        train(spec, os.path.join(root, "skillit-proxy"), domains, seed,
              ["--mixing-method", "skillit", "--skillit-graph", graph, "--mixture-out", out], iters,
              label="skillit proxy")
        return out, extra + iters
    if method == "doremi":
        ref = os.path.join(root, "doremi-reference")
        train(spec, ref, domains, seed, ["--mixing-method", "stratified"], iters, label="doremi reference")
        train(spec, os.path.join(root, "doremi-proxy"), domains, seed,
              ["--mixing-method", "doremi", "--doremi-reference", ref, "--mixture-out", out], iters,
              label="doremi proxy")
        return out, 2 * iters
    if method == "doge":
        train(spec, os.path.join(root, "doge-proxy"), domains, seed,
              ["--mixing-method", "doge", "--mixture-out", out], iters, label="doge proxy")
        return out, iters
    raise ValueError(f"no learned mixture for method {method!r}")


def skill_graph(spec: QualitySpec, root: str, domains: list[str], seed: int, iters: int) -> tuple[str, int]:
    """Skill-It's graph from K single-domain runs: (graph file, extra steps)."""
    runs = single_domain_runs(spec, os.path.join(root, "single"), domains, seed, iters)
    return _fit("skillit-graph", runs, os.path.join(root, "skillit.graph.json")), iters * len(runs)


def _static(spec: QualitySpec, run_dir: str, domains: list[str], seed: int, weights_file: str, label: str) -> dict:
    return train(spec, run_dir, domains, seed, ["--mixing-method", "static", "--mixture-weights", weights_file],
                 label=label)


def _tilt(method: str, k: int) -> list[float]:
    """Weights of a static tilt ``p<x>``: x on the first domain, the rest shared equally."""
    x = float(method[1:])
    if not 0.0 < x < 1.0:
        raise ValueError(f"method {method!r}: the tilt must be in (0, 1)")
    return [x] + [(1.0 - x) / (k - 1)] * (k - 1)


def _reuse_sweep_run(weights_file: str, sweep_root: str) -> tuple[str, str] | None:
    """The sweep run trained on exactly the chosen mixture (grid search picks one) and its weights
    file, or None."""
    with open(weights_file) as f:
        chosen = json.load(f)["weights"]
    for name in sorted(os.listdir(sweep_root)):
        if name.endswith(".weights.json"):
            with open(os.path.join(sweep_root, name)) as f:
                if all(abs(a - b) < 1e-9 for a, b in zip(json.load(f)["weights"], chosen)):
                    return os.path.join(sweep_root, name[:-len(".weights.json")]), os.path.join(sweep_root, name)
    return None


def _learned(spec: QualitySpec, method: str, root: str, domains: list[str], seed: int) -> tuple[dict, int]:
    """A baseline's learned mixture used static over the full run: 'X' learned at N, 'X-half' at N // 2."""
    n = spec.train_iters
    base, half = (method[:-5], True) if method.endswith("-half") else (method, False)
    learn_root = os.path.join(os.path.dirname(os.path.dirname(root)), "_learn", f"seed{seed}",
                              "half" if half else "full")
    weights, extra = learn_mixture(spec, base, learn_root, domains, seed, n // 2 if half else n)
    if base == "grid" and not half:  # the chosen mixture was one of the sweep's full-length runs
        reused = _reuse_sweep_run(weights, os.path.join(learn_root, "sweep"))
        if reused is not None:  # read back with the flags it was trained with (the run check compares them)
            run, wf = reused
            return train(spec, run, domains, seed, ["--mixing-method", "static", "--mixture-weights", wf],
                         label=f"{method} seed {seed} (its sweep run)"), extra - n
    return _static(spec, os.path.join(root, "final"), domains, seed, weights, f"{method} seed {seed}"), extra


PROBE_FREE = {"aioli-grad": "gradient", "aioli-look": "lookahead"}
"""Rows of Aioli with a probe-free estimator: row name -> --aioli-estimator."""

PPL = "-ppl"
"""Suffix of an Aioli row run with --aioli-objective perplexity (aioli-ppl, aioli-grad-ppl, aioli-look-ppl)."""

OWN = "-own"
"""Last suffix of an Aioli row run with megamix's K >= 4 recipe at any K (aioli-grad-ppl-own: cumulative
update, eta 1, no EMA, one round on the start mixture first), where p is not confined near uniform."""


def aioli_row(method: str) -> tuple[str, bool, bool] | None:
    """``aioli-grad-ppl-own`` -> ('aioli-grad', perplexity objective, own recipe); None if not an Aioli row."""
    own = method.endswith(OWN)
    rest = method.removesuffix(OWN)
    base = rest.removesuffix(PPL)
    return (base, rest != base, own) if base in ("aioli", *PROBE_FREE) else None


REPLAYS = ("replay", "mirror")
"""Control rows ``replay:ROW`` / ``mirror:ROW``: ROW's recorded schedule (same seed) trained again with
--mixing-method replay, as recorded or with every tilt reversed through uniform (--replay-mirror)."""


def source_row(method: str) -> str:
    """The row a control row replays (``mirror:aioli-grad-ppl`` -> ``aioli-grad-ppl``); any other row itself."""
    kind, sep, source = method.partition(":")
    return source if sep and kind in REPLAYS else method


def _replay(spec: QualitySpec, method: str, root: str, domains: list[str], seed: int) -> dict:
    """A control row: its source row's run (trained first if needed), then that run's schedule replayed."""
    source = source_row(method)
    src = run_method(spec, source, os.path.join(os.path.dirname(os.path.dirname(root)), source, f"seed{seed}"),
                     domains, seed)
    flags = ["--mixing-method", "replay", "--replay-schedule", os.path.join(src["run_dir"], "schedule.json")]
    if method.startswith("mirror:"):
        flags.append("--replay-mirror")
    return train(spec, os.path.join(root, "final"), domains, seed, flags, label=f"{method} seed {seed}")


PPL_RULE = "ppl-rule"
"""A static row: p proportional to the same seed's stratified run's per-domain validation perplexity at its
last evaluation (that run's N steps count as extra), the one-line rule behind the perplexity objective."""


def perplexity_rule(run_dir: str, domains: list[str]) -> list[float]:
    """p ∝ the run's per-domain validation perplexity at its last evaluation (metrics.jsonl)."""
    from megamix.fileio import read_jsonl

    evals = [e for e in read_jsonl(os.path.join(run_dir, "metrics.jsonl")) if e.get("event") == "eval"]
    if not evals:
        raise ValueError(f"{run_dir}/metrics.jsonl: no 'eval' event, so no perplexity for the {PPL_RULE} row")
    ppl = [float(evals[-1]["val_ppl"][d]) for d in domains]
    return [x / sum(ppl) for x in ppl]


def _ppl_rule(spec: QualitySpec, root: str, domains: list[str], seed: int) -> dict:
    """The perplexity rule's static run, after the same seed's stratified run (trained first if needed)."""
    ref = run_method(spec, "stratified", os.path.join(os.path.dirname(os.path.dirname(root)), "stratified",
                                                      f"seed{seed}"), domains, seed)
    wf = _weights_file(spec, os.path.join(root, "rule.weights.json"), domains,
                       perplexity_rule(ref["run_dir"], domains), f"mixing_quality {PPL_RULE} of {ref['run_dir']}")
    return _static(spec, os.path.join(root, "final"), domains, seed, wf, f"{PPL_RULE} seed {seed}")


def _aioli_row_flags(spec: QualitySpec, method: str, k: int) -> list[str]:
    """The flags of an Aioli row: the profile's recipe, its estimator, its objective."""
    base, ppl, own = aioli_row(method)
    flags = [*spec.aioli_flags(k, own)]
    if base in PROBE_FREE:
        flags += ["--aioli-estimator", PROBE_FREE[base], "--aioli-grad-interval", str(spec.grad_interval)]
        if spec.grad_val_batch is not None:
            flags += ["--aioli-grad-val-batch", str(spec.grad_val_batch)]
    if ppl:
        flags += ["--aioli-objective", "perplexity"]
    return flags


def run_method(spec: QualitySpec, method: str, root: str, domains: list[str], seed: int) -> dict:
    """One method's final run on one setting and seed, with the extra steps its learning cost.

    Methods: stratified, aioli, aioli-grad / aioli-look (Aioli's probe-free estimators), each Aioli row
    with ``-ppl`` (--aioli-objective perplexity) and/or ``-own`` (megamix's K >= 4 recipe), skillit,
    p<x> (static tilt), ppl-rule (p ∝ stratified's validation perplexity, static), X (a baseline's mixture
    learned at N), X-half (learned on half-length runs, used static), X+aioli (the same, as Aioli's prior),
    replay:ROW / mirror:ROW (ROW's recorded schedule trained again, as is / with its tilts reversed).
    Learned mixtures live under <setting>/_learn/seed<s>/{full,half} so that methods share them.
    """
    n, k = spec.train_iters, len(domains)
    final = os.path.join(root, "final")
    if method == "stratified":
        rec, extra = train(spec, final, domains, seed, ["--mixing-method", "stratified"],
                           label=f"stratified seed {seed}"), 0
    elif source_row(method) != method:
        rec, extra = _replay(spec, method, root, domains, seed), 0
    elif aioli_row(method) is not None:
        rec, extra = train(spec, final, domains, seed, _aioli_row_flags(spec, method, k),
                           label=f"{method} seed {seed}"), 0
    elif method.startswith("p") and method[1:].replace(".", "", 1).isdigit():
        wf = _weights_file(spec, os.path.join(root, "tilt.weights.json"), domains, _tilt(method, k),
                           f"mixing_quality tilt {method}")
        rec, extra = _static(spec, final, domains, seed, wf, f"{method} seed {seed}"), 0
    elif method == PPL_RULE:
        rec, extra = _ppl_rule(spec, root, domains, seed), n
    elif method == "skillit":
        graph, extra = skill_graph(spec, root, domains, seed, n)
        rec = train(spec, final, domains, seed, ["--mixing-method", "skillit", "--skillit-graph", graph],
                    label=f"skillit seed {seed}")
    elif method.endswith("+aioli"):
        learn_root = os.path.join(os.path.dirname(os.path.dirname(root)), "_learn", f"seed{seed}", "half")
        prior, extra = learn_mixture(spec, method.split("+")[0], learn_root, domains, seed, n // 2)
        rec = train(spec, final, domains, seed, [*spec.aioli_flags(k), "--aioli-prior", prior],
                    label=f"{method} seed {seed}")
    else:
        rec, extra = _learned(spec, method, root, domains, seed)
    return {**rec, "method": method, "seed": seed, "extra_steps": extra}


def run_setting(spec: QualitySpec, name: str, domains: list[str], plan: list[tuple[str, int]],
                first_seed: int = 1) -> list[dict]:
    """Every (method, seeds) of ``plan`` on one setting, seed by seed from ``first_seed``; one record per final run.

    Seeds below ``first_seed`` are neither run nor read (seeds split across machines or sittings).
    """
    print(f"== {name}: {', '.join(domains)}", flush=True)
    records = []
    for seed in range(first_seed, max([s for _, s in plan], default=0) + 1):
        for method, seeds in plan:
            if seed <= seeds:
                root = os.path.join(spec.out, name, method, f"seed{seed}")
                try:
                    records.append({"setting": name, "domains": list(domains),
                                    **run_method(spec, method, root, domains, seed)})
                except NotRun as e:
                    print(f"  {method} seed {seed}: not run yet ({e})", flush=True)
    return records
