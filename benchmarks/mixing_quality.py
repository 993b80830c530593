"""The paper's protocol at CPU scale: per-domain test perplexity of mixing methods vs stratified.

Six settings like Aioli's Table 1 — three 2-domain, two 3-domain and all 7 domains of the
built-in corpus — or your own (``--setting NAME=d1,d2,...``, repeatable), each trained with
every method at the same number of steps over several seeds. Every run is a 2-process
``pretrain_gpt_mix.py`` job; finished runs are skipped, so an interrupted benchmark resumes
where it stopped (a run directory started with other flags — another --grad-interval, other
domains — stops it, naming the keys that differ), and the table is rewritten after every setting (cells say how many of the
planned seeds have run).

Profiles:
  quick   stratified and Aioli at 160 steps (the first docs/results.md table)
  full    also grid search, DML, Skill-It, DoReMi, DoGE (their extra runs are counted and
          reported) and the restricted setting: each baseline's mixture learned on
          half-length runs, then used as Aioli's prior over the full run ("<method>+aioli")
  paper   the released scripts' ratios (benchmarks/paper_profile.py): T = 20 rounds of N/20
          steps, per-K f, eta, EMA, reset update, probes from step 0 inside a 10 % warm-up,
          cosine to 0.2x; the document split fixed across seeds (--split-seed); 64 validation
          and 512 test samples per domain. Rows: stratified and Aioli (--seeds), and on
          --aux-seeds seeds the headroom rows (static tilts p0.45 / p0.55 and the grid's best
          point, 2-domain settings) and the restricted rows (grid-half: the grid's mixture
          learned on half-length runs used static; grid+aioli: the same as Aioli's prior;
          2- and 3-domain settings)

A rule row (any profile, on --aux-seeds in the paper profile): ppl-rule trains a static mixture
proportional to the same seed's stratified run's per-domain validation perplexity at its last
evaluation (the stratified run is trained first if needed; its N steps count as extra): what "train
more on the domain with the higher perplexity" gets without any estimate.

Control rows (any profile): replay:ROW trains ROW's recorded schedule.json (same seed) again with
--mixing-method replay; mirror:ROW does so with every tilt reversed through uniform
(--replay-mirror). Against ROW they tell the direction of its tilts from the effect of changing p.

Each cell: mean paired difference to stratified (same seed), its standard deviation, the 95 %
t interval and n. Output: <out>/results.md (the tables of average test perplexity and loss, each
row's per-seed differences and the mean mixture it trained on) and <out>/results.json (every run).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.paper_profile import aioli_recipe, parse_settings  # noqa: E402
from benchmarks.quality_runs import (  # noqa: E402
    PAPER_SPLIT_SEED, PROBE_FREE, QualitySpec, aioli_row, paper_spec, run_setting, source_row)
from benchmarks.quality_table import (  # noqa: E402
    METRICS, headroom_notes, markdown_table, mixture_table, per_seed_table, summarize)
from megamix.fileio import atomic_write_json, atomic_write_text  # noqa: E402

SETTINGS = {
    "code+legal": ["code", "legal"],
    "literature+math": ["literature", "math"],
    "techdocs+multilingual": ["techdocs", "multilingual"],
    "code+literature+reference": ["code", "literature", "reference"],
    "legal+math+techdocs": ["legal", "math", "techdocs"],
    "all-7": ["code", "legal", "techdocs", "literature", "math", "reference", "multilingual"],
}
PROFILES = {
    "quick": ["stratified", "aioli"],
    "full": ["stratified", "aioli", "grid", "dml", "skillit", "doremi", "doge",
             "grid+aioli", "dml+aioli", "skillit+aioli", "doremi+aioli", "doge+aioli"],
    "paper": ["stratified", "aioli", "p0.45", "p0.55", "grid", "grid-half", "grid+aioli"],
}
PAPER_MAX_K = {"grid": 2, "grid-half": 3, "grid+aioli": 3, "dml-half": 3, "dml+aioli": 3}
"""Paper profile: the headroom rows run on 2-domain settings, the restricted rows on 2- and 3-domain ones."""


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    p.add_argument("--methods", default=None, help="comma list overriding the profile's methods")
    p.add_argument("--setting", action="append", default=None, metavar="NAME=D1,D2,...",
                   help=f"a setting (repeatable): NAME=domain,domain,... or a built-in NAME; "
                        f"default all built-in: {', '.join(SETTINGS)}")
    p.add_argument("--settings", default=None, help="comma list of built-in settings (same as one --setting each)")
    p.add_argument("--seeds", type=int, default=None, help="seeds of stratified and Aioli (default 3; paper 5)")
    p.add_argument("--first-seed", type=int, default=1,
                   help="run (and tabulate) only seeds FIRST..--seeds, leaving lower seeds alone: one table's "
                        "seeds split across sittings or machines (copy the run directories together, "
                        "then --report-only tabulates every seed)")
    p.add_argument("--aux-seeds", type=int, default=3,
                   help="paper profile: seeds of the headroom and restricted rows (at most --seeds)")
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the document split, fixed across --seeds "
                        "(default: paper 1; quick/full: each seed's own)")
    p.add_argument("--corpus", default=None,
                   help="directory of tokenized domains <name>_text_document.{bin,idx} plus tokenizer.model; "
                        "default: build the built-in corpus with examples/prepare_data.sh into data/corpus")
    p.add_argument("--out", default=None, help="default runs/mixing_quality (quick, full), runs/mixing_quality_paper")
    p.add_argument("--train-iters", type=int, default=None, help="steps N of every final run (default 160; paper 1000)")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--grad-interval", type=int, default=10,
                   help="--aioli-grad-interval of the aioli-grad and aioli-look rows (Aioli's probe-free estimators)")
    p.add_argument("--grad-val-batch", type=int, default=None,
                   help="--aioli-grad-val-batch of the aioli-grad and aioli-look rows (default: the micro-batch size)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the table of the runs finished so far (cells say what is missing)")
    return p.parse_args(argv)


def _corpus(args: argparse.Namespace) -> str:
    if args.corpus:
        return args.corpus
    subprocess.run(["bash", os.path.join(REPO, "examples", "prepare_data.sh")], check=True)
    return os.path.join(REPO, "data", "corpus")


def _check_settings(settings: dict[str, list[str]], corpus: str) -> None:
    for name, domains in settings.items():
        for d in domains:
            if not os.path.isfile(os.path.join(corpus, f"{d}_text_document.idx")):
                raise SystemExit(f"--corpus {corpus}: setting {name} needs domain {d!r} "
                                 f"({d}_text_document.idx not found)")


def chosen_settings(args: argparse.Namespace) -> dict[str, list[str]]:
    """The settings of --setting / --settings (default: the six built-in ones)."""
    values = list(args.setting or []) + (args.settings.split(",") if args.settings else [])
    try:
        return parse_settings(values, SETTINGS)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def build_spec(args: argparse.Namespace, corpus: str) -> QualitySpec:
    """The profile's recipe with the command line's length, output and split seed."""
    if args.profile == "paper":
        try:
            spec = paper_spec(corpus, args.out, args.train_iters or 1000, args.nproc,
                              PAPER_SPLIT_SEED if args.split_seed is None else args.split_seed)
        except ValueError as e:
            raise SystemExit(str(e)) from None
    else:
        spec = QualitySpec(corpus=corpus, out=args.out, train_iters=args.train_iters or QualitySpec.train_iters,
                           nproc=args.nproc, split_seed=args.split_seed)
    spec.grad_interval = args.grad_interval
    spec.grad_val_batch = args.grad_val_batch
    return spec


def plan(profile: str, methods: list[str], k: int, seeds: int, aux_seeds: int) -> list[tuple[str, int]]:
    """(method, number of seeds) for one setting of K domains; 0 seeds where a row does not apply.

    Stratified and every Aioli row run on ``seeds`` seeds; in the paper profile the other rows
    (headroom, restricted) on ``aux_seeds``.
    """
    out = []
    for m in methods:
        row = source_row(m)  # a control row (replay:ROW, mirror:ROW) runs where and as often as its ROW
        main = row == "stratified" or aioli_row(row) is not None
        n = seeds if (profile != "paper" or main) else min(aux_seeds, seeds)
        if profile == "paper" and (k > PAPER_MAX_K.get(row, k) or (row.startswith("p0") and k != 2)):
            n = 0
        out.append((m, n))
    return out


def _write(out: str, spec: QualitySpec, ks: list[int], records: list[dict], settings: dict, methods: list[str],
           planned: dict, wall: float) -> str:
    summaries = {m: summarize(records, list(settings), methods, m) for m in METRICS}
    summary = summaries["avg_test_ppl"]
    table = markdown_table(summary, list(settings), methods, planned)
    loss_table = markdown_table(summaries["avg_test_loss"], list(settings), methods, planned)
    notes = headroom_notes(summary, list(settings))
    seeds = "\n\n".join(f"{name}:\n\n{per_seed_table(records, name, methods)}" for name in settings)
    mixes = "\n\n".join(f"{name}:\n\n{mixture_table(records, name, d, methods)}" for name, d in settings.items())
    done = sum(1 for r in records if r.get("wall_s") is not None)
    train_s = sum(r["wall_s"] for r in records if r.get("wall_s") is not None)
    hosts = sorted({r["host"] for r in records if r.get("host")})
    text = (f"Command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`\n\n{spec.describe(ks)}\n\n"
            "Settings: " + "; ".join(f"{n} = {', '.join(d)}" for n, d in settings.items()) + "\n\n"
            f"Average test perplexity (the paper's metric):\n\n{table}\n"
            + ("\nHeadroom (static tilts vs stratified):\n" + "\n".join(notes) + "\n" if notes else "")
            + f"\nAverage test loss (mean log perplexity over domains: what Aioli's law optimises):\n\n{loss_table}\n"
            + f"\nPer seed (average test perplexity; stratified's, every other row's paired difference):\n\n{seeds}\n"
            + f"\nData seen (step-weighted mean proportion per run, probes included; mean over seeds):\n\n{mixes}\n"
            + f"\nFinal runs: {len(records)} ({done} timed, {train_s:.0f} s of their training); "
              f"this invocation {wall:.0f} s.\n"
            + (f"Hosts (recorded since this field was added): {'; '.join(hosts)}.\n" if hosts else ""))
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "results.md"), text)
    atomic_write_json(os.path.join(out, "results.json"),
                      {"spec": spec.to_dict(), "settings": settings, "planned": planned, "runs": records,
                       "summary": summary, "summary_loss": summaries["avg_test_loss"],
                       "wall_s_this_invocation": wall}, indent=1)
    return table


def _check_interval(spec: QualitySpec, methods: list[str]) -> None:
    """Refuse, before any run, a --grad-interval longer than a round for the probe-free rows (their
    training would refuse it after the rows before them had run)."""
    probe_free = [m for m in methods if (row := aioli_row(source_row(m))) is not None and row[0] in PROBE_FREE]
    if probe_free and spec.grad_interval > spec.round_length:
        raise SystemExit(f"--grad-interval {spec.grad_interval}: longer than a round ({spec.round_length} steps at "
                         f"--train-iters {spec.train_iters}), which the {','.join(probe_free)} rows cannot train with; "
                         f"use at most {spec.round_length}")


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) every run of the chosen profile, then write the table and JSON."""
    args = _parse(argv)
    methods = args.methods.split(",") if args.methods else PROFILES[args.profile]
    seeds = args.seeds or (5 if args.profile == "paper" else 3)
    own = [m for m in methods if (row := aioli_row(source_row(m))) is not None and row[2]]
    if own and args.profile != "paper":
        raise SystemExit(f"--methods {','.join(own)}: an '-own' Aioli row needs --profile paper "
                         f"(the {args.profile} profile has one Aioli recipe)")
    if not 1 <= args.first_seed <= seeds:
        raise SystemExit(f"--first-seed {args.first_seed}: must lie in 1..--seeds ({seeds})")
    args.out = args.out or ("runs/mixing_quality_paper" if args.profile == "paper" else "runs/mixing_quality")
    settings = chosen_settings(args)
    corpus = _corpus(args)
    _check_settings(settings, corpus)
    spec = build_spec(args, corpus)
    spec.report_only = args.report_only
    ks = sorted({len(d) for d in settings.values()})
    if spec.profile == "paper":
        try:
            [aioli_recipe(k, spec.round_length) for k in ks]
        except ValueError as e:
            raise SystemExit(f"--train-iters {spec.train_iters}: {e}") from None
    _check_interval(spec, methods)
    print(spec.describe(ks), flush=True)
    planned = {n: dict(plan(args.profile, methods, len(d), seeds, args.aux_seeds)) for n, d in settings.items()}
    t0, records = time.time(), []
    for name, domains in settings.items():
        records += run_setting(spec, name, domains, [(m, s) for m, s in planned[name].items() if s],
                               args.first_seed)
        table = _write(args.out, spec, ks, records, settings, methods, planned, time.time() - t0)
    print(table)
    print(f"wrote {args.out}/results.md and results.json ({time.time() - t0:.0f} s this invocation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
