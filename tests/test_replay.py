"""--mixing-method replay: a run's schedule.json trained again segment by segment, optionally mirrored."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess

import numpy as np
import pytest

from launch import job_env, make_data, tiny_args, torchrun_cmd
from megamix.data.schedule import MixtureSchedule
from megamix.fileio import read_jsonl
from megamix.mixing.base import MixerContext
from megamix.mixing.config import MixingConfig
from megamix.mixing.registry import build_mixer
from megamix.mixing.replay import ReplayMixer, mirrored, read_schedule
from megamix.training.mixing_args import add_mixing_args, mixing_config_from_args

TESTS = os.path.dirname(os.path.abspath(__file__))


def _schedule(path: str, segments: list[tuple[int, list[float]]], domains=("a", "b"), gbs: int = 8) -> str:
    schedule = MixtureSchedule(domains, gbs)
    for samples, w in segments:
        schedule.append(samples, w)
    schedule.save(path)
    return path


def _ctx(iters: int, domains=("a", "b")) -> MixerContext:
    return MixerContext(domains=domains, train_tokens=(10,) * len(domains), train_iters=iters, global_batch_size=8,
                        seed=1)


def test_mirror_reverses_each_tilt_through_uniform_and_clips_at_zero():
    np.testing.assert_allclose(mirrored(np.array([0.6, 0.4])), [0.4, 0.6])
    np.testing.assert_allclose(mirrored(np.array([0.5, 0.5])), [0.5, 0.5])
    np.testing.assert_allclose(mirrored(np.array([0.6, 0.3, 0.1])), [2 / 3 - 0.6, 2 / 3 - 0.3, 2 / 3 - 0.1])
    np.testing.assert_allclose(mirrored(np.array([0.9, 0.05, 0.05])), [0.0, 0.5, 0.5])  # 2/3 - 0.9 < 0


def test_the_schedule_is_read_by_domain_name_in_steps(tmp_path):
    path = _schedule(str(tmp_path / "s.json"), [(16, [0.7, 0.3]), (24, [0.2, 0.8])], domains=("b", "a"))
    segs = read_schedule(path, ("a", "b"), 8)
    assert [s for s, _ in segs] == [2, 3]
    np.testing.assert_allclose(segs[0][1], [0.3, 0.7])
    np.testing.assert_allclose(read_schedule(path, ("a", "b"), 8, mirror=True)[1][1], [0.2, 0.8])


def test_bad_schedules_are_refused_naming_the_file(tmp_path):
    path = _schedule(str(tmp_path / "s.json"), [(16, [0.7, 0.3])])
    with pytest.raises(ValueError, match=r"s\.json: domains \['a', 'b'\] do not match"):
        read_schedule(path, ("a", "c"), 8)
    with pytest.raises(ValueError, match=r"s\.json: segment 0 has 16 samples, not a whole number of "
                                         r"--global-batch-size 32"):
        read_schedule(path, ("a", "b"), 32)
    with pytest.raises(ValueError, match=r"s\.json: its segments cover 2 steps, fewer than --train-iters 3"):
        ReplayMixer(_ctx(3), read_schedule(path, ("a", "b"), 8), path)
    (tmp_path / "bad.json").write_text("{\"version\": 1}")
    with pytest.raises(ValueError, match=r"bad\.json: cannot read it as a run's schedule\.json"):
        read_schedule(str(tmp_path / "bad.json"), ("a", "b"), 8)
    parser = add_mixing_args(argparse.ArgumentParser())
    with pytest.raises(ValueError, match="--mixing-method replay needs --replay-schedule FILE"):
        mixing_config_from_args(parser.parse_args(["--mixing-method", "replay"]), None, ["a", "b"])


def test_phases_follow_the_segments_and_a_resume_mid_segment_takes_its_rest(tmp_path):
    path = _schedule(str(tmp_path / "s.json"), [(16, [0.7, 0.3]), (24, [0.2, 0.8])])
    parser = add_mixing_args(argparse.ArgumentParser())
    cfg = mixing_config_from_args(parser.parse_args(["--mixing-method", "replay", "--replay-schedule", path]),
                                  None, ["a", "b"])
    assert cfg.options.mirror is False
    assert MixingConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg  # config.json, resume
    mixer = build_mixer(cfg, _ctx(5))
    first = mixer.next_phase(0, 5)
    assert (first.steps, first.kind) == (0, "eval")
    phase = mixer.next_phase(0, 5)
    assert phase.steps == 2 and phase.weights.tolist() == pytest.approx([0.7, 0.3])
    assert mixer.next_phase(2, 3).steps == 3 and mixer.next_phase(3, 2).steps == 2  # step 3: inside segment 1
    np.testing.assert_allclose(mixer.learned_weights(), (2 * np.array([0.7, 0.3]) + 3 * np.array([0.2, 0.8])) / 5)


def _train(tmp_path, prefixes: list[str], name: str, *flags: str) -> str:
    run = str(tmp_path / name)
    args = tiny_args(prefixes, run, str(tmp_path / "cache"), iters=8, **{"--mixing-update-interval": 4}) + [
        "--skip-test", *flags]
    env = job_env()
    env["PYTHONPATH"] = TESTS + os.pathsep + env["PYTHONPATH"]
    proc = subprocess.run(torchrun_cmd(args, 1), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run


def _trained(run: str) -> list[tuple]:
    return [(e["step"], e["loss"], e["domain_loss"]) for e in read_jsonl(os.path.join(run, "metrics.jsonl"))
            if e["event"] == "train"]


def test_replaying_an_online_run_repeats_its_training_and_mirror_reverses_its_tilts(tmp_path):
    prefixes = make_data(str(tmp_path / "data"), num_docs=60, mean_len=120)
    source = _train(tmp_path, prefixes, "toy", "--mixing-plugin", "toy_mixer", "--mixing-method", "toy",
                    "--toy-tilt", "1.0")
    recorded = MixtureSchedule.load(os.path.join(source, "schedule.json"))
    assert len({s.weights for s in recorded.segments}) > 1  # the online method moved p
    replay = _train(tmp_path, prefixes, "replay", "--mixing-method", "replay", "--replay-schedule",
                    os.path.join(source, "schedule.json"))
    assert MixtureSchedule.load(os.path.join(replay, "schedule.json")) == recorded
    assert _trained(replay) == _trained(source)  # the same samples in the same order, bit for bit
    mirror = _train(tmp_path, prefixes, "mirror", "--mixing-method", "replay", "--replay-schedule",
                    os.path.join(source, "schedule.json"), "--replay-mirror")
    got = MixtureSchedule.load(os.path.join(mirror, "schedule.json")).segments
    assert [s.num_samples for s in got] == [s.num_samples for s in recorded.segments]
    for seg, src in zip(got, recorded.segments):
        np.testing.assert_allclose(seg.weights, mirrored(np.asarray(src.weights)), atol=1e-12)
