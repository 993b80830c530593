#!/usr/bin/env bash
# Pretrain a GPT on several domains with online data mixing, launched by `deepspeed`
# (or by `torchrun`: LAUNCHER=torchrun, as examples/pretrain_gpt_mix.slurm does on each node).
#
# Environment variables (all optional; defaults train a tiny model on the fixture data
# that tools/make_fixture_data.py writes to data/tiny):
#   DATA_PATH      --data-path value: "PREFIX1 PREFIX2 ..." or "W1 PREFIX1 W2 PREFIX2 ..."
#                  (a prefix may be NAME=PREFIX)          default: the data/tiny fixture domains
#   TOKENIZER      "NullTokenizer:VOCAB", a SentencePiece .model path, or a HF tokenizer.json
#                  (or its directory)                                    default: NullTokenizer:512
#   RUN_DIR        checkpoints, metrics.jsonl, test_results.json          default: runs/tiny-aioli
#   METHOD         --mixing-method (aioli, stratified, natural, static, skillit, doremi, doge)
#                                                                        default: aioli
#   NUM_GPUS       processes per node (CPU processes when there is no GPU)   default: 2
#   NUM_NODES / HOSTFILE   passed to the deepspeed launcher when set
#   LAUNCHER       deepspeed | torchrun                                    default: deepspeed
#   NODE_RANK / MASTER_ADDR  this node's rank and node 0's address (torchrun, several nodes)
#   MODEL_ARGS     model flags            default: 2 layers, width 64, 4 heads, seq 128
#   TRAIN_ARGS     batch/length/lr flags  default: micro 4, global 16, 200 iters, lr 3e-3
#   ZERO_STAGE     DeepSpeed ZeRO stage 0-3                                default: 1
#   MASTER_PORT    rendezvous port                                         default: 29517
#   EXTRA_ARGS     anything else, appended last (e.g. "--aioli-lp-steps 4")
# Re-running the same command resumes from RUN_DIR (it is both --save and --load).
# With no GPU the run uses DeepSpeed's CPU accelerator: gloo, fp32, and OMP_NUM_THREADS
# (unless set) = cores / NUM_GPUS.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate

if ! python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    export DS_ACCELERATOR=cpu
fi

if [ -z "${DATA_PATH:-}" ]; then
    [ -f data/tiny/code_text_document.idx ] || python tools/make_fixture_data.py --out data/tiny
    DATA_PATH="data/tiny/code_text_document data/tiny/prose_text_document data/tiny/math_text_document"
fi
TOKENIZER=${TOKENIZER:-NullTokenizer:512}
if [[ "$TOKENIZER" == NullTokenizer:* ]]; then
    TOKENIZER_ARGS="--tokenizer-type NullTokenizer --vocab-size ${TOKENIZER#NullTokenizer:}"
elif [[ -d "$TOKENIZER" || "$TOKENIZER" == *.json ]]; then
    TOKENIZER_ARGS="--tokenizer-type HuggingFaceTokenizer --tokenizer-model $TOKENIZER"
else
    TOKENIZER_ARGS="--tokenizer-type SentencePieceTokenizer --tokenizer-model $TOKENIZER"
fi
RUN_DIR=${RUN_DIR:-runs/tiny-aioli}
METHOD=${METHOD:-aioli}
NUM_GPUS=${NUM_GPUS:-2}
if [ "${DS_ACCELERATOR:-}" = cpu ] && [ -z "${OMP_NUM_THREADS:-}" ]; then
    # CPU processes share the node's cores: the deepspeed launcher leaves each one all of them,
    # and oversubscribed OpenMP threads made a demo step 5-10x slower than under torchrun
    OMP_NUM_THREADS=$(( $(nproc) / NUM_GPUS ))
    export OMP_NUM_THREADS=$(( OMP_NUM_THREADS > 0 ? OMP_NUM_THREADS : 1 ))
fi
ZERO_STAGE=${ZERO_STAGE:-1}
MODEL_ARGS=${MODEL_ARGS:-"--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 128"}
TRAIN_ARGS=${TRAIN_ARGS:-"--micro-batch-size 4 --global-batch-size 16 --train-iters 200 --lr 3e-3 \
--min-lr 3e-4 --lr-warmup-iters 10 --mixing-update-interval 50 --aioli-lp-steps 2 --aioli-lp-rounds 1 \
--eval-samples-per-domain 16 --save-interval 25 --log-interval 10"}

case "${LAUNCHER:-deepspeed}" in
    deepspeed)
        LAUNCH=(deepspeed --num_gpus "$NUM_GPUS" --master_port "${MASTER_PORT:-29517}")
        [ -n "${NUM_NODES:-}" ] && LAUNCH+=(--num_nodes "$NUM_NODES")
        [ -n "${HOSTFILE:-}" ] && LAUNCH+=(--hostfile "$HOSTFILE") ;;
    torchrun)
        LAUNCH=(torchrun --nnodes "${NUM_NODES:-1}" --node-rank "${NODE_RANK:-0}" --nproc-per-node "$NUM_GPUS"
                --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29517}") ;;
    *)
        echo "pretrain_gpt_mix.sh: LAUNCHER must be deepspeed or torchrun, got '$LAUNCHER'" >&2; exit 2 ;;
esac

# shellcheck disable=SC2086
exec "${LAUNCH[@]}" pretrain_gpt_mix.py \
    $MODEL_ARGS $TRAIN_ARGS $TOKENIZER_ARGS \
    --data-path $DATA_PATH --split 90,5,5 \
    --mixing-method "$METHOD" --zero-stage "$ZERO_STAGE" \
    --save "$RUN_DIR" --load "$RUN_DIR" \
    ${EXTRA_ARGS:-}
