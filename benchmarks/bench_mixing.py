#!/usr/bin/env python
"""Wall-clock cost of Aioli over stratified sampling at equal steps (tiny model, 2 CPU processes).

Runs the same training command up to five ways (``--methods``) — stratified, Aioli with
``--aioli-loss-source val`` and with ``train``, and Aioli's probe-free ``--aioli-estimator
gradient`` and ``lookahead`` (an estimate every ``--grad-interval`` steps, its cost inside
the step time) — at the paper's Aioli defaults (k = 2 sweeps, s = 10 probe steps,
f = 0.75, U = --mixing-update-interval) and the default ``--eval-samples-per-domain``,
and prints the ratio of each run's training-loop time to stratified's (target for val:
≤ 1.15). The loop time runs from the first iteration line on the console to the end of
the process (start-up excluded; the final evaluation and checkpoint included for all).

Where the extra time goes, from each run's metrics.jsonl (``--log-interval 1``, so the
sum of ``step_time_s`` is the time spent in optimizer steps):

  non-step time = loop time − Σ step_time_s   (evaluations, phase changes, checkpoint)
  in evals      = Σ eval_s − stratified's Σ eval_s   (each 'eval' event's own time)

The rest of a run's extra non-step time over stratified is phase overhead (schedule
segments, blend rebuilds, mixer, broadcasts); the probe-free estimators' cost is inside
the step time. Each Aioli run also gets a within-run ratio, its loop time over the same
loop without what Aioli added, which does not move when the machine's speed drifts between
two runs (seen here: 5–10 % between the runs of a pair). What is taken out: for the
probe-free estimators, the estimated steps' time over the run's median step; for probe
runs, the evaluations ending their probe phases, those phases' own start-up (each
'phase' event's ``begin_s``) and their first step's time over the median step. The targets
are judged by it.

  python benchmarks/bench_mixing.py [--train-iters 400] [--repeats 1] [--out FILE]
  python benchmarks/bench_mixing.py --profile paper --train-iters 1000   # the paper profile's settings
  python benchmarks/bench_mixing.py --profile paper --train-iters 1000 --num-domains 2   # its K = 2 recipe
  python benchmarks/bench_mixing.py --profile paper --train-iters 1000 --corpus data/corpus \
      --domains code,legal,techdocs,literature,math,reference,multilingual   # K = 7 on the real corpus
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, REPO)
from launch import make_data, tiny_args, torchrun_cmd  # noqa: E402

from megamix.fileio import read_jsonl  # noqa: E402

from benchmarks.paper_profile import aioli_recipe  # noqa: E402
from benchmarks.quality_runs import PAPER_SPLIT_SEED, PROBE_FREE, SPLIT, paper_spec  # noqa: E402

METHODS = {
    "stratified": {"--mixing-method": "stratified"},
    "aioli-val": {"--mixing-method": "aioli", "--aioli-loss-source": "val"},
    "aioli-train": {"--mixing-method": "aioli", "--aioli-loss-source": "train"},
    "aioli-grad": {"--mixing-method": "aioli", "--aioli-estimator": "gradient"},
    "aioli-look": {"--mixing-method": "aioli", "--aioli-estimator": "lookahead"},
}
AIOLI = ("aioli-val", "aioli-train", "aioli-grad", "aioli-look")


def timed_launch(args: list[str], nproc: int) -> float:
    """Run a job; seconds from its first iteration line to its exit."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(torchrun_cmd(args, nproc), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    first, tail = None, []
    for line in proc.stdout:
        if first is None and line.lstrip().startswith("iteration"):
            first = time.perf_counter()
        tail = (tail + [line])[-100:]  # torchrun's own report alone is ~45 lines
    rc = proc.wait()
    end = time.perf_counter()
    if rc != 0 or first is None:
        raise RuntimeError(f"training failed (rc {rc}):\n{''.join(tail)}")
    return end - first


