"""The GPU check: the whole engine on the GPUs present, then resume; exits non-zero on any failure.

``python benchmarks/gpu_check.py`` (every GPU of this machine, NCCL, bf16) trains a
~125M-parameter GPT (12 layers, width 768, GPT-2's vocabulary) at seq 1024 on synthetic
fixture data with Aioli at a short round, so probes, evaluations and phase changes all
happen, three times through ``torchrun`` + ``pretrain_gpt_mix.py``:

1. ZeRO 1, the whole run (the reference);
2. ZeRO 3, stopped half-way by ``--exit-interval`` (it checkpoints);
3. ZeRO 3 again with the same command: it resumes from that checkpoint and finishes.

It checks that every run trained every step with finite, falling losses, that Aioli probed,
evaluated and changed the mixture, that the resumed run continued from the checkpoint, and
that run 2+3 follows the reference (exactly up to float noise on the CPU; within bf16 noise
on GPUs). It prints tokens/s, TFLOP/s per device, MFU (``--peak-tflops`` or the known-GPU
table) and peak GPU memory.

``--cpu`` runs the same check with a tiny model on 2 gloo processes (CI keeps it alive).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINS = ("code", "prose", "math")


class CheckFailed(Exception):
    """A check of the GPU check did not hold."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise CheckFailed(what)


def _shape(a: argparse.Namespace) -> dict:
    """Model, batch and data sizes of the chosen mode."""
    if a.cpu:
        return dict(model=["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
                           "--seq-length", "64"], micro=2, vocab=512, docs=150, doc_len=200, lr="3e-3")
    return dict(model=["--num-layers", "12", "--hidden-size", "768", "--num-attention-heads", "12",
                       "--seq-length", "1024"], micro=a.micro_batch_size, vocab=50257, docs=400, doc_len=1500,
                lr="6e-4")


