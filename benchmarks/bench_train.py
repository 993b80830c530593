"""Step time of megamix's training loop vs a bare DeepSpeed loop on the same model and batches.

Run: ``python benchmarks/bench_train.py`` (re-launches itself under torchrun with
``--nproc`` CPU processes, default 2). Both loops run in the same processes, alternating
step by step, on the same GPT configuration, DeepSpeed config and samples (the bare loop
gets the batches megamix's blend produced, loaded outside its timing, and reduces the loss
with a plain mean). Printed: median and mean step time of each and the ratio megamix / bare
(target <= 1.05).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _train_args(data_dir: str, run_dir: str, a: argparse.Namespace) -> list[str]:
    prefixes = [os.path.join(data_dir, f"{d}_text_document") for d in ("code", "prose", "math")]
    return ["--data-path", *prefixes, "--num-layers", str(a.layers), "--hidden-size", str(a.hidden),
            "--num-attention-heads", str(a.hidden // 32), "--seq-length", str(a.seq),
            "--micro-batch-size", str(a.micro), "--global-batch-size", str(a.global_batch),
            "--train-iters", str(a.steps), "--lr", "1e-3", "--tokenizer-type", "NullTokenizer",
            "--vocab-size", "512", "--eval-samples-per-domain", "2", "--split", "90,5,5",
            "--log-interval", str(a.steps), "--mixing-update-interval", str(a.steps), "--skip-test",
            "--zero-stage", str(a.zero_stage), "--save", run_dir, "--data-cache-path", os.path.join(data_dir, "cache")]


def _build_bare(cfg, dist_info):
    """A second engine on the same GPT configuration, for the bare loop."""
    import torch

    from megamix.model.gpt import GPT
    from megamix.training.engine import build_engine

    torch.manual_seed(cfg.training.seed)
    return build_engine(GPT(cfg.model), cfg.training, cfg.optimizer, dist_info.world_size, dist_info.device)


def _bare_step(engine, batches: list[dict]) -> None:
    """The plainest DeepSpeed step: mean loss, backward, step, per micro-batch."""
    for mb in batches:
        loss = engine(mb.tokens, mb.labels).mean()
        engine.backward(loss)
        engine.step()


def _interleaved(cfg, dist_info) -> tuple[list[float], list[float], float]:
    """Run megamix's whole phase loop; after each of its steps, one bare step on the same batches.

    Alternating step by step exposes both loops to the same machine conditions. Returns
    per-step times of megamix's loop, of the bare loop, and megamix's whole-run time.
    """
    from megamix.data.sampler import micro_batch_indices
    from megamix.training.run import Run
    from megamix.training.loader import load_micro_batch

    run = Run(cfg, dist_info)
    bare = _build_bare(cfg, dist_info)
    tr = cfg.training
    ours: list[float] = []
    theirs: list[float] = []
    inner = run.runner.step

    def timed(step, *args, **kw):
        t0 = time.perf_counter()
        out = inner(step, *args, **kw)
        ours.append(time.perf_counter() - t0)
        batches = [load_micro_batch(run.blend, idx, dist_info.device)
                   for idx in micro_batch_indices(step, tr.global_batch_size, tr.micro_batch_size, dist_info.rank,
                                                  dist_info.world_size)]
        t0 = time.perf_counter()
        _bare_step(bare, batches)
        theirs.append(time.perf_counter() - t0)
        return out

    run.runner.step = timed
    t0 = time.perf_counter()
    run.train()
    return ours, theirs, time.perf_counter() - t0 - sum(theirs)


def _worker(a: argparse.Namespace) -> None:
    from megamix.data.tokenizer import TokenizerConfig
    from megamix.training.arguments import config_from_args, parse_args
    from megamix.training.distributed import distributed_session

    run_dir = os.path.join(a.workdir, "run")
    args = parse_args(_train_args(a.workdir, run_dir, a))
    cfg = config_from_args(args, TokenizerConfig("NullTokenizer", None, 512))
    with distributed_session() as dist_info:
        ours, bare, ours_total = _interleaved(cfg, dist_info)
    if dist_info.is_main:
        skip = min(a.warmup, a.steps - 1)
        o, b = ours[skip:], bare[skip:]
        print(f"model: {a.layers} layers, hidden {a.hidden}, seq {a.seq}; micro {a.micro}, global {a.global_batch}; "
              f"{dist_info.world_size} processes, ZeRO {a.zero_stage}; {len(o)} timed steps after {skip} warm-up")
        print(f"{'loop':<10} {'median ms/step':>15} {'mean ms/step':>13}")
        print(f"{'bare DS':<10} {statistics.median(b) * 1e3:>15.1f} {statistics.mean(b) * 1e3:>13.1f}")
        print(f"{'megamix':<10} {statistics.median(o) * 1e3:>15.1f} {statistics.mean(o) * 1e3:>13.1f}")
        print(f"ratio megamix/bare (median step): {statistics.median(o) / statistics.median(b):.3f}  (target <= 1.05)")
        print(f"ratio megamix/bare (mean step):   {statistics.mean(o) / statistics.mean(b):.3f}")
        print(f"megamix whole loop incl. phase set-up, one evaluation and the final save: {ours_total:.2f} s "
              f"for {a.steps} steps ({ours_total / sum(bare) * len(bare) / a.steps:.3f} x the bare steps)")


def main() -> int:
    """Parse flags; launch the workers under torchrun unless already inside it."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--zero-stage", type=int, default=1)
    p.add_argument("--workdir", default=None)
    a = p.parse_args()
    if "LOCAL_RANK" in os.environ:
        _worker(a)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_fixture_data.py"), "--out", tmp],
                       check=True, capture_output=True)
        env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"), PYTHONPATH=REPO)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}",
               os.path.abspath(__file__), *sys.argv[1:], "--workdir", tmp]
        return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
