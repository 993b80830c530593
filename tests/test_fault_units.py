"""Fault handling, one piece at a time (no launches): checkpoint verification, save errors,
resume changes, the LR refit, exit signals and self-healing index caches."""

from __future__ import annotations

import json
import os
import signal
import types

import numpy as np
import pytest
import torch

from data_fixtures import write_domain
from megamix.data.domain import DomainDataset
from megamix.training.checkpoint import find_checkpoint, tag_for
from megamix.training.ckpt_verify import (STATE_FILE, CheckpointError, describe_files, read_state,
                                          recording_writes, seal, verified_state)
from megamix.training.engine import lr_at
from megamix.training.config import OptimizerConfig
from megamix.training.preemption import ExitSignalHandler, parse_exit_signals
from megamix.training.resume import check_resume_config, refit_lr_schedule


def _fake_checkpoint(root, iteration: int, payload: bytes = b"weights" * 100) -> str:
    """A checkpoint directory like save_checkpoint writes: one data file and a sealed state."""
    tag = tag_for(iteration)
    os.makedirs(root / tag)
    data = root / tag / "mp_rank_00_model_states.pt"
    data.write_bytes(payload)
    state = {"loop": {"iteration": iteration}, "files": describe_files(str(root / tag), [str(data)], 0)}
    (root / tag / STATE_FILE).write_text(json.dumps(seal(state)))
    (root / "latest").write_text(tag)
    return tag


def test_verified_state_accepts_an_intact_checkpoint(tmp_path):
    tag = _fake_checkpoint(tmp_path, 4)
    state = verified_state(str(tmp_path), tag, 0, 1)
    assert state["loop"]["iteration"] == 4
    assert state["files"]["mp_rank_00_model_states.pt"]["size"] == 700


@pytest.mark.parametrize("damage, expected", [
    ("truncate_state", r"megamix_state.json: not valid JSON .*truncated or corrupted \(23 bytes\)"),
    ("truncate_data", r"mp_rank_00_model_states.pt: 90 bytes, expected 700 \(truncated"),
    ("alter_data", r"mp_rank_00_model_states.pt: sha256 .*expected .*the content was altered"),
    ("delete_data", r"mp_rank_00_model_states.pt: missing \(expected 700 bytes\)"),
    ("delete_state", r"megamix_state.json: missing \(the save of iter_0000006 did not finish\)"),
    ("edit_state", r"megamix_state.json: content does not match its recorded sha256"),
])
def test_damage_is_named_with_the_newest_verified_earlier_checkpoint(tmp_path, damage, expected):
    _fake_checkpoint(tmp_path, 2)
    _fake_checkpoint(tmp_path, 4)
    tag = _fake_checkpoint(tmp_path, 6)
    (tmp_path / tag_for(4) / "mp_rank_00_model_states.pt").write_bytes(b"x")  # 4 is damaged too
    state, data = tmp_path / tag / STATE_FILE, tmp_path / tag / "mp_rank_00_model_states.pt"
    if damage == "truncate_state":
        state.write_bytes(state.read_bytes()[:23])
    elif damage == "truncate_data":
        data.write_bytes(data.read_bytes()[:90])
    elif damage == "alter_data":
        data.write_bytes(b"W" + data.read_bytes()[1:])
    elif damage == "delete_data":
        data.unlink()
    elif damage == "delete_state":
        state.unlink()
    else:
        d = json.loads(state.read_text())
        d["loop"]["iteration"] = 5
        state.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=expected) as err:
        verified_state(str(tmp_path), tag, 0, 1)
    assert f"newest earlier checkpoint that verifies is {tmp_path}/iter_0000002" in str(err.value)
    assert "--ckpt-step 2" in str(err.value)


def test_no_earlier_checkpoint_verifies(tmp_path):
    tag = _fake_checkpoint(tmp_path, 2)
    (tmp_path / tag / STATE_FILE).write_text("{")
    with pytest.raises(CheckpointError, match="no earlier checkpoint in .* verifies"):
        verified_state(str(tmp_path), tag, 0, 1)


