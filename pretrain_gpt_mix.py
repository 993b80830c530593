"""Pretrain a GPT with online data mixing. Launch with `deepspeed` (see examples/pretrain_gpt_mix.sh)."""

import os
import sys
from typing import NoReturn


def _default_accelerator() -> None:
    """DeepSpeed's CPU accelerator (gloo, fp32) when there is no GPU."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _error_once(err: Exception) -> None:
    """Print an error that every rank raised alike, once (from rank 0)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"pretrain_gpt_mix.py: error: {err}", file=sys.stderr)


def _fail_together(err: Exception, code: int) -> NoReturn:
    """Every rank raised ``err`` alike: say it once, leave the group together, exit with ``code``."""
    from megamix.training.distributed import shutdown_distributed

    _error_once(err)
    shutdown_distributed(wait=True)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, build the run, train it, report; return the exit code."""
    from megamix.training.arguments import config_from_args, parse_args, tokenizer_config_from_args
    from megamix.training.ckpt_verify import CheckpointError
    from megamix.training.distributed import distributed_session
    from megamix.training.repetition import RepetitionLimitError
    from megamix.training.run import Run

    _default_accelerator()
    args = parse_args(argv)
    try:
        tok_cfg = tokenizer_config_from_args(args)
        cfg = config_from_args(args, tok_cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"pretrain_gpt_mix.py: error: {e}", file=sys.stderr)
        return 2
    with distributed_session() as dist_info:  # the group is torn down however this block ends
        try:
            run = Run(cfg, dist_info)
        except CheckpointError as e:  # a damaged checkpoint: every rank checked and agreed
            _fail_together(e, 2)
        except (ValueError, FileNotFoundError) as e:
            print(f"pretrain_gpt_mix.py: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        try:
            run.train()
        except CheckpointError as e:  # a save that failed (full disk, permissions, I/O) on some rank
            _fail_together(e, 1)
        except RepetitionLimitError as e:  # every rank at the same phase, before its first step
            run.metrics.close()
            _fail_together(e, 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
