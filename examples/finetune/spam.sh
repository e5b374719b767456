#!/usr/bin/env bash
# Spam detection (English e-mail, labels spam / ham) from scratch, pre-trained + fully fine-tuned, and
# pre-trained + LoRA:  examples/finetune/spam.sh DATA_DIR OUT_DIR
# DATA_DIR holds train.jsonl and val.jsonl of {"text": …, "label": …} records.
source "$(dirname "$0")/lib.sh"

# A byte-level BPE of 4 096 tokens learnt from the training texts (a second).
stage tokenizer tokenizer train --vocab-size 4096 "$DATA/train.jsonl" --out "$OUT/tokenizer"
TOKENIZER="$OUT/tokenizer"
# nanoGPT's CPU shape with a 256-token context: an e-mail's subject and first lines.
MODEL=(--n-layer 4 --n-head 4 --n-embd 128 --block-size 256 --dropout 0.1)
COMMON=(--batch-size 16 --eval-iters 8 --sample-tokens 0 --warmup-iters 50)
SCRATCH=("${COMMON[@]}" --max-iters 900 --eval-interval 50 --learning-rate 1e-3 --min-lr 1e-4)
PRETRAIN=("${COMMON[@]}" --max-iters 500 --eval-interval 100 --learning-rate 1e-3 --min-lr 1e-4)
FULL=("${COMMON[@]}" --block-size 256 --dropout 0.1 --max-iters 500 --eval-interval 50 --learning-rate 3e-4 --min-lr 3e-5)
LORA=("${COMMON[@]}" --block-size 256 --max-iters 400 --eval-interval 100 --learning-rate 3e-3 --min-lr 3e-4 --weight-decay 0 \
  --lora-rank 8 --lora-alpha 16 --lora-dropout 0.05 --lora-targets all-linear)
source "$(dirname "$0")/classify_recipe.sh"
