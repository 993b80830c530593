#!/usr/bin/env python
"""Launch the static sweep runs that the offline mixing methods are fitted from.

  --kind grid | dml   static mixtures covering the simplex: K = 2 → p₁ ∈ {0.1, …, 0.9}
                      (or --num-mixtures evenly spaced in [0.1, 0.9]); K ≥ 3 → the uniform
                      mixture plus seeded Dirichlet(1) draws, every weight ≥ 0.01 and a
                      multiple of 0.01 (so a run's name states its mixture exactly)
  --kind skillit      the K single-domain runs of Skill-It's skills graph

Every run is ``pretrain_gpt_mix.py <flags after -->, with --data-path W1 P1 W2 P2 …,
--mixing-method static --save RUN --load RUN`` in ``OUT/p0.10_0.90`` (the mixture in
domain order; the same weights are also written to ``RUN/mixture.json``, a weights file). The sweep is resumable: a finished run (test_results.json, or
its newest checkpoint at --train-iters) is skipped, an interrupted one resumes from its
checkpoint. ``OUT/sweep.json`` lists the mixtures, run directories and the total training
steps of the sweep (the extra compute the fitted method costs). Then::

  python tools/fit_mixing_law.py OUT/p*/ --method dml --out weights.json

(or pass ``--fit-out FILE`` to run that fit here: grid/dml → weights file, skillit → graph).
Each run's console output goes to ``RUN/train.log``; one progress line per run is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from megamix.data.config import parse_data_path  # noqa: E402
from megamix.fileio import atomic_write_json  # noqa: E402
from megamix.mixing.weights_file import write_weights_file  # noqa: E402
from megamix.training.ckpt_verify import CheckpointError  # noqa: E402
from megamix.training.run_state import read_run_state  # noqa: E402

KINDS = ("grid", "dml", "skillit")
# flags the sweep sets itself for every run
OWN_FLAGS = ("--save", "--load", "--mixing-method", "--mixture-weights", "--mixture-out")


class SweepError(ValueError):
    """The sweep was asked for something it cannot do."""


# ---------------------------------------------------------------- mixtures
def _hundredths(p: np.ndarray) -> np.ndarray:
    """``p`` rounded to multiples of 0.01, each >= 0.01, summing to exactly 100 hundredths."""
    k = len(p)
    free = 100 - k
    raw = np.asarray(p, dtype=np.float64) * free
    units = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - units), kind="stable")
    units[order[:free - int(units.sum())]] += 1
    return units + 1


def sweep_mixtures(kind: str, num_domains: int, num_mixtures: int | None, seed: int) -> np.ndarray:
    """The (n, K) mixtures of a sweep (rows on the simplex, multiples of 0.01)."""
    k = num_domains
    if k < 2:
        raise SweepError(f"a mixing sweep needs at least 2 domains in --data-path, got {k}")
    if kind == "skillit":
        if num_mixtures not in (None, k):
            raise SweepError(f"--kind skillit runs exactly K = {k} single-domain runs; drop --num-mixtures")
        return np.eye(k)
    if k == 2:
        n = 9 if num_mixtures is None else num_mixtures
        if n < 2:
            raise SweepError(f"--num-mixtures must be >= 2, got {n}")
        units = np.round(np.linspace(10, 90, n)).astype(np.int64)
        if len(set(units.tolist())) < n:
            raise SweepError(f"--num-mixtures {n}: more than 81 distinct p1 values in [0.1, 0.9] do not exist")
        return np.stack([units, 100 - units], axis=1) / 100.0
    n = 3 * k if num_mixtures is None else num_mixtures
    if n < 1:
        raise SweepError(f"--num-mixtures must be >= 1, got {n}")
    return _dirichlet_cover(k, n, seed)


def _dirichlet_cover(k: int, n: int, seed: int) -> np.ndarray:
    """Uniform first, then distinct seeded Dirichlet(1) draws rounded to hundredths."""
    rng = np.random.default_rng([seed, 0x5EE9])
    rows, seen = [], set()
    candidate = np.full(k, 1.0 / k)
    for _ in range(1000 * n):
        units = _hundredths(candidate)
        if tuple(units) not in seen:
            seen.add(tuple(units))
            rows.append(units / 100.0)
            if len(rows) == n:
                return np.stack(rows)
        candidate = rng.dirichlet(np.ones(k))
    raise SweepError(f"could not draw {n} distinct mixtures of {k} domains at 0.01 resolution")


def mixture_name(weights: np.ndarray) -> str:
    """The run directory name of a mixture, e.g. ``p0.10_0.90``."""
    return "p" + "_".join(f"{w:.2f}" for w in weights)


# ------------------------------------------------------------------- runs
def _data_path_span(base: list[str]) -> tuple[int, int]:
    """[start, stop) of the --data-path values in the base flags."""
    if "--data-path" not in base:
        raise SweepError("the flags after -- need --data-path (the domains to sweep over)")
    start = stop = base.index("--data-path") + 1
    while stop < len(base) and not base[stop].startswith("--"):
        stop += 1
    return start, stop


def check_base_args(base: list[str]) -> list[str]:
    """The domain names of the base flags; raises on flags the sweep must set itself."""
    clash = [f for f in OWN_FLAGS if f in base or any(a.startswith(f + "=") for a in base)]
    if clash:
        raise SweepError(f"the flags after -- must not set {', '.join(clash)}: the sweep sets them per run")
    start, stop = _data_path_span(base)
    specs = parse_data_path(base[start:stop])
    if specs[0].weight is not None:
        raise SweepError("--data-path after -- has weights; give plain prefixes, the sweep sets the mixtures")
    return [s.name for s in specs]


def _flag_value(base: list[str], flag: str) -> str | None:
    """The value of ``flag`` in the base flags (None when absent)."""
    for i, a in enumerate(base):
        if a == flag and i + 1 < len(base):
            return base[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def run_finished(run_dir: str, train_iters: int | None) -> bool:
    """Whether a run completed: a test report, or a newest checkpoint at ``train_iters``."""
    if os.path.exists(os.path.join(run_dir, "test_results.json")):
        return True
    if train_iters is None or not os.path.exists(os.path.join(run_dir, "latest")):
        return False
    try:
        loop = read_run_state(run_dir, verify=False).client["loop"]
    except CheckpointError:  # the newest save did not finish, or its state is damaged: run it (again)
        return False
    return loop["iteration"] >= train_iters and loop["phase"] is None


def weighted_flags(base: list[str], weights: list[float]) -> list[str]:
    """The base flags with ``--data-path W1 P1 W2 P2 ...`` carrying the run's mixture.

    The weights go into --data-path (not --mixture-weights) so that the run's config.json
    records them as ``mixing.mixture_weights``, which fit_mixing_law.py reads.
    """
    start, stop = _data_path_span(base)
    tokens = base[start:stop]
    if len(tokens) != len(weights):
        raise SweepError(f"--data-path has {len(tokens)} items for {len(weights)} domains; "
                         "give one PREFIX (or NAME=PREFIX) per domain")
    pairs = [t for w, tok in zip(weights, tokens) for t in (f"{w:.2f}", tok)]
    return base[:start] + pairs + base[stop:]


def run_command(base: list[str], weights: list[float], run_dir: str, nproc: int) -> list[str]:
    """The torchrun command of one static sweep run."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            os.path.join(REPO, "pretrain_gpt_mix.py"), *weighted_flags(base, weights),
            "--mixing-method", "static", "--save", run_dir, "--load", run_dir]


