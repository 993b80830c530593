"""The DeepSpeed config: flags decide, a --deepspeed_config file adds but never contradicts."""

from __future__ import annotations

import json
import os

import pytest

from megamix.training.config import OptimizerConfig, TrainingConfig
from megamix.training.engine import build_ds_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = [os.path.join(REPO, "examples", f"ds_zero{s}.json") for s in range(4)]


def _cfg(tmp_path, file: dict | str | None, **train) -> dict:
    path = None
    if file is not None:
        path = tmp_path / "ds.json"
        path.write_text(file if isinstance(file, str) else json.dumps(file))
    tr = TrainingConfig(micro_batch_size=2, global_batch_size=8, deepspeed_config=str(path) if path else None, **train)
    return build_ds_config(tr, OptimizerConfig(lr=1e-3, clip_grad=1.0), dp_size=2)


def test_flags_alone():
    cfg = build_ds_config(TrainingConfig(micro_batch_size=2, global_batch_size=8, zero_stage=2, precision="bf16"),
                          OptimizerConfig(lr=1e-3, clip_grad=0.5), dp_size=2)
    assert cfg["train_batch_size"] == 8 and cfg["gradient_accumulation_steps"] == 2
    assert cfg["zero_optimization"] == {"stage": 2} and cfg["gradient_clipping"] == 0.5
    assert cfg["bf16"] == {"enabled": True} and cfg["fp16"] == {"enabled": False}
    assert cfg["data_types"] == {"grad_accum_dtype": "fp32"}


def test_fp32_has_no_grad_accum_override():
    assert "data_types" not in build_ds_config(TrainingConfig(micro_batch_size=2, global_batch_size=8),
                                               OptimizerConfig(lr=1e-3), dp_size=1)


@pytest.mark.parametrize("stage", range(4))
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_example_configs_follow_the_flags(stage, precision):
    tr = TrainingConfig(micro_batch_size=2, global_batch_size=8, zero_stage=stage, precision=precision,
                        deepspeed_config=EXAMPLES[stage])
    cfg = build_ds_config(tr, OptimizerConfig(lr=1e-3, clip_grad=0.3), dp_size=2)
    assert cfg["zero_optimization"]["stage"] == stage
    assert cfg["bf16"]["enabled"] is (precision == "bf16")
    assert cfg["fp16"]["enabled"] is (precision == "fp16")
    assert cfg["gradient_clipping"] == 0.3
    assert cfg["train_batch_size"] == 8 and cfg["train_micro_batch_size_per_gpu"] == 2
    assert "auto" not in json.dumps(cfg) and "_comment" not in cfg
    if stage == 3:
        assert cfg["zero_optimization"]["stage3_param_persistence_threshold"] == 0  # the file's tuning is kept


@pytest.mark.parametrize("file, train, names", [
    ({"bf16": {"enabled": False}}, {"precision": "bf16"}, ["bf16.enabled=false", "--bf16 gives true"]),
    ({"bf16": {"enabled": True}}, {}, ["bf16.enabled=true", "--bf16 gives false"]),
    ({"fp16": {"enabled": True}}, {"precision": "bf16"}, ["fp16.enabled=true", "--fp16"]),
    ({"gradient_clipping": 2.0}, {}, ["gradient_clipping=2.0", "--clip-grad gives 1.0"]),
    ({"zero_optimization": {"stage": 3}}, {}, ["zero_optimization.stage=3", "--zero-stage gives 0"]),
    ({"zero_optimization": {"stage": 1}}, {"zero_stage": 3}, ["zero_optimization.stage=1", "--zero-stage gives 3"]),
    ({"train_batch_size": 16}, {}, ["train_batch_size=16", "--global-batch-size gives 8"]),
    ({"train_micro_batch_size_per_gpu": 1}, {}, ["train_micro_batch_size_per_gpu=1", "--micro-batch-size"]),
])
def test_a_file_that_contradicts_a_flag_is_an_error_naming_both(tmp_path, file, train, names):
    with pytest.raises(ValueError) as err:
        _cfg(tmp_path, file, **train)
    assert "--deepspeed_config" in str(err.value) and str(tmp_path / "ds.json") in str(err.value)
    for name in names:
        assert name in str(err.value)


def test_agreeing_values_and_extra_sections_pass(tmp_path):
    cfg = _cfg(tmp_path, {"bf16": {"enabled": True}, "gradient_clipping": 1, "zero_optimization": {"stage": 2,
               "reduce_bucket_size": 1000}, "activation_checkpointing": {"partition_activations": False}},
               precision="bf16", zero_stage=2)
    assert cfg["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 1000}
    assert cfg["activation_checkpointing"] == {"partition_activations": False}
    assert cfg["bf16"] == {"enabled": True} and cfg["data_types"] == {"grad_accum_dtype": "fp32"}


def test_invalid_json_names_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"--deepspeed_config .*ds\.json: not valid JSON \(line 1"):
        _cfg(tmp_path, "{not json")


class _StubEngine:
    def __init__(self) -> None:
        self.compiled = 0

    def compile(self) -> None:
        self.compiled += 1


@pytest.mark.parametrize("compile_flag", [False, True])
def test_compile_flag_compiles_the_engine(monkeypatch, compile_flag):
    import deepspeed
    import torch

    from megamix.training.engine import build_engine

    stub = _StubEngine()
    monkeypatch.setattr(deepspeed, "initialize", lambda **kw: (stub, None, None, None))
    model = torch.nn.Linear(4, 4)
    build_engine(model, TrainingConfig(micro_batch_size=1, global_batch_size=1, compile=compile_flag),
                 OptimizerConfig(lr=1e-3, fused="none"), 1, torch.device("cpu"))
    assert stub.compiled == int(compile_flag)
