"""Helpers for end-to-end tests: fixture data and multi-process launches of pretrain_gpt_mix.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINS = ("code", "prose", "math")
TIMING_KEYS = ("tokens_per_s", "step_time_s", "tflops_per_device", "mfu", "max_mem_gb", "eval_s", "begin_s")
"""Fields of a 'train', 'eval' or 'phase' event that measure speed, not training: they differ between identical runs."""


def strip_timing(evs: list[dict]) -> list[dict]:
    """The events without their speed fields, for comparing two runs that should be identical."""
    return [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in evs]


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


def job_env() -> dict:
    """The environment of a launched job: CPU accelerator, one thread, this repo importable."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def torchrun_cmd(args: list[str], nproc: int = 2) -> list[str]:
    """The command that launches pretrain_gpt_mix.py on ``nproc`` local CPU processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            os.path.join(REPO, "pretrain_gpt_mix.py"), *args]


def launch(args: list[str], nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a training job to completion; raises with its output when it fails."""
    proc = subprocess.run(torchrun_cmd(args, nproc), env=job_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"training failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def launch_and_crash(args: list[str], crash_after_step: int, nproc: int = 2, timeout: float = 300) -> None:
    """Run a job whose rank 0 is SIGKILLed right after step ``crash_after_step``; check it died there."""
    cmd = torchrun_cmd(args, nproc)
    script = cmd.index(os.path.join(REPO, "pretrain_gpt_mix.py"))
    cmd[script:script + 1] = [os.path.join(REPO, "tests", "crash_after_step.py"), str(crash_after_step)]
    proc = subprocess.run(cmd, env=job_env(), capture_output=True, text=True, timeout=timeout)
    marker = f"crash_after_step: SIGKILL rank 0 after step {crash_after_step}"
    if proc.returncode == 0 or marker not in proc.stderr:
        raise AssertionError(f"expected a crash after step {crash_after_step}, got rc {proc.returncode}:\n"
                             f"{proc.stderr[-4000:]}")


def example_job(run_dir: str, port: int, iters: int = 40, interval: int = 20) -> tuple[list[str], dict]:
    """The command and environment of examples/pretrain_gpt_mix.sh training a tiny Aioli run into ``run_dir``."""
    env = dict(os.environ, RUN_DIR=run_dir, MASTER_PORT=str(port), DS_ACCELERATOR="cpu",
               TRAIN_ARGS=f"--micro-batch-size 4 --global-batch-size 16 --train-iters {iters} --lr 3e-3 "
                          f"--mixing-update-interval {interval} --aioli-lp-steps 2 --aioli-lp-rounds 1 "
                          "--eval-samples-per-domain 8 --save-interval 5 --log-interval 1 --skip-test")
    return ["bash", os.path.join(REPO, "examples", "pretrain_gpt_mix.sh")], env


def start_until_step(cmd: list[str], env: dict, run_dir: str, step: int, timeout: float = 600) -> subprocess.Popen:
    """Start ``cmd`` in its own process group; return once ``run_dir`` logged training step ``step``."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + timeout
    while not any(e["event"] == "train" and e["step"] >= step for e in read_metrics(run_dir)):
        assert proc.poll() is None and time.time() < deadline, f"the run ended or stalled before step {step}"
        time.sleep(0.05)
    return proc


def read_metrics(run_dir: str) -> list[dict]:
    """The events of ``run_dir/metrics.jsonl``."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def events(run_dir: str, kind: str) -> list[dict]:
    """All events of one kind, in order."""
    return [e for e in read_metrics(run_dir) if e["event"] == kind]