def test_each_rank_checks_only_its_own_files(tmp_path):
    tag = _fake_checkpoint(tmp_path, 2)
    state = read_state(str(tmp_path), tag)
    state["files"]["mp_rank_00_model_states.pt"]["rank"] = 1  # written by rank 1
    (tmp_path / tag / STATE_FILE).write_text(json.dumps(seal(state)))
    (tmp_path / tag / "mp_rank_00_model_states.pt").write_bytes(b"")
    from megamix.training.ckpt_verify import check_files
    assert check_files(str(tmp_path), tag, state["files"], 0, 2) == []
    assert "0 bytes, expected 700" in check_files(str(tmp_path), tag, state["files"], 1, 2)[0]


def test_ckpt_step_picks_a_checkpoint_or_names_what_exists(tmp_path):
    _fake_checkpoint(tmp_path, 2)
    _fake_checkpoint(tmp_path, 4)
    assert find_checkpoint(str(tmp_path)) == "iter_0000004"
    assert find_checkpoint(str(tmp_path), 2) == "iter_0000002"
    with pytest.raises(CheckpointError, match=r"--ckpt-step 3: no checkpoint .*iter_0000003 "
                                              r"\(found: iter_0000004, iter_0000002\)"):
        find_checkpoint(str(tmp_path), 3)
    assert find_checkpoint(str(tmp_path / "nothing")) is None


def test_recording_writes_keeps_the_error_instead_of_raising(tmp_path):
    calls = []

    class Engine:
        def save(self, state, path):
            calls.append(path)
            if "bad" in path:
                raise RuntimeError("PytorchStreamWriter failed writing file: file write failed")
            open(path, "wb").close()

        def makedirs(self, path, exist_ok=False):
            raise PermissionError(13, "Permission denied", path)

    engine = types.SimpleNamespace(checkpoint_engine=Engine())
    with recording_writes(engine) as record:
        engine.checkpoint_engine.save({}, str(tmp_path / "good.pt"))
        engine.checkpoint_engine.save({}, str(tmp_path / "bad.pt"))
        engine.checkpoint_engine.save({}, str(tmp_path / "after.pt"))  # skipped once a write failed
    assert record["paths"] == [str(tmp_path / "good.pt")]
    assert "bad.pt: RuntimeError: PytorchStreamWriter" in record["error"]
    assert len(calls) == 2
    assert engine.checkpoint_engine.save.__name__ == "save"  # restored
    with recording_writes(engine) as record:
        engine.checkpoint_engine.makedirs(str(tmp_path / "d"), exist_ok=True)
    assert "creating" in record["error"] and "Permission denied" in record["error"]


def _config(train_iters: int, **training) -> dict:
    return {"training": {"train_iters": train_iters, "save_interval": 2, "seed": 1, **training},
            "logging": {"log_interval": 1}, "optimizer": {"lr": 1e-3}}


def test_resume_allows_extension_and_intervals_but_not_the_rest():
    changes = check_resume_config(_config(6), _config(9, save_interval=3), "/r", "iter_0000006", 6)
    assert changes == ["training.save_interval: checkpoint has 2, this run has 3",
                       "training.train_iters: checkpoint has 6, this run has 9"]
    wandb = dict(_config(6), logging={"log_interval": 1, "wandb_project": "p"})
    assert check_resume_config(_config(6), wandb, "/r", "t", 6) == [
        "logging.wandb_project: checkpoint has None, this run has 'p'"]
    with pytest.raises(ValueError, match=r"different configuration.*\n  training.seed: checkpoint has 1, this run "
                                         r"has 2"):
        check_resume_config(_config(6), _config(9, seed=2), "/r", "t", 6)
    with pytest.raises(CheckpointError, match="--train-iters 4: checkpoint /r/t is already at iteration 6"):
        check_resume_config(_config(6), _config(4), "/r", "t", 6)


