"""One config dataclass per training component; arguments.py fills them from the command line.

Flag names follow Megatron-LM where Megatron has the concept. Each component receives only
its own config: GPTConfig (model), DataConfig (data), OptimizerConfig, TrainingConfig,
MixingConfig, LoggingConfig. ``RunConfig`` merely groups them for the entry point and is
what a checkpoint records.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from megamix.config_dict import config_from_dict
from megamix.data.config import DataConfig, DomainSpec
from megamix.data.tokenizer import TokenizerConfig
from megamix.mixing.config import MixingConfig
from megamix.model.gpt import GPTConfig

LR_DECAY_STYLES = ("cosine", "linear", "constant")


@dataclass
class OptimizerConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = 3e-4
    """Peak learning rate (--lr)."""
    min_lr: float = 0.0
    """Learning rate at the end of the decay (--min-lr)."""
    lr_warmup_iters: int = 0
    """Linear warmup steps from 0 to --lr (--lr-warmup-iters)."""
    lr_decay_style: str = "cosine"
    """cosine | linear | constant (--lr-decay-style)."""
    lr_decay_iters: int | None = None
    """Steps over which the rate decays to --min-lr; default --train-iters (--lr-decay-iters)."""
    weight_decay: float = 0.01
    """Decoupled weight decay on matrices, not on norms/biases (--weight-decay)."""
    adam_beta1: float = 0.9
    """Adam beta1 (--adam-beta1)."""
    adam_beta2: float = 0.95
    """Adam beta2 (--adam-beta2)."""
    adam_eps: float = 1e-8
    """Adam epsilon (--adam-eps)."""
    clip_grad: float = 1.0
    """Global gradient-norm clipping; 0 disables (--clip-grad)."""
    fused: str = "auto"
    """Optimizer fast path: auto | apex | torch-fused | none (--optimizer-impl)."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"--lr/--min-lr: need 0 <= min-lr <= lr and lr > 0, got lr={self.lr}, min-lr={self.min_lr}")
        if self.lr_decay_style not in LR_DECAY_STYLES:
            raise ValueError(f"--lr-decay-style: expected one of {LR_DECAY_STYLES}, got {self.lr_decay_style!r}")
        if self.lr_warmup_iters < 0:
            raise ValueError(f"--lr-warmup-iters must be >= 0, got {self.lr_warmup_iters}")
        if self.clip_grad < 0:
            raise ValueError(f"--clip-grad must be >= 0, got {self.clip_grad}")
        if self.fused not in ("auto", "apex", "torch-fused", "none"):
            raise ValueError(f"--optimizer-impl: expected auto|apex|torch-fused|none, got {self.fused!r}")


