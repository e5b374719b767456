#!/usr/bin/env bash
# Side-by-side fine-tuning step throughput: `lushan bench finetune` and the transformers + peft reference
# script (../shared/bench/hf_finetune_bench.py), alternated in one run so both see the same machine state
# (odd rounds run lushan first, even rounds the script first). Both get the same flags, random weights and
# random ids; a step is forward + backward + clip + AdamW. Prints each round, then medians and the
# lushan/transformers ratios of tokens/s and of peak RSS, and a Markdown table of the medians.
#
# Cases: (a) classify, L6 H6 C384 T256 B16 (the script's default); (b) masked SFT at the same shape;
# (c) LoRA r=8 on c_attn, classify and SFT, at GPT-2 124M shapes (L12 H12 C768) with T128 B4.
#
# Usage: tools/bench_finetune_vs_hf.sh [rounds]   (default 2)
#   STEPS / WARMUP: timed / untimed steps per process (default 5 / 1); FORWARD_RUNS: lushan's forward-only
#   passes for the forward/backward split (default 2); THREADS: threads of both (default 2:
#   the script's default; lushan gets RAYON_NUM_THREADS); CASES: a subset of "classify sft lora-classify
#   lora-sft"; LUSHAN: the lushan binary to run (default target/release/lushan, built).
#   Needs a venv with torch + transformers + peft: see tools/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
steps=${STEPS:-5}
warmup=${WARMUP:-1}
threads=${THREADS:-2}
forward_runs=${FORWARD_RUNS:-2}
cases=${CASES:-classify sft lora-classify lora-sft}
hf_script=${HF_SCRIPT:-../shared/bench/hf_finetune_bench.py}
# shellcheck source=tools/bench_lib.sh
source tools/bench_lib.sh
bin=${LUSHAN:-$bin} # a copy of the binary, so that a rebuild during the run cannot swap it

# json_fields KEY... : the values at these keys of the `JSON {...}` line on stdin, space-separated.
json_fields() {
  grep '^JSON ' | sed 's/^JSON //' | "$py" -c '
import json, sys
d = json.load(sys.stdin)
print(" ".join(str(d[k]) for k in sys.argv[1:]))' "$@"
}

# a / b to 2 decimals, truncated (never rounded up)
ratio() { echo "scale=2; $1 / $2" | bc | sed 's/^\./0./'; }
table=()

run_lushan() {
  # ms/step, tokens/s, peak RSS (MiB), trainable parameters, forward ms, forward+backward ms, AdamW ms
  RAYON_NUM_THREADS=$threads $bin bench finetune $1 --steps "$steps" --warmup "$warmup" --forward-runs "$forward_runs" |
    json_fields ms_per_step tokens_per_s peak_rss_mib trainable_params forward_ms forward_backward_ms adamw_ms
}

run_hf() {
  # ms/step, tokens/s, peak RSS (MiB), trainable parameters
  "$py" "$hf_script" $1 --steps "$steps" --warmup "$warmup" --threads "$threads" |
    json_fields ms_per_step tokens_per_s peak_rss_mib trainable_params
}

run_case() {
  local name=$1 flags=$2
  local lt=() lm=() lr=() ht=() hm=() hr=() l h i lp hp
  echo "== $name: $flags, $warmup warm-up + $steps timed steps per process, $threads threads, $rounds rounds"
  for i in $(seq "$rounds"); do
    if [ $((i % 2)) = 1 ]; then
      l=$(run_lushan "$flags")
      h=$(run_hf "$flags")
    else
      h=$(run_hf "$flags")
      l=$(run_lushan "$flags")
    fi
    read -r a b c lp e f g <<<"$l"
    lm+=("$a") lt+=("$b") lr+=("$c")
    printf 'round %d  lushan:       %9.1f ms/step  %8.1f tok/s  peak %6.1f MiB  trainable %s  (forward %.0f ms, forward+backward %.0f ms, AdamW %.0f ms)\n' \
      "$i" "$a" "$b" "$c" "$lp" "$e" "$f" "$g"
    read -r a b c hp <<<"$h"
    hm+=("$a") ht+=("$b") hr+=("$c")
    printf 'round %d  transformers: %9.1f ms/step  %8.1f tok/s  peak %6.1f MiB  trainable %s\n' "$i" "$a" "$b" "$c" "$hp"
  done
  local ltm htm lmm hmm lrm hrm
  ltm=$(printf '%s\n' "${lt[@]}" | median) htm=$(printf '%s\n' "${ht[@]}" | median)
  lmm=$(printf '%s\n' "${lm[@]}" | median) hmm=$(printf '%s\n' "${hm[@]}" | median)
  lrm=$(printf '%s\n' "${lr[@]}" | median) hrm=$(printf '%s\n' "${hr[@]}" | median)
  printf 'median  tokens/s  lushan %8.1f   transformers %8.1f   ratio %sx\n' "$ltm" "$htm" "$(ratio "$ltm" "$htm")"
  printf 'median  peak RSS  lushan %6.1f MiB   transformers %6.1f MiB   ratio %sx\n' "$lrm" "$hrm" \
    "$(ratio "$lrm" "$hrm")"
  [ "$lp" = "$hp" ] || echo "note: trainable parameters differ: lushan $lp, transformers $hp"
  table+=("$(printf '| %s | %.1f | %.1f | **%s×** | %.1f | %.1f | %.1f | %.1f | %s× | %s / %s |' "$name" "$ltm" "$htm" \
    "$(ratio "$ltm" "$htm")" "$lmm" "$hmm" "$lrm" "$hrm" "$(ratio "$lrm" "$hrm")" "$lp" "$hp")")
}

baby="--n_layer 6 --n_head 6 --n_embd 384 --vocab_size 50257 --block_size 256 --batch_size 16"
gpt2="--n_layer 12 --n_head 12 --n_embd 768 --vocab_size 50257 --block_size 128 --batch_size 4"
start=$(date +%s)
for c in $cases; do
  case $c in
    classify) run_case "classify, L6 H6 C384 T256 B16" "--task classify $baby" ;;
    sft) run_case "masked SFT, L6 H6 C384 T256 B16" "--task sft $baby" ;;
    lora-classify) run_case "LoRA r8 c_attn classify, L12 H12 C768 T128 B4" "--task lora --lora-task classify --r 8 $gpt2" ;;
    lora-sft) run_case "LoRA r8 c_attn SFT, L12 H12 C768 T128 B4" "--task lora --lora-task sft --r 8 $gpt2" ;;
    *) echo "unknown case $c (known: classify sft lora-classify lora-sft)" >&2; exit 2 ;;
  esac
done
echo
echo "| case | lushan tokens/s | transformers tokens/s | ratio | lushan ms/step | transformers ms/step | lushan peak RSS MiB | transformers peak RSS MiB | RSS ratio | trainable params (lushan / transformers) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${table[@]}"
echo "$(date -u +%Y-%m-%dT%H:%MZ), $rounds round(s), $(($(date +%s) - start)) s wall"
