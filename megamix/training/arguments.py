"""Megatron-style command-line flags for pretrain_gpt_mix.py, parsed into a RunConfig."""

from __future__ import annotations

import argparse
import os
import sys

from megamix.data.config import DataConfig, parse_data_path, parse_split
from megamix.data.tokenizer import TOKENIZER_TYPES, TokenizerConfig
from megamix.model.gpt import GPTConfig
from megamix.training.config import LoggingConfig, OptimizerConfig, RunConfig, TrainingConfig
from megamix.training.mixing_args import add_mixing_args, import_plugin_flags, mixing_config_from_args
from megamix.training.preemption import parse_exit_signals


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that refuses abbreviations (a typo must not silently match a flag)."""

    def __init__(self, **kw) -> None:
        super().__init__(allow_abbrev=False, **kw)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--num-layers", type=int, required=True)
    g.add_argument("--hidden-size", type=int, required=True)
    g.add_argument("--num-attention-heads", type=int, required=True)
    g.add_argument("--ffn-hidden-size", type=int, default=None)
    g.add_argument("--seq-length", type=int, required=True)
    g.add_argument("--max-position-embeddings", type=int, default=None)
    g.add_argument("--position-embedding-type", choices=["rope", "learned_absolute"], default="rope")
    g.add_argument("--swiglu", dest="activation", action="store_const", const="swiglu", default="swiglu")
    g.add_argument("--gelu", dest="activation", action="store_const", const="gelu")
    g.add_argument("--normalization", choices=["RMSNorm", "LayerNorm"], default="RMSNorm")
    g.add_argument("--norm-epsilon", type=float, default=1e-5)
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true")
    g.add_argument("--init-method-std", type=float, default=0.02)
    g.add_argument("--rotary-base", type=int, default=10000)
    g.add_argument("--hidden-dropout", type=float, default=0.0)
    g.add_argument("--attention-dropout", type=float, default=0.0)
    g.add_argument("--add-bias-linear", action="store_true")
    g.add_argument("--fused-kernels", choices=["auto", "apex", "none"], default="auto")
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    g.add_argument("--recompute-activations", action="store_true",
                   help="recompute the attention core in backward (= --recompute-granularity selective)")
    g.add_argument("--recompute-granularity", choices=["full", "selective"], default=None)
    g.add_argument("--recompute-method", choices=["uniform", "block"], default=None)
    g.add_argument("--recompute-num-layers", type=int, default=None)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-path", nargs="+", required=True,
                   help="PREFIX ... or W1 PREFIX1 W2 PREFIX2 ...; a prefix may be NAME=PREFIX")
    g.add_argument("--split", default="98,1,1")
    g.add_argument("--split-seed", type=int, default=None,
                   help="seed of the train/valid/test document split alone (default --seed)")
    g.add_argument("--data-cache-path", default=None)
    g.add_argument("--eval-samples-per-domain", type=int, default=64)
    g.add_argument("--dataloader-prefetch", type=int, default=2,
                   help="optimizer steps of batches read ahead in a background thread (0: read in the step)")
    g.add_argument("--test-samples-per-domain", type=int, default=None)
    g.add_argument("--tokenizer-type", default="SentencePieceTokenizer", choices=list(TOKENIZER_TYPES))
    g.add_argument("--tokenizer-model", default=None,
                   help="SentencePiece .model, or tokenizer.json / its directory (HuggingFaceTokenizer)")
    g.add_argument("--vocab-size", type=int, default=None, help="NullTokenizer vocabulary size")
    g.add_argument("--vocab-file", default=None, help="GPT-2 BPE vocab.json (GPT2BPETokenizer)")
    g.add_argument("--merge-file", default=None, help="GPT-2 BPE merges.txt (GPT2BPETokenizer)")
    g.add_argument("--max-domain-epochs", type=float, default=None,
                   help="error before a step that would draw a domain's training data more than X times")


def _add_training_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, required=True)
    g.add_argument("--eval-micro-batch-size", type=int, default=None,
                   help="samples per rank per no-grad evaluation pass (default --micro-batch-size)")
    g.add_argument("--global-batch-size", type=int, required=True)
    g.add_argument("--train-iters", type=int, required=True)
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--lr", type=float, required=True)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--lr-warmup-iters", type=int, default=0)
    g.add_argument("--lr-decay-style", default="cosine", choices=["cosine", "linear", "constant"])
    g.add_argument("--lr-decay-iters", type=int, default=None)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.95)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--optimizer-impl", choices=["auto", "apex", "torch-fused", "none"], default="auto")
    g.add_argument("--zero-stage", type=int, default=0)
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--fp16", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (off by default)")
    g.add_argument("--no-tf32", dest="tf32", action="store_false",
                   help="keep fp32 matmuls in full fp32 on GPUs with TF32 (default: TF32 on)")
    g.add_argument("--deepspeed", action="store_true", help="accepted for Megatron-DeepSpeed compatibility")
    g.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config", default=None)
    g.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=None,
                   help="set by the deepspeed launcher")
    g.add_argument("--save", default=None)
    g.add_argument("--load", default=None)
    g.add_argument("--save-interval", type=int, default=None)
    g.add_argument("--eval-interval", type=int, default=None)
    g.add_argument("--exit-interval", type=int, default=None)
    g.add_argument("--ckpt-step", type=int, default=None,
                   help="resume from iter_<N> in --load instead of the checkpoint 'latest' names")
    g.add_argument("--exit-signals", default="SIGTERM,SIGUSR1",
                   help="signals that make every rank finish its step, save a checkpoint and exit 0; 'none' to off")
    g.add_argument("--exit-signal-handler", action="store_true",
                   help="accepted for Megatron compatibility: the handler is on unless --exit-signals none")
    g.add_argument("--skip-test", action="store_true")
    g.add_argument("--log-interval", type=int, default=10)
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--peak-tflops", type=float, default=None,
                   help="peak TFLOP/s of one device for MFU (default: a table of known GPUs; none on CPU)")
    g.add_argument("--wandb-project", default=None, help="log to Weights & Biases in this project (rank 0)")
    g.add_argument("--wandb-exp-name", default=None, help="the W&B run name")
    g.add_argument("--wandb-save-dir", default=None, help="W&B writes its wandb/ folder here (default: --save)")
    g.add_argument("--load-hf", default=None,
                   help="initialise the model from a Llama-architecture Hugging Face checkpoint directory")


def build_parser() -> argparse.ArgumentParser:
    """The full flag set of pretrain_gpt_mix.py."""
    p = _Parser(description="Pretrain a GPT with online data mixing (DeepSpeed).")
    _add_model_args(p)
    _add_data_args(p)
    _add_training_args(p)
    add_mixing_args(p)
    return p


def _precision(args: argparse.Namespace) -> str:
    if args.bf16 and args.fp16:
        raise ValueError("--bf16 and --fp16 contradict each other: choose one")
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


def _model_config(args: argparse.Namespace, vocab_size: int) -> GPTConfig:
    div = args.make_vocab_size_divisible_by
    padded = ((vocab_size + div - 1) // div) * div
    return GPTConfig(
        vocab_size=padded, num_layers=args.num_layers, hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads, ffn_hidden_size=args.ffn_hidden_size,
        seq_length=args.max_position_embeddings or args.seq_length,
        position_embedding_type=args.position_embedding_type, activation=args.activation,
        normalization=args.normalization, norm_epsilon=args.norm_epsilon,
        untie_embeddings_and_output_weights=args.untie_embeddings_and_output_weights,
        init_method_std=args.init_method_std, rotary_base=args.rotary_base,
        hidden_dropout=args.hidden_dropout, attention_dropout=args.attention_dropout,
        add_bias_linear=args.add_bias_linear, fused_kernels=args.fused_kernels,
        recompute_granularity=_recompute_granularity(args), recompute_method=args.recompute_method,
        recompute_num_layers=args.recompute_num_layers,
    )


def _recompute_granularity(args: argparse.Namespace) -> str | None:
    if args.recompute_activations and args.recompute_granularity not in (None, "selective"):
        raise ValueError(f"--recompute-activations means --recompute-granularity selective; it contradicts "
                         f"--recompute-granularity {args.recompute_granularity}")
    return "selective" if args.recompute_activations else args.recompute_granularity


def _check_args(args: argparse.Namespace) -> None:
    if args.max_position_embeddings is not None and args.max_position_embeddings < args.seq_length:
        raise ValueError(f"--max-position-embeddings {args.max_position_embeddings} < --seq-length {args.seq_length}")


def config_from_args(args: argparse.Namespace, tokenizer: TokenizerConfig) -> RunConfig:
    """Turn parsed flags into the component configs (the model's vocabulary comes from the tokenizer)."""
    vocab_size = tokenizer.build().vocab_size
    specs = parse_data_path(args.data_path)
    weights = [s.weight for s in specs] if specs[0].weight is not None else None
    data = DataConfig(data_path=specs, split=parse_split(args.split), seq_length=args.seq_length,
                      seed=args.seed, split_seed=args.split_seed, data_cache_path=args.data_cache_path,
                      eval_samples_per_domain=args.eval_samples_per_domain,
                      dataloader_prefetch=args.dataloader_prefetch)
    optimizer = OptimizerConfig(
        lr=args.lr, min_lr=args.min_lr, lr_warmup_iters=args.lr_warmup_iters,
        lr_decay_style=args.lr_decay_style, lr_decay_iters=args.lr_decay_iters,
        weight_decay=args.weight_decay, adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2,
        adam_eps=args.adam_eps, clip_grad=args.clip_grad, fused=args.optimizer_impl)
    training = TrainingConfig(
        micro_batch_size=args.micro_batch_size, global_batch_size=args.global_batch_size,
        train_iters=args.train_iters, seed=args.seed, zero_stage=args.zero_stage,
        eval_micro_batch_size=args.eval_micro_batch_size,
        precision=_precision(args), deepspeed_config=args.deepspeed_config, tf32=args.tf32,
        compile=args.compile, save=args.save,
        load=args.load, save_interval=args.save_interval, eval_interval=args.eval_interval,
        exit_interval=args.exit_interval, test_samples_per_domain=args.test_samples_per_domain,
        skip_test=args.skip_test, ckpt_step=args.ckpt_step, exit_signals=parse_exit_signals(args.exit_signals),
        load_hf=args.load_hf, max_domain_epochs=args.max_domain_epochs)
    return RunConfig(
        model=_model_config(args, vocab_size), data=data, optimizer=optimizer, training=training,
        mixing=mixing_config_from_args(args, weights, [s.name for s in specs]),
        logging=LoggingConfig(log_interval=args.log_interval, tensorboard_dir=args.tensorboard_dir,
                              peak_tflops=args.peak_tflops, wandb_project=args.wandb_project,
                              wandb_exp_name=args.wandb_exp_name, wandb_save_dir=args.wandb_save_dir),
        tokenizer=tokenizer,
    )


def tokenizer_config_from_args(args: argparse.Namespace) -> TokenizerConfig:
    """The TokenizerConfig of the --tokenizer-* / --vocab-* / --merge-file flags."""
    return TokenizerConfig(args.tokenizer_type, args.tokenizer_model, args.vocab_size, args.vocab_file,
                           args.merge_file)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags; unknown or inconsistent flags exit with a clear message before anything starts."""
    try:
        import_plugin_flags(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        argparse.ArgumentParser(prog=os.path.basename(sys.argv[0])).error(str(e))
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_args(args)
        tokenizer_config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    return args