@dataclass
class TrainingConfig:
    """Batching, length, parallelism, precision and checkpointing of the run."""

    micro_batch_size: int = 4
    """Samples per rank per forward pass (--micro-batch-size)."""
    global_batch_size: int = 32
    """Samples per optimizer step over all ranks (--global-batch-size)."""
    eval_micro_batch_size: int | None = None
    """Samples per rank per no-grad evaluation pass; None means micro_batch_size (--eval-micro-batch-size)."""
    train_iters: int = 100
    """Optimizer steps of the run, probes included (--train-iters)."""
    seed: int = 1234
    """Seed of everything random: model init, data order, mixer (--seed)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-3 (--zero-stage)."""
    precision: str = "fp32"
    """fp32 | bf16 | fp16 (--bf16 / --fp16)."""
    deepspeed_config: str | None = None
    """A DeepSpeed JSON config merged over the one built from flags; it may not contradict them."""
    tf32: bool = True
    """Let fp32 matmuls use TF32 on GPUs that have it; --no-tf32 turns it off."""
    compile: bool = False
    """torch.compile the model through DeepSpeed's engine.compile() (--compile)."""
    save: str | None = None
    """Checkpoint directory, also the run directory for metrics (--save)."""
    load: str | None = None
    """Resume from this checkpoint directory when it holds one (--load)."""
    save_interval: int | None = None
    """Steps between checkpoints; the end of training always saves (--save-interval)."""
    eval_interval: int | None = None
    """Extra validation every N steps besides the mixer's phase evaluations (--eval-interval)."""
    exit_interval: int | None = None
    """Save and exit after this many steps in this invocation (--exit-interval)."""
    test_samples_per_domain: int | None = None
    """Test-split samples per domain in the final report; default all of one epoch, capped at 4096."""
    skip_test: bool = False
    """Do not run the final test report (--skip-test)."""
    ckpt_step: int | None = None
    """Resume from the checkpoint of this iteration instead of ``latest`` (--ckpt-step)."""
    exit_signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")
    """Signals that make every rank finish its step, save and exit 0 (--exit-signals)."""
    load_hf: str | None = None
    """Initialise a fresh run's model from this Llama-architecture HF checkpoint directory (--load-hf)."""
    max_domain_epochs: float | None = None
    """Error before a step that would draw a domain's training split more than this many times."""

    def __post_init__(self) -> None:
        for flag, v in (("--micro-batch-size", self.micro_batch_size), ("--global-batch-size", self.global_batch_size),
                        ("--train-iters", self.train_iters)):
            if v < 1:
                raise ValueError(f"{flag} must be >= 1, got {v}")
        if self.eval_micro_batch_size is not None and self.eval_micro_batch_size < 1:
            raise ValueError(f"--eval-micro-batch-size must be >= 1, got {self.eval_micro_batch_size}")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"--global-batch-size {self.global_batch_size} is not a multiple of "
                             f"--micro-batch-size {self.micro_batch_size}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"--zero-stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32|bf16|fp16, got {self.precision!r}")
        for flag, v in (("--save-interval", self.save_interval), ("--eval-interval", self.eval_interval),
                        ("--exit-interval", self.exit_interval)):
            if v is not None and v < 1:
                raise ValueError(f"{flag} must be >= 1, got {v}")
        if self.ckpt_step is not None and self.ckpt_step < 0:
            raise ValueError(f"--ckpt-step must be >= 0, got {self.ckpt_step}")
        if self.ckpt_step is not None and not self.load:
            raise ValueError("--ckpt-step needs --load (the directory that holds the checkpoint)")
        if self.deepspeed_config and not os.path.isfile(self.deepspeed_config):
            raise ValueError(f"--deepspeed_config: no such file {self.deepspeed_config}")
        if self.load_hf and not os.path.isfile(os.path.join(self.load_hf, "config.json")):
            raise ValueError(f"--load-hf {self.load_hf}: not a Hugging Face model directory (no config.json)")
        if self.max_domain_epochs is not None and not self.max_domain_epochs > 0:
            raise ValueError(f"--max-domain-epochs must be > 0, got {self.max_domain_epochs}")

    @property
    def eval_batch(self) -> int:
        """Samples per rank per evaluation pass (--eval-micro-batch-size, else --micro-batch-size)."""
        return self.eval_micro_batch_size or self.micro_batch_size

    def gradient_accumulation_steps(self, dp_size: int) -> int:
        """global / (micro x data-parallel size); raises when it does not divide."""
        per_step = self.micro_batch_size * dp_size
        if self.global_batch_size % per_step:
            raise ValueError(f"--global-batch-size {self.global_batch_size} is not divisible by --micro-batch-size "
                             f"{self.micro_batch_size} x data-parallel size {dp_size}")
        return self.global_batch_size // per_step


@dataclass
class LoggingConfig:
    """Console, metrics.jsonl, TensorBoard and Weights & Biases output."""

    log_interval: int = 10
    """Steps between progress lines and 'train' metrics events (--log-interval)."""
    tensorboard_dir: str | None = None
    """Write TensorBoard scalars here (--tensorboard-dir)."""
    peak_tflops: float | None = None
    """Peak TFLOP/s of one device for MFU; default from a table of known GPUs, none on CPU (--peak-tflops)."""
    wandb_project: str | None = None
    """Log the same scalars to this Weights & Biases project, from rank 0 (--wandb-project)."""
    wandb_exp_name: str | None = None
    """The W&B run's name (--wandb-exp-name)."""
    wandb_save_dir: str | None = None
    """Directory under which W&B writes its wandb/ folder; default --save (--wandb-save-dir)."""

    def __post_init__(self) -> None:
        if self.log_interval < 1:
            raise ValueError(f"--log-interval must be >= 1, got {self.log_interval}")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise ValueError(f"--peak-tflops must be > 0, got {self.peak_tflops}")
        if (self.wandb_exp_name or self.wandb_save_dir) and not self.wandb_project:
            raise ValueError("--wandb-exp-name / --wandb-save-dir need --wandb-project")
        if self.wandb_project:
            from megamix.training.wandb_writer import require_wandb

            require_wandb()


@dataclass
class RunConfig:
    """All component configs of one run (for the entry point and the checkpoint record)."""

    model: GPTConfig
    data: DataConfig
    optimizer: OptimizerConfig
    training: TrainingConfig
    mixing: MixingConfig
    logging: LoggingConfig
    tokenizer: TokenizerConfig

    def to_dict(self) -> dict:
        """JSON-able form, written to config.json and every checkpoint."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """Inverse of ``to_dict``; ValueError naming the section and key of a field this megamix does not know."""
        return config_from_dict(cls, d, "", {
            "model": GPTConfig, "data": _data_config, "optimizer": OptimizerConfig, "training": TrainingConfig,
            "mixing": MixingConfig.from_dict, "logging": LoggingConfig, "tokenizer": TokenizerConfig})


def _data_config(d: dict) -> DataConfig:
    """DataConfig from its dict form, the domains rebuilt as DomainSpecs."""
    def specs(items: list) -> list[DomainSpec]:
        return [config_from_dict(DomainSpec, s, "data.data_path") for s in items]

    return config_from_dict(DataConfig, d, "data", {"data_path": specs})