def _flags(a: argparse.Namespace, data: str, run_dir: str, zero: int, nproc: int) -> list[str]:
    s = _shape(a)
    prefixes = [os.path.join(data, f"{d}_text_document") for d in DOMAINS]
    flags = ["--data-path", *prefixes, *s["model"], "--tokenizer-type", "NullTokenizer",
             "--vocab-size", str(s["vocab"]), "--micro-batch-size", str(s["micro"]),
             "--global-batch-size", str(s["micro"] * nproc * 2), "--train-iters", str(a.steps),
             "--lr", s["lr"], "--min-lr", "1e-5", "--lr-warmup-iters", "5", "--split", "90,5,5",
             "--mixing-method", "aioli", "--mixing-update-interval", str(a.steps // 2),
             "--aioli-lp-rounds", "1", "--aioli-lp-steps", "2", "--eval-samples-per-domain", "8",
             "--zero-stage", str(zero), "--save", run_dir, "--load", run_dir, "--log-interval", "1",
             "--data-cache-path", os.path.join(data, "cache"), "--skip-test", "--seed", "1234"]
    if not a.cpu:
        flags.append("--bf16")
    if a.peak_tflops:
        flags += ["--peak-tflops", str(a.peak_tflops)]
    return flags


def _launch(a: argparse.Namespace, flags: list[str], nproc: int, label: str) -> str:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    if a.cpu:
        env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(REPO, "pretrain_gpt_mix.py"), *flags]
    print(f"[gpu_check] {label}: torchrun --nproc_per_node={nproc} pretrain_gpt_mix.py ...", flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
    if proc.returncode != 0:
        raise CheckFailed(f"{label} exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout


def _events(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _check_run(run_dir: str, steps: int, label: str) -> list[dict]:
    """Every step trained with a finite loss that falls; Aioli probed, evaluated and changed the mixture."""
    ev = _events(run_dir)
    train = [e for e in ev if e["event"] == "train"]
    _check([e["step"] for e in train] == list(range(1, steps + 1)), f"{label}: train events are not steps 1..{steps}")
    losses = [e["loss"] for e in train]
    _check(all(isinstance(x, float) and math.isfinite(x) for x in losses), f"{label}: a non-finite loss")
    _check(statistics.mean(losses[-3:]) < statistics.mean(losses[:3]), f"{label}: the loss did not fall {losses}")
    phases = [e for e in ev if e["event"] == "phase"]
    _check(any(p["kind"] == "probe" for p in phases), f"{label}: Aioli ran no probe")
    trained = [tuple(p["weights"].values()) for p in phases if p["kind"] == "train" and p["steps"]]
    _check(len(set(trained)) >= 2, f"{label}: Aioli's trained mixture never changed: {trained}")
    _check(sum(e["event"] == "eval" for e in ev) >= 3, f"{label}: fewer than 3 evaluations")
    _check(any(e["event"] == "aioli_round" for e in ev), f"{label}: no Aioli round completed")
    return train


def _compare(ref: list[dict], got: list[dict], exact: bool) -> None:
    """The resumed ZeRO-3 run follows the ZeRO-1 reference step by step."""
    rtol, wtol = (1e-4, 1e-4) if exact else (3e-2, 5e-2)
    for r, g in zip(ref, got):
        _check(math.isclose(r["loss"], g["loss"], rel_tol=rtol),
               f"step {r['step']}: loss {g['loss']} after resume vs reference {r['loss']} (rtol {rtol})")
        for d, w in r["weights"].items():
            _check(abs(w - g["weights"][d]) <= wtol, f"step {r['step']}: weight of {d} {g['weights'][d]} vs {w}")


def _report(train: list[dict], warmup: int) -> None:
    """Median tokens/s, TFLOP/s per device, MFU and peak memory over the steps after ``warmup``."""
    rows = train[warmup:] or train
    med = lambda key: statistics.median(e[key] for e in rows)  # noqa: E731
    line = f"[gpu_check] tokens/s {med('tokens_per_s'):,.0f} | TFLOP/s per device {med('tflops_per_device'):.1f}"
    mfu = [e["mfu"] for e in rows if e.get("mfu") is not None]
    line += f" | MFU {100 * statistics.median(mfu):.1f}%" if mfu else " | MFU n/a (no known peak: --peak-tflops)"
    if "max_mem_gb" in rows[-1]:
        line += f" | peak memory {max(e['max_mem_gb'] for e in rows):.1f} GiB per device"
    print(line, flush=True)


def check(a: argparse.Namespace, work: str) -> None:
    """Run the three launches in ``work`` and every check; raises CheckFailed."""
    nproc = a.nproc or (2 if a.cpu else _gpu_count())
    s = _shape(a)
    data = os.path.join(work, "data")
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_fixture_data.py"), "--out", data,
                    "--num-docs", str(s["docs"]), "--mean-len", str(s["doc_len"]),
                    "--vocab-size", str(min(s["vocab"], 2048))], check=True, capture_output=True)
    ref_dir, run_dir = os.path.join(work, "zero1"), os.path.join(work, "zero3")
    _launch(a, _flags(a, data, ref_dir, 1, nproc), nproc, "ZeRO 1, whole run")
    ref = _check_run(ref_dir, a.steps, "ZeRO 1")
    _report(ref, warmup=min(5, a.steps // 4))
    flags = _flags(a, data, run_dir, 3, nproc)
    half = a.steps // 2
    _launch(a, flags + ["--exit-interval", str(half)], nproc, f"ZeRO 3, stop at step {half}")
    out = _launch(a, flags, nproc, "ZeRO 3, resume")
    _check(f"resumed from {run_dir}/iter_{half:07d} at iteration {half}" in out,
           "the second ZeRO-3 launch did not resume")
    got = _check_run(run_dir, a.steps, "ZeRO 3 resumed")
    _compare(ref, got, exact=a.cpu)
    _report(got[half:], warmup=min(3, half // 2))


def _gpu_count() -> int:
    import torch

    if not torch.cuda.is_available():
        raise CheckFailed("no CUDA device: run with --cpu for the CPU check")
    return torch.cuda.device_count()


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the check in a temporary directory (or --workdir); 0 when every check passed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="tiny model, 2 gloo processes (what CI runs)")
    p.add_argument("--nproc", type=int, default=None, help="processes (default: every GPU, or 2 with --cpu)")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run (30-50 exercise everything)")
    p.add_argument("--micro-batch-size", type=int, default=16, help="GPU mode micro-batch size")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s of one device for MFU")
    p.add_argument("--timeout", type=float, default=900, help="seconds per launch")
    p.add_argument("--workdir", default=None, help="keep data and runs here instead of a temporary directory")
    a = p.parse_args(argv)
    if a.steps < 20:
        p.error("--steps must be >= 20 so that probes, evaluations and a phase change all happen")
    try:
        if a.workdir:
            os.makedirs(a.workdir, exist_ok=True)
            check(a, a.workdir)
        else:
            with tempfile.TemporaryDirectory() as work:
                check(a, work)
    except (CheckFailed, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        print(f"[gpu_check] FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    print("[gpu_check] PASSED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
