#!/usr/bin/env bash
# English → Spanish translation (King James / Reina-Valera verses) as prompt → completion fine-tuning:
#   examples/finetune/translate-en-es.sh DATA_DIR OUT_DIR
# DATA_DIR holds train.jsonl and val.jsonl of {"prompt": "English: …\nSpanish:", "completion": " …"} records.
# The model is pre-trained on the verse pairs' text, then fine-tuned with the loss on the Spanish side only,
# and scored on the validation verses by chrF and exact match (greedy).
source "$(dirname "$0")/lib.sh"

stage tokenizer tokenizer train --vocab-size 8192 "$DATA/train.jsonl" --out "$OUT/tokenizer"
COMMON=(--batch-size 16 --block-size 256 --sample-tokens 0 --warmup-iters 50 --eval-iters 8 --eval-interval 250)
stage pretrain train --task lm --data "$DATA/train.jsonl" --tokenizer "$OUT/tokenizer" --out-dir "$OUT/pretrained" \
  --n-layer 4 --n-head 4 --n-embd 192 "${COMMON[@]}" --max-iters 600 --learning-rate 1e-3 --min-lr 1e-4
stage sft train --task sft --data "$DATA/train.jsonl" --val-data "$DATA/val.jsonl" --init-from "$OUT/pretrained" \
  --out-dir "$OUT/final" "${COMMON[@]}" --max-iters 600 --learning-rate 5e-4 --min-lr 5e-5
stage eval-val eval --model "$OUT/final" --data "$DATA/val.jsonl" --generate --limit 200 --max-new-tokens 96
summary
echo
echo "validation (first 200 verses): $(grep -o 'exact match [0-9.]* %, chrF [0-9.]*' "$OUT/eval-val.log")"