def analyse(run_dir: str, loop_s: float, estimate_interval: int | None = None) -> dict:
    """Step time, evaluation count, phase count and non-step time of one run; with ``estimate_interval``
    (a probe-free Aioli run) also the time its estimates added to their steps (see :func:`estimate_time`);
    for a run with probe phases, their evaluations' time (see :func:`probe_eval_time`)."""
    evs = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    steps = [e for e in evs if e["event"] == "train"]
    step_s = sum(e["step_time_s"] for e in steps)
    median_s = sorted(e["step_time_s"] for e in steps)[len(steps) // 2]
    kinds = {}
    for e in evs:
        if e["event"] == "phase":
            kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    evals = [e for e in evs if e["event"] == "eval"]
    return {"loop_s": loop_s, "step_s": step_s, "non_step_s": loop_s - step_s, "steps": len(steps),
            "evals": len(evals), "eval_s": sum(e["eval_s"] for e in evals),
            "phases": sum(kinds.values()), "phase_kinds": kinds, "median_step_ms": 1e3 * median_s,
            **({} if estimate_interval is None else
               estimate_time(steps, estimate_interval, median_s, loop_s, train_spans(evs))),
            **(probe_eval_time(evs, loop_s, median_s) if "probe" in kinds else {})}


def train_spans(evs: list[dict]) -> list[range]:
    """The 0-based steps of each 'train' phase: the only phases that carry the estimator's signal
    (a prior or probe phase takes no estimate, whatever its steps' numbers)."""
    return [range(e["step"], e["step"] + e["steps"]) for e in evs if e["event"] == "phase" and e["kind"] == "train"]


def estimate_time(steps: list[dict], interval: int, median_s: float, loop_s: float, spans: list[range]) -> dict:
    """The probe-free estimators' cost measured inside one run, immune to drifts in machine speed
    between runs: each estimated step's time over the run's median step (0-based step s is
    estimated when s % interval == 0, s > 0 and s lies in a 'train' phase of ``spans``; its 'train'
    event has step s + 1), summed, and the run's loop time over the same loop without that time."""
    estimated = {s for span in spans for s in span if s > 0 and s % interval == 0}
    est = [e["step_time_s"] - median_s for e in steps if e["step"] - 1 in estimated]
    extra = sum(est)
    return {"estimates": len(est), "estimate_s": extra, "self_ratio": loop_s / (loop_s - extra)}


def probe_eval_time(evs: list[dict], loop_s: float, median_s: float) -> dict:
    """Probe Aioli's cost measured inside one run, immune to drifts in machine speed between runs: the
    'eval' events that end a probe phase, those phases' own start-up (the 'phase' event's ``begin_s``:
    schedule segment, blend rebuild, broadcast) and their first step's time over the run's median step
    (a new phase's first batch), summed, and the run's loop time over the same loop without them. The
    probe steps themselves are training steps: they count toward --train-iters. The evaluation of the
    untrained model (an 'eval' phase) is not counted: stratified has it too."""
    kind, first, evals, eval_s, begin_s, first_s = None, False, 0, 0.0, 0.0, 0.0
    for e in evs:
        if e["event"] == "phase":
            kind = e["kind"]
            first = kind == "probe"
            begin_s += e.get("begin_s", 0.0) if first else 0.0
        elif e["event"] == "train" and first:
            first, first_s = False, first_s + max(e["step_time_s"] - median_s, 0.0)
        elif e["event"] == "eval" and kind == "probe":
            evals, eval_s = evals + 1, eval_s + e["eval_s"]
    phase_s = begin_s + first_s
    return {"probe_evals": evals, "probe_eval_s": eval_s, "probe_phase_s": phase_s,
            "self_ratio": loop_s / (loop_s - eval_s - phase_s)}


def paper_flags(method_flags: dict, iters: int, k_domains: int = 3) -> dict:
    """Flags of mixing_quality.py's paper profile (model, eval, rounds; Aioli's recipe for K fixture domains)."""
    spec = paper_spec("unused", "unused", iters)
    over = {"--num-layers": spec.num_layers, "--hidden-size": spec.hidden_size, "--num-attention-heads": spec.heads,
            "--seq-length": spec.seq_length, "--micro-batch-size": spec.micro_batch,
            "--global-batch-size": spec.global_batch, "--eval-samples-per-domain": spec.eval_samples,
            "--eval-micro-batch-size": spec.eval_micro_batch, "--mixing-update-interval": spec.round_length,
            "--lr": spec.lr, "--min-lr": spec.min_lr, "--lr-warmup-iters": spec.warmup_iters(iters),
            "--vocab-size": 4096}  # the corpus tokenizer's size: the output layer is a large share of a step
    if method_flags["--mixing-method"] == "aioli":
        recipe = aioli_recipe(k_domains, spec.round_length).flags()
        over.update(dict(zip(recipe[2::2], recipe[3::2])))
    return over


def corpus_data(corpus: str, domains: list[str]) -> tuple[list[str], dict]:
    """Prefixes and flags to train on ``domains`` of a tokenized corpus as mixing_quality.py does
    (its SentencePiece tokenizer, split 98,1,1 fixed by --split-seed 1); a missing file is named."""
    for name in [f"{d}_text_document.{ext}" for d in domains for ext in ("idx", "bin")] + ["tokenizer.model"]:
        if not os.path.isfile(os.path.join(corpus, name)):
            raise SystemExit(f"--corpus {corpus}: {name} not found (--domains {','.join(domains)})")
    flags = {"--tokenizer-type": "SentencePieceTokenizer", "--tokenizer-model": os.path.join(corpus, "tokenizer.model"),
             "--vocab-size": None, "--split": SPLIT, "--split-seed": PAPER_SPLIT_SEED}
    return [os.path.join(corpus, f"{d}_text_document") for d in domains], flags


def data_flags(args: argparse.Namespace, work: str) -> tuple[list[str], dict]:
    """The runs' domains (fixture data, or --domains of --corpus) and the flags that go with them."""
    if args.corpus:
        return corpus_data(args.corpus, args.domains.split(","))
    num_docs = args.num_docs if args.profile == "default" else max(args.num_docs, 2000)  # >= 64 valid samples
    return make_data(os.path.join(work, "data"), num_docs=num_docs)[:args.num_domains], {}


def bench(args: argparse.Namespace, work: str) -> dict:
    """Time every method (the fastest of --repeats) and return the per-method analyses."""
    prefixes, corpus_flags = data_flags(args, work)
    cache = os.path.join(work, "cache")
    results: dict = {}
    chosen = ["stratified"] + [m for m in args.methods.split(",") if m != "stratified"]
    for rep in range(args.repeats):  # methods interleaved, so slow drifts in machine load hit all alike
        for name in chosen:
            flags = METHODS[name]
            run = os.path.join(work, f"{name}-{rep}")
            over = {**flags, "--mixing-update-interval": args.interval, "--eval-samples-per-domain": args.eval_samples,
                    "--skip-test": True, "--log-interval": 1, "--lr": 1e-3, "--min-lr": 1e-4}
            if args.profile == "paper":
                over.update(paper_flags(flags, args.train_iters, len(prefixes)))
            over.update(corpus_flags)
            probe_free = name in PROBE_FREE
            if probe_free:  # a None flag value is left out (the run's default)
                over.update({"--aioli-grad-interval": args.grad_interval,
                             "--aioli-grad-val-batch": args.grad_val_batch})
            run_args = tiny_args(prefixes, run, cache, iters=args.train_iters, **over)
            result = analyse(run, timed_launch(run_args, args.nproc), args.grad_interval if probe_free else None)
            print(f"  {name:<12} loop {result['loop_s']:7.2f}s  steps {result['step_s']:7.2f}s  "
                  f"evals {result['evals']:3d}  phases {result['phases']:3d}", flush=True)
            if name not in results or result["loop_s"] < results[name]["loop_s"]:
                results[name] = result
    return results


def breakdown(res: dict) -> dict:
    """Ratios to stratified and the attribution of Aioli's extra time (evaluations timed by the loop)."""
    base = res["stratified"]
    out = {"t_eval_s": base["eval_s"] / max(base["evals"], 1), "median_step_ms": base["median_step_ms"]}
    for name in [m for m in AIOLI if m in res]:
        r = res[name]
        extra_eval_s = r["eval_s"] - base["eval_s"]
        out[name] = {"ratio": r["loop_s"] / base["loop_s"], "extra_s": r["loop_s"] - base["loop_s"],
                     "extra_evals": r["evals"] - base["evals"], "extra_eval_s": extra_eval_s,
                     "extra_step_s": r["step_s"] - base["step_s"],
                     "phase_overhead_s": r["non_step_s"] - base["non_step_s"] - extra_eval_s,
                     "extra_phases": r["phases"] - base["phases"]}
    return out


def print_table(res: dict, bd: dict) -> None:
    """The ratio table and where the extra time goes."""
    print(f"\n{'method':<12}{'loop s':>9}{'ratio':>8}{'evals':>7}{'phases':>8}{'extra s':>9}"
          f"{'in evals':>10}{'in steps':>10}{'in phases':>11}")
    print("-" * 84)
    base = res["stratified"]
    print(f"{'stratified':<12}{base['loop_s']:>9.2f}{1.0:>8.3f}{base['evals']:>7d}{base['phases']:>8d}")
    for name in [m for m in AIOLI if m in res]:
        r, b = res[name], bd[name]
        print(f"{name:<12}{r['loop_s']:>9.2f}{b['ratio']:>8.3f}{r['evals']:>7d}{r['phases']:>8d}{b['extra_s']:>9.2f}"
              f"{b['extra_eval_s']:>10.2f}{b['extra_step_s']:>10.2f}{b['phase_overhead_s']:>11.2f}")
    print(f"\none evaluation pass: {bd['t_eval_s'] * 1e3:.0f} ms = {bd['t_eval_s'] * 1e3 / bd['median_step_ms']:.1f} "
          f"optimizer steps (median step {bd['median_step_ms']:.1f} ms)")
    for name in [m for m in AIOLI if "self_ratio" in res.get(m, {})]:
        r = res[name]
        if "estimates" in r:
            spent = (f"{r['estimates']} estimates added {r['estimate_s']:.2f} s over the run's median step "
                     f"({1e3 * r['estimate_s'] / max(r['estimates'], 1):.0f} ms each)")
        else:
            spent = (f"{r['probe_evals']} probe evaluations took {r['probe_eval_s']:.2f} s "
                     f"({1e3 * r['probe_eval_s'] / max(r['probe_evals'], 1):.0f} ms each), "
                     f"their phases' start-up and first steps {r['probe_phase_s']:.2f} s")
        print(f"{name}: {spent}; within-run ratio {r['self_ratio']:.3f} "
              "(this run's loop over itself without them: no drift between runs)")
    for name, target in (("aioli-val", 1.15), ("aioli-grad", 1.10), ("aioli-look", 1.10)):
        if name in bd:
            ratio, which = bd[name]["ratio"], "ratio to stratified"
            if "self_ratio" in res[name]:  # judged by the drift-free figure
                ratio, which = res[name]["self_ratio"], "within-run ratio"
            print(f"{name} {which} {ratio:.3f}: target <= {target} {'met' if ratio <= target else 'MISSED'}")


def check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, before any run, a corpus without domains (or outside the paper profile) and a
    paper-profile Aioli recipe that --train-iters cannot fit (its rounds too short for K probes)."""
    if bool(args.corpus) != bool(args.domains) or (args.corpus and args.profile != "paper"):
        ap.error("--corpus and --domains go together, with --profile paper")
    if args.profile == "paper":
        k = len(args.domains.split(",")) if args.domains else args.num_domains
        try:
            paper_flags(METHODS["aioli-val"], args.train_iters, k)  # raises what every Aioli run would
        except ValueError as e:
            ap.error(f"--train-iters {args.train_iters}: {e}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-iters", type=int, default=400)
    ap.add_argument("--profile", choices=["default", "paper"], default="default",
                    help="paper: mixing_quality.py --profile paper's model, eval set and Aioli recipe "
                         "(U = N // 20; --interval and --eval-samples are then ignored)")
    ap.add_argument("--interval", type=int, default=200, help="--mixing-update-interval (Aioli round U)")
    ap.add_argument("--eval-samples", type=int, default=64, help="--eval-samples-per-domain (the flag's default)")
    ap.add_argument("--num-docs", type=int, default=400, help="fixture documents per domain")
    ap.add_argument("--num-domains", type=int, choices=[2, 3], default=3,
                    help="train on the first K fixture domains (code, prose, math); the paper profile's Aioli "
                         "recipe is K's")
    ap.add_argument("--corpus", default=None,
                    help="with --profile paper: train on --domains of this tokenized corpus (mixing_quality.py's "
                         "--corpus) instead of the fixture, e.g. all 7 domains for the cost at K = 7")
    ap.add_argument("--domains", default=None, help="comma list of --corpus's domains (K = their number)")
    ap.add_argument("--grad-interval", type=int, default=10, help="--aioli-grad-interval of the aioli-grad and aioli-look runs")
    ap.add_argument("--grad-val-batch", type=int, default=None,
                    help="--aioli-grad-val-batch of the aioli-grad and aioli-look runs "
                         "(default: the micro-batch size)")
    ap.add_argument("--methods", default=",".join(AIOLI),
                    help=f"comma list of the runs besides stratified (default all: {','.join(AIOLI)})")
    ap.add_argument("--repeats", type=int, default=1, help="runs per method; the fastest counts")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the measurements as JSON")
    args = ap.parse_args(argv)
    check_args(ap, args)
    with tempfile.TemporaryDirectory(prefix="bench_mixing-") as work:
        res = bench(args, work)
    bd = breakdown(res)
    print_table(res, bd)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": vars(args), "runs": res, "breakdown": bd}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
