#!/usr/bin/env bash
# The main job (`make demo`): on the built-in 7-domain corpus, train a GPT with Aioli's
# online mixing and a stratified run of the same length, each with 2 processes under the
# deepspeed launcher, then print their per-domain test perplexity side by side and plot
# Aioli's proportions. Everything is cached: re-running skips finished steps and resumes
# an interrupted run.
#
# The two runs are seed 1 of the all-7 rows of the paper-profile benchmark
# (benchmarks/mixing_quality.py --profile paper, docs/results.md): the same model, data,
# split and recipe, and Aioli in the configuration that measured best there on all 7
# domains: the probe-free gradient estimator (--aioli-estimator gradient) with the EG step
# following the average perplexity (--aioli-objective perplexity). At the default
# length they reproduce the benchmark's seed-1 numbers; the README quotes its verdict.
#
# Environment variables (optional):
#   DEMO_DIR     where the runs go                         default: runs/demo
#   DEMO_ITERS   training steps of each run (>= 40)        default: 1000
#   NUM_GPUS     processes per run                         default: 2
#   ZERO_STAGE   DeepSpeed ZeRO stage 0-2                  default: 0 (the benchmark's)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
DEMO_DIR=${DEMO_DIR:-runs/demo}
DEMO_ITERS=${DEMO_ITERS:-1000}
DATA_DIR=data/corpus
START=$(date +%s)
if [ "$DEMO_ITERS" -lt 40 ]; then echo "DEMO_ITERS=$DEMO_ITERS: need >= 40 (20 rounds of >= 2 steps)" >&2; exit 2; fi

echo "== [1/4] data: corpus, tokenizer, tokenized domains ($DATA_DIR)"
DATA_DIR=$DATA_DIR bash examples/prepare_data.sh

DOMAINS=(code legal techdocs literature math reference multilingual)
DATA_PATH=""
for d in "${DOMAINS[@]}"; do DATA_PATH+="$DATA_DIR/${d}_text_document "; done
ROUND=$((DEMO_ITERS / 20))
export DATA_PATH TOKENIZER="$DATA_DIR/tokenizer.model" ZERO_STAGE=${ZERO_STAGE:-0}
export MODEL_ARGS="--num-layers 2 --hidden-size 128 --num-attention-heads 4 --seq-length 128"
# the paper profile: batch 16 x 128 tokens, 10 % warm-up, cosine to 0.2x, T = 20 rounds,
# split fixed by --split-seed, 64 validation and 512 test samples per domain
export TRAIN_ARGS="--micro-batch-size 8 --global-batch-size 16 --train-iters $DEMO_ITERS --lr 2e-3 --min-lr 4e-4 \
--lr-warmup-iters $((DEMO_ITERS / 10)) --seed 1 --split-seed 1 --mixing-update-interval $ROUND \
--eval-samples-per-domain 64 --eval-micro-batch-size 64 --test-samples-per-domain 512 --log-interval 10 \
--save-interval 100 --data-cache-path $DATA_DIR/cache"
SPLIT="--split 98,1,1"  # after pretrain_gpt_mix.sh's own --split, so this one holds
# two gradient estimates a round (25 at the default length, the benchmark's); at most a round
AIOLI_ARGS="$SPLIT --aioli-estimator gradient --aioli-grad-interval $((ROUND / 2)) --aioli-objective perplexity --aioli-eta 1 \
--aioli-update cumulative --aioli-prior-steps $ROUND"

# finished runs are reused, so they must be runs of this recipe (an older demo's are not)
RECIPE="$MODEL_ARGS $TRAIN_ARGS $AIOLI_ARGS ZERO_STAGE=$ZERO_STAGE NUM_GPUS=${NUM_GPUS:-2}"
mkdir -p "$DEMO_DIR"
if [ -f "$DEMO_DIR/recipe.txt" ] && [ "$(cat "$DEMO_DIR/recipe.txt")" != "$RECIPE" ] \
    || { [ ! -f "$DEMO_DIR/recipe.txt" ] && [ -n "$(ls -A "$DEMO_DIR")" ]; }; then
    echo "$DEMO_DIR holds runs of another demo recipe; delete it or set DEMO_DIR to a new directory" >&2
    exit 2
fi
echo "$RECIPE" > "$DEMO_DIR/recipe.txt"

echo "== [2/4] Aioli: $DEMO_ITERS steps on ${#DOMAINS[@]} domains (progress below)"
if [ ! -f "$DEMO_DIR/aioli/test_results.json" ]; then
    # megamix's K >= 4 recipe (cumulative update, eta 1, one round on the uniform prior first)
    # with A estimated from per-domain gradients every 25 steps instead of probe phases, and
    # each domain's row weighted by its validation perplexity (the benchmark's metric)
    RUN_DIR="$DEMO_DIR/aioli" METHOD=aioli EXTRA_ARGS="$AIOLI_ARGS" MASTER_PORT=29531 bash examples/pretrain_gpt_mix.sh 2>&1 | grep --line-buffered -v "^\[\|^W1\|Warning\|return func"
fi

echo "== [3/4] stratified: $DEMO_ITERS steps, same model, seed and data"
if [ ! -f "$DEMO_DIR/stratified/test_results.json" ]; then
    RUN_DIR="$DEMO_DIR/stratified" METHOD=stratified EXTRA_ARGS="$SPLIT" MASTER_PORT=29532 bash examples/pretrain_gpt_mix.sh 2>&1 \
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
