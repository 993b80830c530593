"""Helpers for end-to-end tests: fixture data and multi-process launches of pretrain_gpt_mix.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINS = ("code", "prose", "math")


def make_data(out_dir: str, num_docs: int = 150, mean_len: int = 200) -> list[str]:
    """Write the synthetic fixture domains; return their prefixes."""
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_fixture_data.py"), "--out", out_dir,
                    "--num-docs", str(num_docs), "--mean-len", str(mean_len)], check=True, capture_output=True)
    return [os.path.join(out_dir, f"{d}_text_document") for d in DOMAINS]


def tiny_args(prefixes: list[str], run_dir: str, cache_dir: str, iters: int = 20, **overrides) -> list[str]:
    """Flags of a tiny run (2 layers, width 64) on the fixture data; ``overrides`` replace flags."""
    flags = {
        "--num-layers": 2, "--hidden-size": 64, "--num-attention-heads": 4, "--seq-length": 64,
        "--micro-batch-size": 2, "--global-batch-size": 8, "--train-iters": iters, "--lr": 3e-3,
        "--min-lr": 3e-4, "--lr-warmup-iters": 2, "--tokenizer-type": "NullTokenizer", "--vocab-size": 512,
        "--eval-samples-per-domain": 8, "--split": "90,5,5", "--log-interval": 1,
        "--mixing-update-interval": 10, "--save": run_dir, "--load": run_dir, "--data-cache-path": cache_dir,
        "--seed": 1234, "--test-samples-per-domain": 16,
    }
    flags.update({k: v for k, v in overrides.items()})
    args = ["--data-path", *prefixes]
    for k, v in flags.items():
        if v is None:
            continue
        args += [k] if v is True else [k, str(v)]
    return args


def _env() -> dict:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def torchrun_cmd(args: list[str], nproc: int = 2) -> list[str]:
    """The command that launches pretrain_gpt_mix.py on ``nproc`` local CPU processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            os.path.join(REPO, "pretrain_gpt_mix.py"), *args]


def launch(args: list[str], nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a training job to completion; raises with its output when it fails."""
    proc = subprocess.run(torchrun_cmd(args, nproc), env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"training failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def launch_and_kill(args: list[str], run_dir: str, kill_after_step: int, nproc: int = 2, timeout: float = 300) -> None:
    """Start a job and SIGKILL its whole process group once metrics.jsonl shows ``kill_after_step``."""
    proc = subprocess.Popen(torchrun_cmd(args, nproc), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"job ended (rc {proc.returncode}) before step {kill_after_step}")
            if max_train_step(run_dir) >= kill_after_step:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("timed out waiting for the job to reach the kill step")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def read_metrics(run_dir: str) -> list[dict]:
    """The events of ``run_dir/metrics.jsonl``."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def max_train_step(run_dir: str) -> int:
    """The last step with a 'train' event (0 when none)."""
    steps = [e["step"] for e in read_metrics(run_dir) if e["event"] == "train"]
    return max(steps, default=0)


def events(run_dir: str, kind: str) -> list[dict]:
    """All events of one kind, in order."""
    return [e for e in read_metrics(run_dir) if e["event"] == kind]
