"""The fault suite: 2-rank runs (tiny model, Aioli with probes) hit by real faults.

Every scenario ends either in a clear error naming the file, or in a run whose per-step
losses, mixture weights, metrics and final model weights equal the uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time

import pytest
import torch

from launch import (REPO, events, example_job, job_env, launch, make_data, read_metrics, start_until_step,
                    strip_timing, tiny_args, torchrun_cmd)
from megamix.training.config import OptimizerConfig
from megamix.training.engine import lr_at

pytestmark = pytest.mark.slow

ITERS = 16
# Aioli rounds of 8 steps: 3 probes of 2 steps (iterations 0-5, 8-13), then 2 training steps.
BASE = {"--mixing-method": "aioli", "--aioli-lp-steps": 2, "--aioli-lp-rounds": 1, "--mixing-update-interval": 8,
        "--save-interval": 2, "--skip-test": True}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return make_data(str(root)), str(root / "cache")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run every scenario is compared with."""
    prefixes, cache = data
    ref = str(tmp_path_factory.mktemp("ref") / "run")
    launch(tiny_args(prefixes, ref, cache, iters=ITERS, **BASE))
    return ref


def _args(data, run_dir: str, iters: int = ITERS, **extra) -> list[str]:
    prefixes, cache = data
    return tiny_args(prefixes, run_dir, cache, iters=iters, **{**BASE, **extra})


