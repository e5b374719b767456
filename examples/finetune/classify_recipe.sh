# The classification recipe both `spam.sh` and `sentiment-zh.sh` run (sourced after lib.sh, with TOKENIZER,
# MODEL, PRETRAIN, SCRATCH, FULL and LORA set): the seed's thesis, measured on one data set —
# (a) the model trained from scratch on the labelled texts, (b) pre-trained on the same texts without their
# labels, then fully fine-tuned, (c) the same pre-trained model with LoRA adapters. The best of the three
# (validation accuracy) is left in OUT/final as a plain checkpoint.

stage scratch train --task classify --data "$DATA/train.jsonl" --val-data "$DATA/val.jsonl" \
  --tokenizer "$TOKENIZER" --out-dir "$OUT/scratch" "${MODEL[@]}" "${SCRATCH[@]}"
stage pretrain train --task lm --data "$DATA/train.jsonl" --tokenizer "$TOKENIZER" --out-dir "$OUT/pretrained" \
  "${MODEL[@]}" "${PRETRAIN[@]}"
stage finetune-full train --task classify --data "$DATA/train.jsonl" --val-data "$DATA/val.jsonl" \
  --init-from "$OUT/pretrained" --out-dir "$OUT/full" "${FULL[@]}"
stage finetune-lora train --task classify --data "$DATA/train.jsonl" --val-data "$DATA/val.jsonl" \
  --init-from "$OUT/pretrained" --out-dir "$OUT/lora" "${LORA[@]}"

accuracy() { grep -o 'accuracy [0-9.]* %' "$OUT/$1.log" | tail -n 1 | awk '{ print $2 }'; }
best=scratch
best_dir="$OUT/scratch"
for candidate in finetune-full:full finetune-lora:lora; do
  name=${candidate%%:*}
  if awk -v a="$(accuracy "$name")" -v b="$(accuracy "$best")" 'BEGIN { exit !(a > b) }'; then
    best=$name
    best_dir="$OUT/${candidate##*:}"
  fi
done
rm -rf "$OUT/final"
if [ "$best" = finetune-lora ]; then
  "$LUSHAN" merge --model "$best_dir" --out "$OUT/final" > /dev/null
else
  cp -r "$best_dir" "$OUT/final"
  rm -rf "$OUT/final/resume" "$OUT/final/data"
fi
summary
echo
echo "validation accuracy: scratch $(accuracy scratch) %, pre-trained + full fine-tuning $(accuracy finetune-full) %," \
  "pre-trained + LoRA $(accuracy finetune-lora) %"
echo "best: $best → $OUT/final"
