"""The paper's protocol at CPU scale: per-domain test perplexity of mixing methods vs stratified.

Six settings like Aioli's Table 1 — three 2-domain, two 3-domain and all 7 domains of the
built-in corpus — each trained with every method at the same number of steps over several
seeds. Every run is a 2-process ``pretrain_gpt_mix.py`` job; finished runs are skipped, so
an interrupted benchmark resumes where it stopped.

Profiles:
  quick   stratified and Aioli (the committed docs/results.md table)
  full    also grid search, DML, Skill-It, DoReMi, DoGE (their extra runs are counted and
          reported) and the restricted setting: each baseline's mixture learned on
          half-length runs, then used as Aioli's prior over the full run ("<method>+aioli")

Output: <out>/results.md (the table) and <out>/results.json (every run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.quality_runs import QualitySpec, run_setting  # noqa: E402
from benchmarks.quality_table import markdown_table, summarize  # noqa: E402

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
}


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    p.add_argument("--methods", default=None, help="comma list overriding the profile's methods")
    p.add_argument("--settings", default=None, help=f"comma list of settings (default all: {', '.join(SETTINGS)})")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--corpus", default=None,
                   help="directory of tokenized domains <name>_text_document.{bin,idx} plus tokenizer.model; "
                        "default: build the built-in corpus with examples/prepare_data.sh into data/corpus")
    p.add_argument("--out", default="runs/mixing_quality")
    p.add_argument("--train-iters", type=int, default=QualitySpec.train_iters)
    p.add_argument("--nproc", type=int, default=2)
    return p.parse_args()


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


def main() -> int:
    """Run (or resume) every run of the chosen profile, then write the table and JSON."""
    args = _parse()
    methods = args.methods.split(",") if args.methods else PROFILES[args.profile]
    chosen = args.settings.split(",") if args.settings else list(SETTINGS)
    unknown = [s for s in chosen if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; known: {list(SETTINGS)}")
    settings = {s: SETTINGS[s] for s in chosen}
    corpus = _corpus(args)
    _check_settings(settings, corpus)
    spec = QualitySpec(corpus=corpus, out=args.out, train_iters=args.train_iters, nproc=args.nproc)
    print(spec.describe(), flush=True)
    t0 = time.time()
    records = []
    for name, domains in settings.items():
        records += run_setting(spec, name, domains, methods, args.seeds)
    summary = summarize(records, list(settings), methods)
    os.makedirs(args.out, exist_ok=True)
    table = markdown_table(summary, list(settings), methods)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(spec.describe() + "\n\n" + table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"spec": spec.to_dict(), "runs": records, "summary": summary,
                   "wall_s_this_invocation": time.time() - t0}, f, indent=1)
    print(table)
    print(f"wrote {args.out}/results.md and results.json ({time.time() - t0:.0f} s this invocation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
