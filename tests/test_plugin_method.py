"""A mixing method added from outside the library: tests/toy_mixer.py, one file, no megamix edit.

The toy method is registered by importing its module (``--mixing-plugin toy_mixer``); its
flags come from its config fields; its two signals (one per sample, one per step) are wired
by the run from its MethodSpec; and it trains end to end through pretrain_gpt_mix.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from launch import REPO, job_env, make_data, tiny_args, torchrun_cmd
from megamix.fileio import read_jsonl
from megamix.mixing.base import MixerContext
from megamix.mixing.config import MixingConfig
from megamix.mixing.registry import build_mixer, import_plugins, method_names
from megamix.training.mixing_args import add_mixing_args, mixing_config_from_args
from sim_env import LinearLawEnv, drive

TESTS = os.path.dirname(os.path.abspath(__file__))
BUILTIN_OWNERS = {  # method name -> the files allowed to say it (besides the registry and the docs)
    "aioli": ("mixing/aioli.py", "training/aioli_gradient.py"),
    "skillit|skill-it": ("mixing/skillit.py",),
    "doremi": ("mixing/doremi.py", "training/doremi_reference.py"),
    "doge": ("mixing/doge.py", "training/doge_scores.py"),
}


def _parse(argv):
    import_plugins(["toy_mixer"])
    parser = add_mixing_args(argparse.ArgumentParser())
    return mixing_config_from_args(parser.parse_args(argv), None, ["a", "b"])


def test_the_plugin_registers_flags_and_a_config_that_round_trips():
    cfg = _parse(["--mixing-plugin", "toy_mixer", "--mixing-method", "toy", "--toy-tilt", "0.5"])
    assert "toy" in method_names() and cfg.options.tilt == 0.5 and cfg.plugins == ("toy_mixer",)
    assert MixingConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
    with pytest.raises(ValueError, match="--toy-tilt only apply to --mixing-method toy"):
        _parse(["--mixing-method", "stratified", "--toy-tilt", "0.5"])
    with pytest.raises(ValueError, match="--toy-tilt must be a finite number > 0"):
        _parse(["--mixing-method", "toy", "--toy-tilt", "-1"])
    with pytest.raises(ValueError, match="--mixing-plugin no_such_module: cannot import it"):
        import_plugins(["no_such_module"])


def test_the_toy_mixer_follows_the_training_loss_in_the_law_environment():
    cfg = _parse(["--mixing-method", "toy", "--toy-tilt", "2.0", "--mixing-update-interval", "10"])
    ctx = MixerContext(domains=("a", "b"), train_tokens=(10, 10), train_iters=40, global_batch_size=8, seed=1)
    signals = {"toy_worst_token": lambda p, loss: loss + 1.0, "toy_lr": lambda p, loss: np.full(2, 1e-3)}
    env = LinearLawEnv([[1.0, 0.0], [0.0, 1.0]], [5.0, 3.0], signal_fns=signals)
    mixer, events = drive(build_mixer(cfg, ctx), env, 40, roundtrip=True, make_mixer=lambda: build_mixer(cfg, ctx))
    updates = [e for e in events if e["event"] == "toy_update"]
    assert len(updates) == 4 and all(u["weights"][0] > 0.5 for u in updates)  # domain a has the higher loss
    np.testing.assert_allclose(updates[0]["lr"], [1e-3, 1e-3])


def test_the_plugin_trains_end_to_end(tmp_path):
    prefixes = make_data(str(tmp_path / "data"), num_docs=60, mean_len=120)
    run = str(tmp_path / "run")
    args = tiny_args(prefixes, run, str(tmp_path / "cache"), iters=8, **{"--mixing-update-interval": 4}) + [
        "--mixing-plugin", "toy_mixer", "--mixing-method", "toy", "--toy-tilt", "1.0", "--skip-test"]
    env = job_env()
    env["PYTHONPATH"] = TESTS + os.pathsep + env["PYTHONPATH"]
    proc = subprocess.run(torchrun_cmd(args, 1), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    events = read_jsonl(os.path.join(run, "metrics.jsonl"))
    updates = [e for e in events if e["event"] == "toy_update"]
    trains = {e["step"]: e for e in events if e["event"] == "train"}
    assert [u["step"] for u in updates] == [4, 8]
    assert updates[0]["weights"] == pytest.approx(np.exp(updates[0]["train_loss"]) / np.exp(updates[0]["train_loss"]).sum())
    assert all(w > l for w, l in zip(updates[0]["worst_token"], updates[0]["train_loss"]))
    # the per-step signal saw each step's learning rate: the one logged after step t is step t's (0-based)
    assert updates[1]["lr"] == pytest.approx([np.mean([trains[s]["lr"] for s in range(4, 8)])] * 3)
    assert json.load(open(os.path.join(run, "config.json")))["mixing"]["plugins"] == ["toy_mixer"]


def test_the_guide_shows_the_toy_method_verbatim():
    guide = open(os.path.join(REPO, "docs", "adding_a_mixer.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", guide, flags=re.S)
    assert open(os.path.join(TESTS, "toy_mixer.py")).read() in blocks


@pytest.mark.parametrize("pattern,owners", sorted(BUILTIN_OWNERS.items()))
def test_no_method_is_named_outside_its_own_modules(pattern, owners):
    lib = os.path.join(REPO, "megamix")
    found = []
    for root, _, files in os.walk(lib):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), lib)
            if name.endswith(".py") and rel not in owners + ("mixing/registry.py",):
                if re.search(pattern, open(os.path.join(root, name)).read(), flags=re.I):
                    found.append(rel)
    assert not found, f"{pattern} is named in {found}"