def _with_fault(args: list[str], spec: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = torchrun_cmd(args)
    script = cmd.index(os.path.join(REPO, "pretrain_gpt_mix.py"))
    cmd[script:script + 1] = [os.path.join(REPO, "tests", "fault_hooks.py"), spec]
    return subprocess.run(cmd, env=job_env(), capture_output=True, text=True, timeout=timeout)


def _failing(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(torchrun_cmd(args), env=job_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stdout[-2000:]
    return proc


def _model(run_dir: str, iteration: int) -> dict:
    path = os.path.join(run_dir, f"iter_{iteration:07d}", "mp_rank_00_model_states.pt")
    return torch.load(path, map_location="cpu", weights_only=False)["module"]  # our own file: trusted


def assert_same_run(run_dir: str, ref_dir: str, iteration: int = ITERS) -> None:
    """Per-step losses and mixture weights, all metrics, and the final model weights equal the reference."""
    steps = lambda d: [(e["step"], e["loss"], e["weights"]) for e in events(d, "train")]  # noqa: E731
    assert steps(run_dir) == steps(ref_dir)
    assert strip_timing(read_metrics(run_dir)) == strip_timing(read_metrics(ref_dir))
    got, want = _model(run_dir, iteration), _model(ref_dir, iteration)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def _latest(run_dir: str) -> str:
    with open(os.path.join(run_dir, "latest")) as f:
        return f.read().strip()


def test_kill9_at_ten_seeded_moments(data, reference, tmp_path):
    """SIGKILL rank 0 at 10 seeded moments (after a step, or inside a save), resuming each time."""
    rng = random.Random(13)
    steps = sorted(rng.sample(range(1, ITERS), 10))
    moments = [("kill9-save" if s % 2 == 0 and rng.random() < 0.5 else "kill9-step", s) for s in steps]
    assert sum(kind == "kill9-save" for kind, _ in moments) >= 2, moments
    run = str(tmp_path / "run")
    args = _args(data, run)
    for kind, step in moments:
        proc = _with_fault(args, f"{kind}:{step}")
        assert proc.returncode != 0 and "fault_hooks: SIGKILL rank 0" in proc.stderr, proc.stderr[-3000:]
        assert max(e["step"] for e in events(run, "train")) == step
        if kind == "kill9-save":  # DeepSpeed's files of this save are on disk, but 'latest' never moved
            assert _latest(run) == f"iter_{step - 2:07d}"
    launch(args)
    assert_same_run(run, reference)


def test_damaged_checkpoint_and_cache_are_named_then_recovered(data, reference, tmp_path):
    latest, state = tmp_path / "latest", tmp_path / "state"
    shutil.copytree(reference, latest)
    shutil.copytree(reference, state)
    model = latest / "iter_0000016" / "mp_rank_00_model_states.pt"
    model.write_bytes(model.read_bytes()[:1000])
    proc = _failing(_args(data, str(latest)))
    assert f"{model}: 1000 bytes, expected" in proc.stderr and "PytorchStreamReader" not in proc.stderr
    assert f"newest earlier checkpoint that verifies is {latest}/iter_0000014" in proc.stderr
    assert "--ckpt-step 14" in proc.stderr
    js = state / "iter_0000016" / "megamix_state.json"
    js.write_bytes(js.read_bytes()[:23])
    proc = _failing(_args(data, str(state)))
    assert f"{js}: not valid JSON" in proc.stderr and "--ckpt-step 14" in proc.stderr
    # a torn index-cache file is derived data: rebuilt, with a warning naming it
    _, cache = data
    train = sorted(f for f in os.listdir(cache) if f.endswith(".json")
                   and json.load(open(os.path.join(cache, f)))["split"] == "train")
    victim = os.path.join(cache, train[0].replace(".json", "-doc_idx.npy"))
    with open(victim, "r+b") as f:
        f.truncate(90)
    resumed = launch(_args(data, str(latest), **{"--ckpt-step": 14}))
    assert f"resumed from {latest}/iter_0000014 at iteration 14" in resumed.stdout
    assert f"warning: index cache {victim}: 90 bytes" in resumed.stderr
    assert_same_run(str(latest), reference)


def test_full_disk_during_save_keeps_the_previous_checkpoint(data, reference, tmp_path):
    run = str(tmp_path / "run")
    args = _args(data, run)
    proc = _with_fault(args, "enospc:6")
    assert proc.returncode != 0
    assert "saving checkpoint iter_0000006 failed" in proc.stderr and "No space left on device" in proc.stderr
    assert f"{run}/iter_0000006/mp_rank_00_model_states.pt" in proc.stderr
    assert f"{run}/iter_0000004 (named by latest) is untouched" in proc.stderr
    assert _latest(run) == "iter_0000004" and not os.path.exists(os.path.join(run, "iter_0000006"))
    resumed = launch(args)
    assert f"resumed from {run}/iter_0000004 at iteration 4" in resumed.stdout
    assert_same_run(run, reference)


def test_sigterm_mid_aioli_probe_saves_and_resumes_exactly(data, reference, tmp_path):
    run = str(tmp_path / "run")
    args = _args(data, run)
    proc = _with_fault(args, "sigterm:9")  # iteration 9: the first of the 2 steps of round 2's first probe
    assert "received SIGTERM: saving a checkpoint at iteration 9 and exiting" in proc.stdout, proc.stderr[-3000:]
    assert "exitcode  : " not in proc.stderr  # torchrun reports no failed rank: both exited 0
    train = events(run, "train")
    assert train[-1]["step"] == 9 and train[-1]["phase_kind"] == "probe"
    assert _latest(run) == "iter_0000009"
    resumed = launch(args)
    assert f"resumed from {run}/iter_0000009 at iteration 9" in resumed.stdout
    assert_same_run(run, reference)


def test_extending_a_finished_run(data, reference, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(reference, run)
    extended = launch(_args(data, run, iters=20))
    assert "training.train_iters: checkpoint has 16, this run has 20" in extended.stdout
    assert "--train-iters 16 -> 20: the LR schedule is recomputed for the new length from iteration 16" in \
        extended.stdout
    train = events(run, "train")
    assert [e["step"] for e in train] == list(range(1, 21))
    assert strip_timing(train[:16]) == strip_timing(events(reference, "train"))
    opt = OptimizerConfig(lr=3e-3, min_lr=3e-4, lr_warmup_iters=2)
    for e in train[16:]:  # the rate after step s is the new schedule's rate of step s
        assert e["lr"] == pytest.approx(lr_at(e["step"], opt, 20))
    # Aioli: 4 steps left are fewer than a round's 6 probe steps, so it trains on its current mixture
    phase = [e for e in events(run, "phase") if e["step"] == 16][-1]
    assert phase["kind"] == "train" and phase["steps"] == 4 and "fewer than a round's probes" in phase["info"]["reason"]


def _wait_group_gone(pgid: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(pgid, signal.SIGKILL)
    raise AssertionError("ranks still running long after SIGTERM")


def test_example_script_sigterm_saves_where_it_stopped(tmp_path):
    """kill -TERM of the deepspeed launch script's process group (as Slurm does) saves at the step it stopped."""
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    cmd, env = example_job(ref, 29621, iters=30, interval=15)
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    cmd, env = example_job(run, 29622, iters=30, interval=15)
    proc = start_until_step(cmd, env, run, 12)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait()
    _wait_group_gone(proc.pid, 60)
    stopped = max(e["step"] for e in events(run, "train"))
    assert 12 <= stopped < 30 and _latest(run) == f"iter_{stopped:07d}"
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    assert_same_run(run, ref, 30)
