"""The runs behind benchmarks/mixing_quality.py: one function per method, every run resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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

    def describe(self) -> str:
        """One paragraph stating the model and recipe (printed and written with the table)."""
        return (f"Model: GPT {self.num_layers} layers, hidden {self.hidden_size}, {self.heads} heads, "
                f"seq {self.seq_length}, SentencePiece tokenizer of the corpus; {self.train_iters} steps of "
                f"{self.global_batch} samples ({self.global_batch * self.seq_length} tokens/step), AdamW lr {self.lr} "
                f"cosine to {self.min_lr}, warmup {self.warmup}; {self.nproc} CPU processes (gloo, fp32). Eval: "
                f"{self.eval_samples} validation samples per domain; test: {self.test_samples} test samples per "
                f"domain. Aioli: round U={self.round_length}, k={self.lp_rounds}, s={self.lp_steps}, f=0.75, eta=1, "
                f"first round after {self.aioli_warmup} warm-up steps on the start mixture (--aioli-prior-steps).")

    def to_dict(self) -> dict:
        """JSON-able form."""
        return asdict(self)

    def base_flags(self, domains: list[str], seed: int, iters: int) -> list[str]:
        """pretrain_gpt_mix.py flags common to every run."""
        prefixes = [os.path.join(self.corpus, f"{d}_text_document") for d in domains]
        return ["--data-path", *prefixes, "--num-layers", str(self.num_layers),
                "--hidden-size", str(self.hidden_size), "--num-attention-heads", str(self.heads),
                "--seq-length", str(self.seq_length), "--micro-batch-size", str(self.micro_batch),
                "--global-batch-size", str(self.global_batch), "--train-iters", str(iters), "--lr", str(self.lr),
                "--min-lr", str(self.min_lr), "--lr-warmup-iters", str(self.warmup), "--seed", str(seed),
                "--tokenizer-type", "SentencePieceTokenizer",
                "--tokenizer-model", os.path.join(self.corpus, "tokenizer.model"),
                "--eval-samples-per-domain", str(self.eval_samples),
                "--test-samples-per-domain", str(self.test_samples), "--split", "98,1,1",
                "--log-interval", "10", "--mixing-update-interval", str(self.round_length),
                "--data-cache-path", os.path.join(self.out, "cache")]

    def aioli_flags(self) -> list[str]:
        """Aioli's hyperparameters at this scale."""
        return ["--mixing-method", "aioli", "--aioli-lp-rounds", str(self.lp_rounds),
                "--aioli-lp-steps", str(self.lp_steps), "--aioli-prior-steps", str(self.aioli_warmup)]


def _done(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, "test_results.json"))


def train(spec: QualitySpec, run_dir: str, domains: list[str], seed: int, flags: list[str],
          iters: int | None = None, label: str = "") -> dict:
    """Train one run (resuming it if interrupted, skipping it if finished); return its record."""
    iters = iters or spec.train_iters
    t0 = time.time()
    if not _done(run_dir):
        os.makedirs(run_dir, exist_ok=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec.nproc}",
               os.path.join(REPO, "pretrain_gpt_mix.py"), *spec.base_flags(domains, seed, iters), *flags,
               "--save", run_dir, "--load", run_dir]
        env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"), PYTHONPATH=REPO)
        with open(os.path.join(run_dir, "train.log"), "a") as log:
            proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"run failed (rc {proc.returncode}); see {run_dir}/train.log")
    with open(os.path.join(run_dir, "test_results.json")) as f:
        res = json.load(f)
    print(f"  {label or run_dir}: avg test ppl {res['avg_test_ppl']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    return {"run_dir": run_dir, "steps": iters, "test_ppl": res["test_ppl"], "avg_test_ppl": res["avg_test_ppl"],
            "worst_domain": res["worst_domain"], "worst_test_ppl": res["worst_test_ppl"]}


def _fit(kind: str, runs: list[str], out: str) -> str:
    if not os.path.isfile(out):
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "fit_mixing_law.py"), *runs,
                        "--method", kind, "--out", out], check=True)
    return out


