"""End to end: train (ZeRO-3, W&B offline) -> convert -> AutoModelForCausalLM matches the run's test report;
--load-hf starts a run (ZeRO-0) from the converted weights; --max-domain-epochs stops a run before a step."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from launch import REPO, job_env, events, launch, make_data, tiny_args, torchrun_cmd

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return make_data(str(root)), str(root / "cache")


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A 12-step ZeRO-3 run logging to W&B offline, and its conversion."""
    prefixes, cache = data
    root = tmp_path_factory.mktemp("interop")
    run, hf = str(root / "run"), str(root / "hf")
    old = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = "offline"  # launch() passes the environment on
    try:
        proc = launch(tiny_args(prefixes, run, cache, iters=12, **{"--zero-stage": 3, "--log-interval": 4,
                                                                  "--wandb-project": "megamix-ci",
                                                                  "--wandb-exp-name": "tiny"}))
    finally:
        os.environ.pop("WANDB_MODE") if old is None else os.environ.update(WANDB_MODE=old)
    convert(run, hf)
    return run, hf, proc


def convert(run: str, out: str) -> None:
    """tools/convert_checkpoint_to_hf.py, in this process (its imports are the slow part)."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import convert_checkpoint_to_hf
    finally:
        sys.path.pop(0)
    assert convert_checkpoint_to_hf.main([run, "--out", out]) == 0
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "megamix_source.json",
                                       "model.safetensors"]  # NullTokenizer: no tokenizer files


def hf_losses_and_report(run: str, hf_dir: str) -> tuple[dict, dict]:
    from megamix.interop.evaluate import domain_losses

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir)
    with open(os.path.join(run, "test_results.json")) as f:
        return domain_losses(model, run), json.load(f)["test_loss"]


@pytest.mark.slow
def test_converted_zero3_checkpoint_matches_the_runs_test_report(trained):
    run, hf, _ = trained
    ours, report = hf_losses_and_report(run, hf)
    assert set(ours) == set(report) == {"code", "prose", "math"}
    for domain in report:  # fp32 on CPU; the run summed over 2 ranks in another order
        assert ours[domain] == pytest.approx(report[domain], abs=1e-4), domain
    model = transformers.AutoModelForCausalLM.from_pretrained(hf)
    import torch

    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 8)


@pytest.mark.slow
def test_wandb_offline_run_and_epochs_are_logged(trained):
    from test_wandb import logged_scalars

    run, _, proc = trained
    train = events(run, "train")
    logged = logged_scalars(run)  # exactly one W&B run: rank 0 only
    assert [e["step"] for e in train] == [4, 8, 12]
    for e in train:
        assert logged[(e["step"], "train/loss")] == pytest.approx(e["loss"])
        for d, epochs in e["domain_epochs"].items():
            assert logged[(e["step"], f"train/domain_epochs/{d}")] == pytest.approx(epochs)
    assert 0 < train[-1]["domain_epochs"]["code"] < 1  # 12 steps of 8 samples do not finish an epoch
    assert "| epochs: code 0." in proc.stdout


@pytest.mark.slow
def test_load_hf_initialises_a_run_and_its_checkpoint_converts_again(data, trained, tmp_path):
    prefixes, cache = data
    run1, hf1, _ = trained
    run2, hf2 = str(tmp_path / "run2"), str(tmp_path / "hf2")
    launch(tiny_args(prefixes, run2, cache, iters=2, **{"--zero-stage": 0, "--load-hf": hf1,
                                                        "--mixing-update-interval": 2}))
    before = events(run2, "eval")[0]
    assert before["step"] == 0
    after_run1 = [e for e in events(run1, "eval") if e["step"] == 12][0]
    for d, loss in after_run1["val_loss"].items():  # step 0 of run 2 evaluates run 1's final weights
        assert before["val_loss"][d] == pytest.approx(loss, abs=1e-5), d
    with open(os.path.join(run2, "config.json")) as f:
        assert json.load(f)["training"]["load_hf"] == hf1
    convert(run2, hf2)  # the ZeRO-0 path of the converter
    ours, report = hf_losses_and_report(run2, hf2)
    for domain in report:
        assert ours[domain] == pytest.approx(report[domain], abs=1e-4), domain


@pytest.mark.slow
def test_max_domain_epochs_stops_before_the_step_that_would_pass_it(data, tmp_path):
    prefixes, cache = data
    run = str(tmp_path / "run")
    # 409-424 training samples per domain: phase 1 (5 steps x 8 samples) draws <= 0.035 epochs of each,
    # phase 2 takes every domain past 0.06
    args = tiny_args(prefixes, run, cache, iters=10, **{"--max-domain-epochs": 0.045, "--skip-test": True,
                                                       "--mixing-update-interval": 5})
    proc = subprocess.run(torchrun_cmd(args), env=job_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stderr[-3000:]
    flag = "--max-domain-epochs 0.045 at step "
    assert flag in proc.stderr and "would be drawn" in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("would be drawn") == 1  # printed by rank 0 only
    assert 5 < int(proc.stderr.split(flag)[1].split()[0]) <= 10
    assert [e["step"] for e in events(run, "train")] == list(range(1, 6))  # phase 2 refused before its first step
    assert [e["steps"] for e in events(run, "phase") if e["steps"]] == [5]
