#!/usr/bin/env bash
# Build the 7-domain corpus (cached), train a SentencePiece tokenizer on a balanced sample
# of it, and tokenize every domain into Megatron .bin/.idx files. Each step is skipped when
# its output already exists, so re-running is near instant.
#
# Environment variables (optional):
#   CORPUS_DIR      jsonl corpus, one directory per domain        default: corpus
#   DATA_DIR        tokenizer + tokenized domains                 default: data/corpus
#   DOMAINS         comma list                                    default: all 7
#   MB_PER_DOMAIN   text cap per domain for the corpus build      default: 12
#   VOCAB_SIZE      SentencePiece vocabulary                      default: 4096
#   WORKERS         tokenizing processes                          default: 2
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate

CORPUS_DIR=${CORPUS_DIR:-corpus}
DATA_DIR=${DATA_DIR:-data/corpus}
DOMAINS=${DOMAINS:-code,legal,techdocs,literature,math,reference,multilingual}
MB_PER_DOMAIN=${MB_PER_DOMAIN:-12}
VOCAB_SIZE=${VOCAB_SIZE:-4096}
WORKERS=${WORKERS:-2}
mkdir -p "$DATA_DIR"

echo "== corpus: $CORPUS_DIR ($DOMAINS, <= $MB_PER_DOMAIN MB each)"
python tools/build_corpus.py --out "$CORPUS_DIR" --domains "$DOMAINS" --max-mb-per-domain "$MB_PER_DOMAIN" \
    --workers "$WORKERS"

IFS=',' read -r -a DOMAIN_LIST <<< "$DOMAINS"
TOKENIZER="$DATA_DIR/tokenizer"
if [ ! -f "$TOKENIZER.model" ]; then
    echo "== tokenizer: SentencePiece BPE, vocab $VOCAB_SIZE"
    DIRS=(); for d in "${DOMAIN_LIST[@]}"; do DIRS+=("$CORPUS_DIR/$d"); done
    python tools/train_tokenizer.py --input-dirs "${DIRS[@]}" --model-prefix "$TOKENIZER" \
        --vocab-size "$VOCAB_SIZE" --sample-mb-per-domain 2 --threads "$WORKERS"
fi

for d in "${DOMAIN_LIST[@]}"; do
    if [ ! -f "$DATA_DIR/${d}_text_document.idx" ]; then
        echo "== tokenize $d"
        python tools/preprocess_data.py --input "$CORPUS_DIR/$d" --output-prefix "$DATA_DIR/$d" \
            --tokenizer-type SentencePieceTokenizer --tokenizer-model "$TOKENIZER.model" --append-eod \
            --workers "$WORKERS" --log-interval 2000
    fi
done
echo "== data ready in $DATA_DIR (tokenizer $TOKENIZER.model)"
