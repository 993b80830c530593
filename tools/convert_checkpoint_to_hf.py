"""Convert a megamix checkpoint (any ZeRO stage) to a Hugging Face ``LlamaForCausalLM`` directory.

Writes config.json, model.safetensors (fp32) and the run's tokenizer (AutoTokenizer loads it),
plus megamix_source.json naming the checkpoint. Learned positions, GELU and LayerNorm models
have no faithful Llama counterpart and are refused.

Example:
    python tools/convert_checkpoint_to_hf.py runs/tiny-aioli --out runs/tiny-aioli-hf
    python -c "from transformers import AutoModelForCausalLM as M; print(M.from_pretrained('runs/tiny-aioli-hf'))"
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # consolidation runs on the CPU, never needs a GPU


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="the run's --save directory (holds 'latest' and iter_NNNNNNN/)")
    p.add_argument("--iteration", type=int, default=None, help="checkpoint to convert (default: the latest)")
    p.add_argument("--out", required=True, help="output directory (replaced when it exists)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Convert; returns the exit status."""
    args = parse_args(argv)
    from megamix.interop.export import export_hf
    from megamix.interop.hf import HFMappingError

    try:
        export_hf(args.run_dir, args.out, args.iteration, log=lambda m: print(m, file=sys.stderr))
    except (HFMappingError, FileNotFoundError, ValueError) as exc:
        print(f"convert_checkpoint_to_hf.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
