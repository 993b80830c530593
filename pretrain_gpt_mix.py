"""Pretrain a GPT with online data mixing. Launch with `deepspeed` (see examples/pretrain_gpt_mix.sh)."""

import os
import sys

def _default_accelerator() -> None:
    """DeepSpeed's CPU accelerator (gloo, fp32) when there is no GPU."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main(argv: list[str] | None = None) -> int:
    """Parse flags, build the run, train it, report; return the exit code."""
    from megamix.training.arguments import config_from_args, parse_args, tokenizer_config_from_args
    from megamix.training.distributed import init_distributed, shutdown_distributed
    from megamix.training.run import Run

    _default_accelerator()
    args = parse_args(argv)
    try:
        tok_cfg = tokenizer_config_from_args(args)
        cfg = config_from_args(args, tok_cfg)
        dist_info = init_distributed()
        run = Run(cfg, dist_info)
    except (ValueError, FileNotFoundError) as e:
        print(f"pretrain_gpt_mix.py: error: {e}", file=sys.stderr)
        return 2
    from megamix.training.repetition import RepetitionLimitError

    try:
        run.train()
    except RepetitionLimitError as e:  # raised on every rank at the same phase, before its first step
        if dist_info.is_main:
            print(f"pretrain_gpt_mix.py: error: {e}", file=sys.stderr)
        run.metrics.close()
        shutdown_distributed()
        return 2
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
