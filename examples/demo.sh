#!/usr/bin/env bash
# The main job (`make demo`): on the built-in 7-domain corpus, train a GPT with Aioli's
# online mixing and a stratified run of the same length, each with 2 processes under the
# deepspeed launcher, then print their per-domain test perplexity side by side and plot
# Aioli's proportions. Everything is cached: re-running skips finished steps and resumes
# an interrupted run.
#
# Environment variables (optional):
#   DEMO_DIR     where the runs go                         default: runs/demo
#   DEMO_ITERS   training steps of each run                default: 300
#   NUM_GPUS     processes per run                         default: 2
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
DEMO_DIR=${DEMO_DIR:-runs/demo}
DEMO_ITERS=${DEMO_ITERS:-300}
DATA_DIR=data/corpus
START=$(date +%s)

echo "== [1/4] data: corpus, tokenizer, tokenized domains ($DATA_DIR)"
DATA_DIR=$DATA_DIR bash examples/prepare_data.sh

DOMAINS=(code legal techdocs literature math reference multilingual)
DATA_PATH=""
for d in "${DOMAINS[@]}"; do DATA_PATH+="$DATA_DIR/${d}_text_document "; done
export DATA_PATH TOKENIZER="$DATA_DIR/tokenizer.model" ZERO_STAGE=${ZERO_STAGE:-1}
export MODEL_ARGS="--num-layers 4 --hidden-size 128 --num-attention-heads 4 --seq-length 128"
export TRAIN_ARGS="--micro-batch-size 8 --global-batch-size 32 --train-iters $DEMO_ITERS --lr 2e-3 --min-lr 2e-4 \
--lr-warmup-iters 10 --seed 1234 --mixing-update-interval 60 --eval-samples-per-domain 16 \
--test-samples-per-domain 128 --split 98,1,1 --log-interval 10 --save-interval 50 \
--data-cache-path $DATA_DIR/cache"

echo "== [2/4] Aioli: $DEMO_ITERS steps on ${#DOMAINS[@]} domains (progress below)"
if [ ! -f "$DEMO_DIR/aioli/test_results.json" ]; then
    # CPU-scale probes: one sweep of short (s=2), mild (f=0.5) probes per round, after one
    # round of warm-up; benchmarks/aioli_ablation.py shows the paper's s and f cost ~8x more here.
    RUN_DIR="$DEMO_DIR/aioli" METHOD=aioli \
        EXTRA_ARGS="--aioli-lp-rounds 1 --aioli-lp-steps 2 --aioli-one-hot-factor 0.5 --aioli-prior-steps 60" \
        MASTER_PORT=29531 bash examples/pretrain_gpt_mix.sh 2>&1 | grep --line-buffered -v "^\[\|^W1\|Warning\|return func"
fi

echo "== [3/4] stratified: $DEMO_ITERS steps, same model, seed and data"
if [ ! -f "$DEMO_DIR/stratified/test_results.json" ]; then
    RUN_DIR="$DEMO_DIR/stratified" METHOD=stratified MASTER_PORT=29532 bash examples/pretrain_gpt_mix.sh 2>&1 \
        | grep --line-buffered -v "^\[\|^W1\|Warning\|return func"
fi

echo "== [4/4] results"
python tools/compare_runs.py "$DEMO_DIR/stratified" "$DEMO_DIR/aioli" --names stratified,aioli
python tools/plot_mixture.py "$DEMO_DIR/aioli" "$DEMO_DIR/stratified" --out "$DEMO_DIR/mixture.png"
cat <<EOT

Done in $(( $(date +%s) - START )) s. Where everything is:
  corpus (jsonl, licences)        corpus/   (corpus/LICENSES.md)
  tokenizer and tokenized domains $DATA_DIR/
  Aioli run                       $DEMO_DIR/aioli/      metrics.jsonl (aioli_round records), test_results.json
  stratified run                  $DEMO_DIR/stratified/
  proportions and loss plot       $DEMO_DIR/mixture.png
EOT
