#!/usr/bin/env bash
# Side-by-side training throughput: `lushan bench train` and the PyTorch reference script
# (../shared/bench/gpt_train_torch.py), alternated in one run so both see the same machine state.
# Usage: tools/bench_train_vs_torch.sh [rounds]   (needs a venv with torch: see tools/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
torch_script=${TORCH_SCRIPT:-../shared/bench/gpt_train_torch.py}
# shellcheck source=tools/bench_lib.sh
source tools/bench_lib.sh

json_field() { grep '^JSON ' | sed 's/^JSON //' | "$py" -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }

run_case() {
  local name=$1 lushan_args=$2 torch_args=$3 torch_iters=$4
  local l=() t=()
  for _ in $(seq "$rounds"); do
    l+=("$($bin bench train $lushan_args | json_field tokens_per_second)")
    t+=("$("$py" "$torch_script" $torch_args --max_iters "$torch_iters" --eval_interval 0 --final_eval 0 --quiet 1 | json_field tokens_per_s)")
  done
  local lm tm
  lm=$(printf '%s\n' "${l[@]}" | median)
  tm=$(printf '%s\n' "${t[@]}" | median)
  printf '%-34s lushan %10.0f tok/s   PyTorch %10.0f tok/s   ratio %.2fx\n' "$name" "$lm" "$tm" "$(echo "$lm / $tm" | bc -l)"
}

run_case "shakespeare-char (L4 C128 B12 T64)" "--steps 60 --warmup 5" "--bias 1" 60
if [ "${BABY:-0}" = 1 ]; then
  run_case "baby-gpt (L6 C384 B64 T256)" "--preset baby-gpt --steps 3 --warmup 1" \
    "--bias 1 --n_layer 6 --n_head 6 --n_embd 384 --block_size 256 --batch_size 64" 4
fi