def test_refit_lr_schedule_follows_the_new_length():
    opt_cfg = OptimizerConfig(lr=3e-3, min_lr=3e-4, lr_warmup_iters=2)
    train_iters = {"n": 6}
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param], lr=opt_cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, opt_cfg, train_iters["n"]) / opt_cfg.lr)
    for _ in range(4):
        optimizer.step()
        sched.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_at(4, opt_cfg, 6))
    train_iters["n"] = 9
    before, after = refit_lr_schedule(types.SimpleNamespace(lr_scheduler=sched))
    assert before == pytest.approx(lr_at(4, opt_cfg, 6)) and after == pytest.approx(lr_at(4, opt_cfg, 9))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_at(4, opt_cfg, 9)) != pytest.approx(before)
    assert refit_lr_schedule(types.SimpleNamespace(lr_scheduler=None)) is None


def test_exit_signals_are_recorded_not_fatal():
    assert parse_exit_signals("SIGTERM,usr1") == ("SIGTERM", "SIGUSR1")
    assert parse_exit_signals("none") == ()
    with pytest.raises(ValueError, match="--exit-signals: 'SIGKILL' is not a signal that can be caught"):
        parse_exit_signals("SIGKILL")
    with pytest.raises(ValueError, match="--exit-signals: 'NOPE'"):
        parse_exit_signals("NOPE")
    before = signal.getsignal(signal.SIGUSR1)
    handler = ExitSignalHandler(("SIGUSR1",)).install()
    try:
        assert not handler.agreed()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert handler.received == "SIGUSR1" and handler.agreed()
    finally:
        handler.restore()
    assert signal.getsignal(signal.SIGUSR1) is before
    assert not ExitSignalHandler(()).agreed()


# ---------------------------------------------------------------- index caches
SPLIT = (0.8, 0.1, 0.1)


def _ds(prefix: str, cache: str) -> DomainDataset:
    return DomainDataset(prefix, "a", 0, "train", 16, SPLIT, 1, cache)


@pytest.mark.parametrize("damage", ["truncate", "alter", "delete", "description"])
def test_damaged_cache_file_is_rebuilt_with_a_warning(tmp_path, capsys, damage):
    prefix = write_domain(tmp_path, "a")
    cache = str(tmp_path / "cache")
    reference = [np.array(a) for a in _ds(prefix, cache).epoch_arrays(0)]
    paths = _ds(prefix, cache).cache_paths(0)
    capsys.readouterr()
    victim = paths["json"] if damage == "description" else paths["doc_idx"]
    raw = open(victim, "rb").read()
    if damage == "truncate":
        open(victim, "wb").write(raw[:90])
    elif damage == "alter":
        open(victim, "wb").write(raw[:-1] + bytes([raw[-1] ^ 1]))
    elif damage == "delete":
        os.unlink(victim)
    else:
        open(victim, "w").write("{")
    rebuilt = _ds(prefix, cache)
    warning = capsys.readouterr().err
    assert f"warning: index cache {victim}" in warning and "rebuilding it" in warning
    for a, b in zip(reference, rebuilt.epoch_arrays(0)):
        np.testing.assert_array_equal(a, b)
    assert _ds(prefix, cache) and capsys.readouterr().err == ""  # healed: no second warning


def test_cache_description_records_shapes_and_checksums(tmp_path):
    ds = _ds(write_domain(tmp_path, "a"), str(tmp_path / "cache"))
    desc = json.load(open(ds.cache_paths(0)["json"]))
    doc_idx = ds.epoch_arrays(0)[0]
    assert desc["arrays"]["doc_idx"]["shape"] == list(doc_idx.shape)
    assert desc["arrays"]["doc_idx"]["dtype"] == "int64" and len(desc["arrays"]["doc_idx"]["sha256"]) == 64


def test_unwritable_cache_directory_is_named(tmp_path):
    prefix = write_domain(tmp_path, "a")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match=f"--data-cache-path {blocker}/cache: the index cache directory cannot be "
                                         "written"):
        _ds(prefix, str(blocker / "cache"))