def _steps_trained(run_dir: str) -> int:
    """The last training step recorded in a run's metrics.jsonl (0 when none)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    steps = [0]
    with open(path) as fh:
        for line in fh:
            if line.endswith("\n") and '"event": "train"' in line:
                steps.append(int(json.loads(line)["step"]))
    return max(steps)


def _last_avg_val(run_dir: str) -> float | None:
    """The average validation loss of a run's last 'eval' event."""
    last = None
    path = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as fh:
            for line in fh:
                if line.endswith("\n") and '"event": "eval"' in line:
                    last = json.loads(line).get("avg_val_loss")
    return last


def launch_run(base: list[str], weights: list[float], run_dir: str, nproc: int) -> float:
    """Train (or resume) one run to completion, its output appended to RUN/train.log; seconds taken."""
    t0 = time.time()
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    with open(os.path.join(run_dir, "train.log"), "a") as log:
        proc = subprocess.run(run_command(base, weights, run_dir, nproc), stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise SweepError(f"run {run_dir} failed (exit code {proc.returncode}); see {run_dir}/train.log")
    return time.time() - t0


# ------------------------------------------------------------------ sweep
def write_sweep_json(out: str, kind: str, domains: list[str], seed: int, base: list[str], runs: list[dict]) -> dict:
    """Write OUT/sweep.json (atomically) and return its content."""
    for r in runs:
        r["steps"] = _steps_trained(r["dir"])
        r["avg_val_loss"] = _last_avg_val(r["dir"])
    obj = {"kind": kind, "domains": domains, "seed": seed, "base_args": base, "runs": runs,
           "total_steps": int(sum(r["steps"] for r in runs))}
    atomic_write_json(os.path.join(out, "sweep.json"), obj)
    return obj


def run_sweep(kind: str, out: str, base: list[str], num_mixtures: int | None = None, seed: int = 0,
              nproc: int = 2, log=print) -> dict:
    """Run (or resume) every run of the sweep; returns the content of sweep.json."""
    if kind not in KINDS:
        raise SweepError(f"--kind must be one of {KINDS}, got {kind!r}")
    domains = check_base_args(base)
    iters = _flag_value(base, "--train-iters")
    train_iters = int(iters) if iters is not None else None
    mixtures = sweep_mixtures(kind, len(domains), num_mixtures, seed)
    runs = [{"name": mixture_name(w), "dir": os.path.join(os.path.abspath(out), mixture_name(w)),
             "weights": w.tolist(), "finished": False} for w in mixtures]
    os.makedirs(out, exist_ok=True)
    for i, r in enumerate(runs, 1):
        head = f"[{i}/{len(runs)}] {r['name']}"
        if run_finished(r["dir"], train_iters):
            r["finished"] = True
            log(f"{head}: finished earlier, skipped")
            continue
        os.makedirs(r["dir"], exist_ok=True)
        write_weights_file(os.path.join(r["dir"], "mixture.json"), domains, r["weights"], {"sweep": kind})
        resuming = os.path.exists(os.path.join(r["dir"], "latest"))
        secs = launch_run(base, r["weights"], r["dir"], nproc)
        r["finished"] = True
        loss = _last_avg_val(r["dir"])
        log(f"{head}: {'resumed and ' if resuming else ''}trained in {secs:.1f}s, "
            f"avg val loss {loss if loss is None else round(loss, 4)}")
        write_sweep_json(out, kind, domains, seed, base, runs)
    return write_sweep_json(out, kind, domains, seed, base, runs)


def fit(kind: str, sweep: dict, out_file: str) -> None:
    """Run tools/fit_mixing_law.py on the sweep's run directories."""
    method = {"grid": "grid", "dml": "dml", "skillit": "skillit-graph"}[kind]
    cmd = [sys.executable, os.path.join(REPO, "tools", "fit_mixing_law.py"), *[r["dir"] for r in sweep["runs"]],
           "--method", method, "--out", out_file, "--seed", str(sweep["seed"])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SweepError(f"fit_mixing_law.py --method {method} failed: {proc.stderr.strip()}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    base = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 usage="%(prog)s --kind KIND --out DIR [options] -- TRAINING FLAGS")
    ap.add_argument("--kind", required=True, choices=KINDS)
    ap.add_argument("--out", required=True, help="sweep directory: one run directory per mixture")
    ap.add_argument("--num-mixtures", type=int, default=None,
                    help="mixtures to run (default 9 for 2 domains, 3K otherwise; skillit: K)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the Dirichlet cover and of the fit")
    ap.add_argument("--nproc", type=int, default=2, help="processes per run (torchrun --nproc_per_node)")
    ap.add_argument("--fit-out", default=None, help="also run fit_mixing_law.py and write its output here")
    args = ap.parse_args(own)
    if not base:
        ap.error("give the training flags after -- (at least --data-path and the model/batch flags)")
    try:
        sweep = run_sweep(args.kind, args.out, base, args.num_mixtures, args.seed, args.nproc)
        print(f"sweep of {len(sweep['runs'])} runs, {sweep['total_steps']} training steps: "
              f"{os.path.join(args.out, 'sweep.json')}")
        if args.fit_out:
            fit(args.kind, sweep, args.fit_out)
            print(f"wrote {args.fit_out}")
    except ValueError as err:
        print(f"mixing_sweep: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
