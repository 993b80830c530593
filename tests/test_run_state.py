"""RunConfig.from_dict and read_run_state: configs round-trip, versions are checked, damage is still named."""

from __future__ import annotations

import json
import os

import pytest

from megamix.data.tokenizer import TokenizerConfig
from megamix.training.arguments import build_parser, config_from_args
from megamix.training.checkpoint import tag_for
from megamix.training.ckpt_verify import STATE_FILE, CheckpointError, describe_files, seal
from megamix.training.config import RunConfig
from megamix.training.run_state import STATE_VERSION, read_run_state

BASE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "16",
        "--micro-batch-size", "4", "--global-batch-size", "8", "--train-iters", "10", "--lr", "1e-3",
        "--tokenizer-type", "NullTokenizer", "--vocab-size", "100", "--split", "97,2,1"]


def _cfg(*flags: str) -> RunConfig:
    args = build_parser().parse_args(BASE + list(flags))
    return config_from_args(args, TokenizerConfig("NullTokenizer", None, 100))


@pytest.mark.parametrize("flags", [
    ("--data-path", "/d/a", "b=/d/b_text_document", "--mixing-method", "aioli", "--aioli-ema", "0.5"),
    ("--data-path", "0.3", "/d/a", "0.7", "/d/b", "--exit-signals", "SIGUSR2", "--seed", "7", "--split-seed", "3"),
])
def test_config_round_trips_through_its_dict(flags):
    cfg = _cfg(*flags)
    rebuilt = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert rebuilt == cfg
    assert isinstance(rebuilt.data.split, tuple) and isinstance(rebuilt.training.exit_signals, tuple)


@pytest.mark.parametrize("section, key, where", [
    ("", "extra", lambda d: d), ("training", "new_flag", lambda d: d["training"]),
    ("mixing.options", "gamma", lambda d: d["mixing"]["options"]),
    ("data.data_path", "alias", lambda d: d["data"]["data_path"][0]),
])
def test_unknown_config_key_names_section_and_key(section, key, where):
    d = _cfg("--data-path", "/d/a", "/d/b", "--mixing-method", "aioli").to_dict()
    where(d)[key] = 1
    label = f"config section '{section}'" if section else "config"
    with pytest.raises(ValueError, match=f"{label}: unknown key '{key}'.*newer megamix"):
        RunConfig.from_dict(d)


def _checkpoint(root, iteration: int = 4, **extra) -> str:
    """A checkpoint directory like save_checkpoint writes: one data file and a sealed run state."""
    tag = tag_for(iteration)
    os.makedirs(root / tag)
    data = root / tag / "mp_rank_00_model_states.pt"
    data.write_bytes(b"weights" * 100)
    state = {"loop": {"iteration": iteration}, "config": _cfg("--data-path", "/d/a", "/d/b").to_dict(),
             "files": describe_files(str(root / tag), [str(data)], 0), **extra}
    (root / tag / STATE_FILE).write_text(json.dumps(seal(state)))
    (root / "latest").write_text(tag)
    return tag


def test_read_run_state_verifies_and_builds_the_config(tmp_path):
    _checkpoint(tmp_path, 2, version=STATE_VERSION)
    state = read_run_state(str(tmp_path))
    assert (state.tag, state.iteration) == ("iter_0000002", 2)
    assert [d.name for d in state.config.data.data_path] == ["a", "b"] and state.config.training.micro_batch_size == 4
    with pytest.raises(FileNotFoundError, match="no megamix checkpoint"):
        read_run_state(str(tmp_path / "nothing"))


def test_state_without_version_is_refused_with_the_reason(tmp_path):
    tag = _checkpoint(tmp_path)  # what megamix wrote before the field existed: another layout
    with pytest.raises(ValueError, match=rf"{tmp_path}/{tag}/{STATE_FILE}: run state without a version"):
        read_run_state(str(tmp_path))


def test_unknown_version_names_file_found_and_known(tmp_path):
    tag = _checkpoint(tmp_path, version=99)
    with pytest.raises(ValueError, match=rf"{tmp_path}/{tag}/{STATE_FILE}: run state version 99 .*known: 1"):
        read_run_state(str(tmp_path), verify=False)


def test_unknown_key_in_saved_config_names_the_file(tmp_path):
    tag = _checkpoint(tmp_path, version=STATE_VERSION)
    path = tmp_path / tag / STATE_FILE
    state = json.loads(path.read_text())
    state["config"]["model"]["moe_experts"] = 8
    path.write_text(json.dumps(seal(state)))
    with pytest.raises(ValueError, match=rf"{STATE_FILE}: the saved config does not load: .*'model'.*moe_experts"):
        read_run_state(str(tmp_path)).config


def test_damaged_state_file_is_still_named(tmp_path):
    _checkpoint(tmp_path, 2, version=STATE_VERSION)
    tag = _checkpoint(tmp_path, 4, version=STATE_VERSION)
    path = tmp_path / tag / STATE_FILE
    path.write_bytes(path.read_bytes()[:23])
    with pytest.raises(CheckpointError, match=r"not valid JSON .*truncated or corrupted \(23 bytes\)") as err:
        read_run_state(str(tmp_path))
    assert f"newest earlier checkpoint that verifies is {tmp_path}/iter_0000002" in str(err.value)