def _weights_file(path: str, domains: list[str], weights: list[float]) -> str:
    from megamix.mixing.weights_file import write_weights_file

    if not os.path.isfile(path):
        write_weights_file(path, domains, weights, {"source": "mixing_quality sweep"})
    return path


def _sweep_mixtures(k: int, seed: int, count: int = 6) -> list[list[float]]:
    """Grid of MIXING.md: K = 2 → p1 in 0.1..0.9; K >= 3 → a seeded Dirichlet cover plus the uniform mixture."""
    import numpy as np

    if k == 2:
        return [[round(p, 1), round(1 - p, 1)] for p in np.arange(0.1, 1.0, 0.1)]
    rng = np.random.default_rng([seed, k])
    return [[1.0 / k] * k] + [list(map(float, rng.dirichlet(np.ones(k)))) for _ in range(count)]


def sweep(spec: QualitySpec, root: str, domains: list[str], seed: int, iters: int) -> list[str]:
    """Static runs over the sweep mixtures; returns their run directories."""
    dirs = []
    for i, p in enumerate(_sweep_mixtures(len(domains), seed)):
        run_dir = os.path.join(root, f"mix{i:02d}")
        wf = _weights_file(os.path.join(root, f"mix{i:02d}.weights.json"), domains, p)
        train(spec, run_dir, domains, seed, ["--mixing-method", "static", "--mixture-weights", wf], iters,
              label=f"sweep {i} {[round(x, 2) for x in p]}")
        dirs.append(run_dir)
    return dirs


def single_domain_runs(spec: QualitySpec, root: str, domains: list[str], seed: int, iters: int) -> list[str]:
    """Skill-It's K runs, each on one domain only."""
    dirs = []
    for i, d in enumerate(domains):
        onehot = [1.0 if j == i else 0.0 for j in range(len(domains))]
        wf = _weights_file(os.path.join(root, f"only_{d}.weights.json"), domains, onehot)
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


def run_method(spec: QualitySpec, method: str, root: str, domains: list[str], seed: int) -> dict:
    """One method's final run on one setting and seed, with the extra steps its learning cost."""
    n = spec.train_iters
    if method == "stratified":
        rec, extra = train(spec, os.path.join(root, "final"), domains, seed, ["--mixing-method", "stratified"],
                           label=f"stratified seed {seed}"), 0
    elif method == "aioli":
        rec, extra = train(spec, os.path.join(root, "final"), domains, seed, spec.aioli_flags(),
                           label=f"aioli seed {seed}"), 0
    elif method == "skillit":
        graph, extra = skill_graph(spec, root, domains, seed, n)
        rec = train(spec, os.path.join(root, "final"), domains, seed,
                    ["--mixing-method", "skillit", "--skillit-graph", graph], label=f"skillit seed {seed}")
    elif method.endswith("+aioli"):
        prior, extra = learn_mixture(spec, method.split("+")[0], os.path.join(root, "half"), domains, seed, n // 2)
        rec = train(spec, os.path.join(root, "final"), domains, seed, [*spec.aioli_flags(), "--aioli-prior", prior],
                    label=f"{method} seed {seed}")
    else:
        weights, extra = learn_mixture(spec, method, os.path.join(root, "learn"), domains, seed, n)
        rec = train(spec, os.path.join(root, "final"), domains, seed,
                    ["--mixing-method", "static", "--mixture-weights", weights], label=f"{method} seed {seed}")
    return {**rec, "method": method, "seed": seed, "extra_steps": extra}


def run_setting(spec: QualitySpec, name: str, domains: list[str], methods: list[str], seeds: int) -> list[dict]:
    """Every method x seed on one setting; returns one record per final run."""
    print(f"== {name}: {', '.join(domains)}", flush=True)
    records = []
    for seed in range(1, seeds + 1):
        for method in methods:
            root = os.path.join(spec.out, name, method, f"seed{seed}")
            records.append({"setting": name, **run_method(spec, method, root, domains, seed)})
    return records
