#!/usr/bin/env bash
# Side-by-side training throughput: `lushan bench train` and the PyTorch reference script
# (../shared/bench/gpt_train_torch.py), alternated in one run so both see the same machine state.
# Usage: tools/bench_train_vs_torch.sh [rounds]   (needs a venv with torch: see tools/README.md)
# BABY=1 adds baby-GPT (B64 T256), LONG=1 GPT-2 124M at B1 T1024 with and without --checkpoint-activations,
# GPT2=1 GPT-2 124M at B4 T64, BF16=1 the bf16 runs of every case (see run_case).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
torch_script=${TORCH_SCRIPT:-../shared/bench/gpt_train_torch.py}
# shellcheck source=tools/bench_lib.sh
source tools/bench_lib.sh

json_field() { sed 's/^JSON //' | "$py" -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }

# Both sides report their own peak RSS: lushan its VmHWM, the PyTorch script its ru_maxrss (the process's
# high-water mark, including the interpreter and torch's libraries).
# With BF16=1 each round also runs `lushan bench train --precision bf16` and PyTorch under
# torch.autocast(bfloat16) (tools/torch_train_autocast.py), and the line adds lushan bf16 / lushan f32 and
# lushan bf16 / PyTorch autocast.
lushan_run() { $bin bench train $1 | grep '^JSON '; }
torch_run() { "$py" "$1" $2 --max_iters "$3" --eval_interval 0 --final_eval 0 --quiet 1 | grep '^JSON '; }

run_case() {
  local name=$1 lushan_args=$2 torch_args=$3 torch_iters=$4
  local l=() t=() lr=() tr=() lb=() ta=() out
  for _ in $(seq "$rounds"); do
    out=$(lushan_run "$lushan_args")
    l+=("$(json_field tokens_per_second <<<"$out")")
    lr+=("$(json_field peak_rss_mib <<<"$out")")
    out=$(torch_run "$torch_script" "$torch_args" "$torch_iters")
    t+=("$(json_field tokens_per_s <<<"$out")")
    tr+=("$(json_field peak_rss_MiB <<<"$out")")
    if [ "${BF16:-0}" = 1 ]; then
      out=$(lushan_run "$lushan_args --precision bf16")
      lb+=("$(json_field tokens_per_second <<<"$out")")
      out=$(TORCH_SCRIPT=$torch_script torch_run tools/torch_train_autocast.py "$torch_args" "$torch_iters")
      ta+=("$(json_field tokens_per_s <<<"$out")")
    fi
  done
  local lm tm lrm trm
  lm=$(printf '%s\n' "${l[@]}" | median)
  tm=$(printf '%s\n' "${t[@]}" | median)
  lrm=$(printf '%s\n' "${lr[@]}" | median)
  trm=$(printf '%s\n' "${tr[@]}" | median)
  printf '%-34s lushan %10.0f tok/s %7.0f MiB   PyTorch %10.0f tok/s %7.0f MiB   ratio %.2fx, memory %.2f\n' \
    "$name" "$lm" "$lrm" "$tm" "$trm" "$(echo "$lm / $tm" | bc -l)" "$(echo "$lrm / $trm" | bc -l)"
  if [ "${BF16:-0}" = 1 ]; then
    local lbm tam
    lbm=$(printf '%s\n' "${lb[@]}" | median)
    tam=$(printf '%s\n' "${ta[@]}" | median)
    printf '%-34s lushan bf16 %10.0f tok/s   PyTorch autocast bf16 %10.0f tok/s   bf16/f32 %.2fx, vs autocast %.2fx\n' \
      "  (bf16 products)" "$lbm" "$tam" "$(echo "$lbm / $lm" | bc -l)" "$(echo "$lbm / $tam" | bc -l)"
  fi
}

run_case "shakespeare-char (L4 C128 B12 T64)" "--steps 60 --warmup 5" "--bias 1" 60
if [ "${BABY:-0}" = 1 ]; then
  run_case "baby-gpt (L6 C384 B64 T256)" "--preset baby-gpt --steps 3 --warmup 1" \
    "--bias 1 --n_layer 6 --n_head 6 --n_embd 384 --block_size 256 --batch_size 64" 4
fi
if [ "${LONG:-0}" = 1 ]; then
  gpt2_torch="--tokenizer gpt2 --bias 1 --n_layer 12 --n_head 12 --n_embd 768 --block_size 1024 --batch_size 1"
  run_case "GPT-2 124M (B1 T1024)" "--preset gpt2 --batch-size 1 --block-size 1024 --steps 3 --warmup 1" \
    "$gpt2_torch" 4
  run_case "GPT-2 124M (B1 T1024), checkpointed" \
    "--preset gpt2 --batch-size 1 --block-size 1024 --steps 3 --warmup 1 --checkpoint-activations" "$gpt2_torch" 4
fi
if [ "${GPT2:-0}" = 1 ]; then
  run_case "GPT-2 124M (B4 T64)" "--preset gpt2 --batch-size 4 --block-size 64 --steps 6 --warmup 1" \
    "--tokenizer gpt2 --bias 1 --n_layer 12 --n_head 12 --n_embd 768 --block_size 64 --batch_size 4" 8
fi
