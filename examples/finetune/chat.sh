#!/usr/bin/env bash
# A question-answering assistant (English and Chinese conversations) taught with the chat template:
#   examples/finetune/chat.sh DATA_DIR OUT_DIR
# DATA_DIR holds train.jsonl and val.jsonl of {"messages": [{"role", "content"}, …]} records. The model is
# pre-trained on the conversations' text, then fine-tuned with the loss on the assistant replies only
# (`--task sft`); the script ends by asking it the training and validation questions, greedily, through the
# same template `lushan serve` and `lushan chat` use.
source "$(dirname "$0")/lib.sh"

stage tokenizer tokenizer train --vocab-size 2048 "$DATA/train.jsonl" --out "$OUT/tokenizer"
COMMON=(--batch-size 16 --block-size 128 --sample-tokens 0 --warmup-iters 50 --eval-iters 8)
stage pretrain train --task lm --data "$DATA/train.jsonl" --tokenizer "$OUT/tokenizer" --out-dir "$OUT/pretrained" \
  --n-layer 4 --n-head 4 --n-embd 192 "${COMMON[@]}" --max-iters 600 --eval-interval 200 \
  --learning-rate 1e-3 --min-lr 1e-4
# Answers are facts to be recalled word for word: many epochs, no dropout, and the best checkpoint by the
# training loss's own validation split is not the goal — keep the last (always_save_checkpoint).
stage sft train --task sft --data "$DATA/train.jsonl" --val-data "$DATA/val.jsonl" --init-from "$OUT/pretrained" \
  --out-dir "$OUT/final" "${COMMON[@]}" --max-iters 2500 --eval-interval 500 --learning-rate 1e-3 --min-lr 1e-4 \
  --weight-decay 0 --always-save-checkpoint true
stage eval-train eval --model "$OUT/final" --data "$DATA/train.jsonl" --generate --max-new-tokens 64
stage eval-val eval --model "$OUT/final" --data "$DATA/val.jsonl" --generate --max-new-tokens 64
summary
echo
echo "training questions: $(grep -o 'exact match [0-9.]* %' "$OUT/eval-train.log")," \
  "validation questions: $(grep -o 'exact match [0-9.]* %, chrF [0-9.]*' "$OUT/eval-val.log")"
echo "talk to it: lushan chat --model $OUT/final    (or lushan serve --model $OUT/final)"
