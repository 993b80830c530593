"""End-to-end training under a 2-process gloo launch: losses, reports, ZeRO stages, resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from launch import (REPO, events, example_job, launch, launch_and_crash, make_data, read_metrics, start_until_step,
                    strip_timing, tiny_args)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return make_data(str(root)), str(root / "cache")


def test_trains_and_reports(data, tmp_path):
    prefixes, cache = data
    run, tb = str(tmp_path / "run"), str(tmp_path / "tb")
    proc = launch(tiny_args(prefixes, run, cache, iters=30, **{"--tensorboard-dir": tb, "--peak-tflops": 0.5}))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tb))
    train = events(run, "train")
    with open(os.path.join(run, "config.json")) as f:
        vocab = json.load(f)["model"]["vocab_size"]  # the NullTokenizer's 512 + eod, padded to 128
    assert vocab == 640
    flops = 6 * (2 * (4 * 64 * 64 + 64 * 2 * 192 + 192 * 64 + 2 * 64) + 64 + vocab * 64) + 12 * 2 * 64 * 64
    for e in train:  # model TFLOP/s per device (2 ranks) and MFU against --peak-tflops
        assert math.isclose(e["tflops_per_device"], e["tokens_per_s"] * flops / 2 / 1e12, rel_tol=1e-9)
        assert math.isclose(e["mfu"], e["tflops_per_device"] / 0.5, rel_tol=1e-9)
    assert "TFLOP/s/dev: " in proc.stdout and "MFU: " in proc.stdout
    assert [e["step"] for e in train] == list(range(1, 31))
    first = sum(e["loss"] for e in train[:3]) / 3
    last = sum(e["loss"] for e in train[-3:]) / 3
    assert last < first - 0.3, (first, last)
    # the global loss is the token-weighted sum of the per-domain losses
    for e in train:
        tokens = e["domain_tokens"]
        total = sum(tokens.values())
        assert total == 8 * 64
        recombined = sum(e["domain_loss"][d] * tokens[d] for d in tokens if tokens[d]) / total
        assert math.isclose(recombined, e["loss"], rel_tol=1e-9)
    evals = events(run, "eval")
    assert [e["step"] for e in evals] == [0, 10, 20, 30]
    assert set(evals[-1]["val_loss"]) == {"code", "prose", "math"}
    with open(os.path.join(run, "test_results.json")) as f:
        res = json.load(f)
    assert set(res["test_ppl"]) == {"code", "prose", "math"}
    assert math.isclose(res["avg_test_ppl"], sum(res["test_ppl"].values()) / 3)
    assert res["worst_test_ppl"] == max(res["test_ppl"].values())
    assert res["test_ppl"][res["worst_domain"]] == res["worst_test_ppl"]
    assert events(run, "test")[0]["avg_test_loss"] == res["avg_test_loss"]


@pytest.mark.parametrize("stage", [0, pytest.param(1, marks=pytest.mark.slow), 2, pytest.param(3, marks=pytest.mark.slow)])
def test_zero_stages_train(data, tmp_path, stage):
    prefixes, cache = data
    run = str(tmp_path / f"zero{stage}")
    launch(tiny_args(prefixes, run, cache, iters=12, **{"--zero-stage": stage, "--skip-test": True}))
    train = events(run, "train")
    assert len(train) == 12
    assert train[-1]["loss"] < train[0]["loss"]


def _losses_and_weights(run: str) -> list[tuple]:
    return [(e["step"], e["loss"], tuple(sorted(e["weights"].items()))) for e in events(run, "train")]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 3])
def test_kill_and_resume_is_exact(data, tmp_path, stage):
    prefixes, cache = data
    ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "killed")
    over = {"--zero-stage": stage, "--save-interval": 4, "--skip-test": True}
    launch(tiny_args(prefixes, ref_dir, cache, iters=24, **over))
    args = tiny_args(prefixes, run_dir, cache, iters=24, **over)
    launch_and_crash(args, crash_after_step=14)
    assert max(e["step"] for e in events(run_dir, "train")) == 14
    resumed = launch(args)
    assert f"resumed from {run_dir}/iter_0000012 at iteration 12" in resumed.stdout
    assert _losses_and_weights(run_dir) == _losses_and_weights(ref_dir)
    assert strip_timing(read_metrics(run_dir)) == strip_timing(read_metrics(ref_dir))
    # launching a finished run again is a clean no-op (it once aborted at exit under ZeRO-3)
    again = launch(args)
    assert f"resumed from {run_dir}/iter_0000024 at iteration 24" in again.stdout
    assert strip_timing(read_metrics(run_dir)) == strip_timing(read_metrics(ref_dir))


def _bad(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    return subprocess.run([sys.executable, os.path.join(REPO, "pretrain_gpt_mix.py"), *args], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("override, message", [
    ({"--global-batch-size": 10, "--micro-batch-size": 4}, "--global-batch-size"),
    ({"--zero-stage": 5}, "--zero-stage"),
    ({"--mixing-method": "bogus"}, "--mixing-method"),
    ({"--lr": -1}, "--lr"),
    ({"--aioli-eta": 2.0}, "--aioli-eta"),
    ({"--hidden-size": 66}, "--hidden-size"),
])
def test_bad_flags_fail_before_training(data, tmp_path, override, message):
    prefixes, cache = data
    run = str(tmp_path / "bad")
    proc = _bad(tiny_args(prefixes, run, cache, **override))
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert not os.path.exists(os.path.join(run, "metrics.jsonl"))


def test_unknown_flag_fails(data, tmp_path):
    prefixes, cache = data
    proc = _bad(tiny_args(prefixes, str(tmp_path / "r"), cache) + ["--no-such-flag", "1"])
    assert proc.returncode == 2 and "--no-such-flag" in proc.stderr


@pytest.mark.slow
def test_example_script_under_deepspeed_resumes_after_kill(tmp_path):
    """The launch script (deepspeed launcher, 2 CPU ranks, Aioli) killed mid-run and re-run matches a clean run."""
    import signal

    ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
    cmd, env = example_job(ref, 29611)
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    cmd, env = example_job(killed, 29612)
    proc = start_until_step(cmd, env, killed, 23)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    assert _losses_and_weights(killed) == _losses_and_weights(ref)
    assert len(events(ref, "aioli_round")) == 2
    assert events(killed, "aioli_round") == events(ref, "aioli_round")


@pytest.mark.slow
def test_bf16_with_the_example_deepspeed_config_trains_in_bf16(data, tmp_path):
    prefixes, cache = data
    run = str(tmp_path / "bf16")
    proc = launch(tiny_args(prefixes, run, cache, iters=4, **{
        "--bf16": True, "--zero-stage": 1, "--skip-test": True,
        "--deepspeed_config": os.path.join(REPO, "examples", "ds_zero1.json")}))
    assert "precision: bf16 (parameters bfloat16, gradients accumulated in fp32)" in proc.stdout
    train = events(run, "train")
    assert len(train) == 4 and all(math.isfinite(e["loss"]) for e in train)


@pytest.mark.slow
def test_full_recompute_under_zero3_gives_the_same_losses(data, tmp_path):
    prefixes, cache = data
    losses = []
    for name, extra in (("plain", {}), ("recompute", {"--recompute-granularity": "full",
                                                      "--recompute-method": "uniform", "--recompute-num-layers": 1})):
        run = str(tmp_path / name)
        launch(tiny_args(prefixes, run, cache, iters=4, **{"--zero-stage": 3, "--skip-test": True, **extra}))
        losses.append([e["loss"] for e in events(run, "train")])
    assert len(losses[0]) == 4
    assert losses[1] == pytest.approx(losses[0], rel=1e-6, abs=0)


@pytest.mark.slow
def test_slurm_script_launches_torchrun_per_node(tmp_path):
    """examples/pretrain_gpt_mix.slurm under stand-in srun/scontrol (one node): torchrun trains the run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho localhost\n")
    (bin_dir / "srun").write_text('#!/bin/sh\nwhile [ "${1#--}" != "$1" ]; do shift; done\n'
                                  'SLURM_NODEID=0 exec "$@"\n')
    for f in ("scontrol", "srun"):
        os.chmod(bin_dir / f, 0o755)
    run = str(tmp_path / "slurm")
    _, env = example_job(run, 29613, iters=6)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", SLURM_JOB_NODELIST="node-a", SLURM_NNODES="1",
               SLURM_SUBMIT_DIR=REPO, NUM_GPUS="2")
    proc = subprocess.run(["bash", os.path.join(REPO, "examples", "pretrain_gpt_mix.slurm")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [e["step"] for e in events(run, "train")] == list(range(1, 7))
