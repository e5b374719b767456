#!/usr/bin/env bash
# Sentiment of Chinese reviews (labels pos / neg) from scratch, pre-trained + fully fine-tuned, and
# pre-trained + LoRA:  examples/finetune/sentiment-zh.sh DATA_DIR OUT_DIR
# DATA_DIR holds train.jsonl and val.jsonl of {"text": …, "label": …} records.
source "$(dirname "$0")/lib.sh"

# A byte-level BPE of 8 192 tokens learnt from the training reviews: common characters and words become one
# token, rare characters stay as their UTF-8 bytes (so no review is ever out of vocabulary).
stage tokenizer tokenizer train --vocab-size 8192 "$DATA/train.jsonl" --out "$OUT/tokenizer"
TOKENIZER="$OUT/tokenizer"
MODEL=(--n-layer 4 --n-head 4 --n-embd 128 --block-size 128 --dropout 0.1)
COMMON=(--batch-size 32 --eval-interval 100 --eval-iters 8 --sample-tokens 0 --warmup-iters 50)
SCRATCH=("${COMMON[@]}" --max-iters 500 --learning-rate 1e-3 --min-lr 1e-4)
PRETRAIN=("${COMMON[@]}" --max-iters 600 --learning-rate 1e-3 --min-lr 1e-4)
FULL=("${COMMON[@]}" --block-size 128 --dropout 0.1 --max-iters 400 --learning-rate 3e-4 --min-lr 3e-5)
LORA=("${COMMON[@]}" --block-size 128 --max-iters 400 --learning-rate 3e-3 --min-lr 3e-4 --weight-decay 0 \
  --lora-rank 8 --lora-alpha 16 --lora-dropout 0.05 --lora-targets all-linear)
source "$(dirname "$0")/classify_recipe.sh"
