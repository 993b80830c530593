"""Pretrain a GPT with online data mixing. Launch with `deepspeed` (see examples/pretrain_gpt_mix.sh)."""

import os
import sys

def _default_accelerator() -> None:
    """DeepSpeed's CPU accelerator (gloo, fp32) when there is no GPU."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _error_once(err: Exception) -> None:
    """Print an error that every rank raised alike, once (from rank 0)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"pretrain_gpt_mix.py: error: {err}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, build the run, train it, report; return the exit code."""
    from megamix.data.tokenizer import TokenizerConfig
    from megamix.training.arguments import config_from_args, parse_args
    from megamix.training.ckpt_verify import CheckpointError
    from megamix.training.distributed import init_distributed, shutdown_distributed
    from megamix.training.run import Run

    _default_accelerator()
    args = parse_args(argv)
    try:
        tok_cfg = TokenizerConfig(args.tokenizer_type, args.tokenizer_model, args.vocab_size)
        cfg = config_from_args(args, tok_cfg)
        dist_info = init_distributed()
        run = Run(cfg, dist_info)
    except CheckpointError as e:  # raised on every rank alike, so the group can still be torn down
        _error_once(e)
        shutdown_distributed()
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"pretrain_gpt_mix.py: error: {e}", file=sys.stderr)
        return 2
    try:
        run.train()
    except CheckpointError as e:  # a save that failed (full disk, permissions, I/O): every rank raises it
        _error_once(e)
        shutdown_distributed()
        return 1
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
