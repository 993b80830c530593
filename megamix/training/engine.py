"""DeepSpeed engine set-up: the config built from flags (or checked against a file), AdamW and the LR schedule."""

from __future__ import annotations

import json
import math

import torch

from megamix.fileio import read_json
from megamix.model.fused import make_adam
from megamix.model.gpt import GPT, GPTConfig
from megamix.training.config import OptimizerConfig, TrainingConfig


def lr_at(step: int, cfg: OptimizerConfig, train_iters: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then decay to min_lr."""
    if cfg.lr_warmup_iters and step < cfg.lr_warmup_iters:
        return cfg.lr * (step + 1) / cfg.lr_warmup_iters
    if cfg.lr_decay_style == "constant":
        return cfg.lr
    decay_iters = cfg.lr_decay_iters or train_iters
    span = max(1, decay_iters - cfg.lr_warmup_iters)
    ratio = min(1.0, (step - cfg.lr_warmup_iters) / span)
    if cfg.lr_decay_style == "linear":
        coeff = 1.0 - ratio
    else:
        coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * coeff


# Settings the flags decide, by their path in the DeepSpeed config: a --deepspeed_config may
# leave them out, say "auto", or repeat the flags' value; anything else is an error.
_FLAG_KEYS = {
    ("train_batch_size",): "--global-batch-size",
    ("train_micro_batch_size_per_gpu",): "--micro-batch-size",
    ("gradient_accumulation_steps",): "--global-batch-size / (--micro-batch-size x ranks)",
    ("gradient_clipping",): "--clip-grad",
    ("zero_optimization", "stage"): "--zero-stage",
    ("bf16", "enabled"): "--bf16",
    ("fp16", "enabled"): "--fp16",
}


def _flag_config(train: TrainingConfig, opt: OptimizerConfig, dp_size: int) -> dict:
    cfg = {
        "train_batch_size": train.global_batch_size,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps(dp_size),
        "gradient_clipping": opt.clip_grad,
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": train.precision == "fp16"},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if train.precision == "bf16":
        cfg["data_types"] = {"grad_accum_dtype": "fp32"}  # bf16 accumulation loses small gradients
    return cfg


def _lookup(d: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (a in (0, 1) and b in (0, 1) and bool(a) == bool(b))
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


def _check_against_flags(user: dict, cfg: dict, path_name: str) -> None:
    for path, flag in _FLAG_KEYS.items():
        theirs = _lookup(user, path)
        if theirs is None or theirs == "auto":
            continue
        ours = _lookup(cfg, path)
        if not _same(theirs, ours):
            raise ValueError(f"--deepspeed_config {path_name}: {'.'.join(path)}={json.dumps(theirs)} disagrees with "
                             f"the flags ({flag} gives {json.dumps(ours)}); make them agree or write \"auto\" "
                             "in the file to let the flags decide")


def _merge(base: dict, user: dict) -> dict:
    """``user`` over ``base``, section by section; "auto" keeps the base value."""
    out = dict(base)
    for key, value in user.items():
        if value == "auto" or key.startswith("_"):  # "_comment" keys document the file
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def build_ds_config(train: TrainingConfig, opt: OptimizerConfig, dp_size: int) -> dict:
    """The DeepSpeed config: from flags, or ``--deepspeed_config`` checked against the flags.

    A file may add any DeepSpeed section. Where it states something the flags decide (batch
    sizes, gradient clipping, ZeRO stage, bf16/fp16) it must say "auto" or agree with the
    flags, otherwise it is an error naming both: a file never silently overrides a flag.
    """
    cfg = _flag_config(train, opt, dp_size)
    if not train.deepspeed_config:
        return cfg
    user = read_json(train.deepspeed_config, f"--deepspeed_config {train.deepspeed_config}")
    if not isinstance(user, dict):
        raise ValueError(f"--deepspeed_config {train.deepspeed_config}: expected a JSON object")
    _check_against_flags(user, cfg, train.deepspeed_config)
    return _merge(cfg, user)


def set_matmul_precision(train: TrainingConfig, device: torch.device) -> None:
    """TF32 for fp32 matmuls and convolutions on CUDA devices, as ``--no-tf32`` says."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = train.tf32
        torch.backends.cudnn.allow_tf32 = train.tf32


def describe_precision(engine, train: TrainingConfig, device: torch.device) -> str:
    """One start-up line on what the engine really computes in; raises if it is not what the flags say."""
    dtype = next(engine.module.parameters()).dtype
    expected = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[train.precision]
    if dtype != expected or engine.bfloat16_enabled() != (train.precision == "bf16"):
        raise RuntimeError(f"the DeepSpeed engine holds {dtype} parameters but the flags ask for {train.precision}")
    parts = [f"precision: {train.precision} (parameters {str(dtype).replace('torch.', '')}"]
    if train.precision == "bf16":
        parts.append(", gradients accumulated in fp32")
    parts.append(")")
    tf32 = ("on" if train.tf32 else "off (--no-tf32)") if device.type == "cuda" else "n/a on " + device.type
    parts.append(f"; TF32 matmuls: {tf32}")
    return "".join(parts)


def build_model(model_cfg: GPTConfig, train: TrainingConfig, opt: OptimizerConfig, dp_size: int) -> GPT:
    """The GPT; under ZeRO-3 built inside ``deepspeed.zero.Init`` so no rank ever holds it whole.

    Each parameter is partitioned as soon as its layer exists. The Megatron initialisation
    is then applied to the gathered parameters, one rank's values broadcast, so the
    weights equal those of the same seed at ZeRO 0-2.
    """
    if train.zero_stage < 3:
        return GPT(model_cfg)
    import deepspeed

    ds_config = build_ds_config(train, opt, dp_size)
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = GPT(model_cfg)  # its init_weights() saw only empty partitions
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
        model.init_weights()
    return model


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (ndim >= 2); none on norms and biases (Megatron's rule)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            ndim = len(getattr(p, "ds_shape", p.shape))  # a ZeRO-3 partition is flat; its full shape is ds_shape
            (decay if ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(model: torch.nn.Module, train: TrainingConfig, opt: OptimizerConfig, dp_size: int,
                 device: torch.device):
    """``deepspeed.initialize`` the model with AdamW and the warmup/decay schedule.

    Returns the engine. If the DeepSpeed config file brings its own optimizer/scheduler,
    DeepSpeed builds those instead.
    """
    import deepspeed

    ds_config = build_ds_config(train, opt, dp_size)
    optimizer = scheduler = None
    if "optimizer" not in ds_config:
        optimizer = make_adam(param_groups(model, opt.weight_decay), lr=opt.lr,
                              betas=(opt.adam_beta1, opt.adam_beta2), eps=opt.adam_eps,
                              weight_decay=opt.weight_decay, fused=opt.fused, device=device)
    if "scheduler" not in ds_config and optimizer is not None:
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_at(step, opt, train.train_iters) / opt.lr)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    if train.compile:
        engine.compile()  # parameter names (and so checkpoints) stay those of the eager model
    return engine
