#!/usr/bin/env bash
# Side-by-side batch-1 generation speed (greedy, KV cache, random weights): `lushan bench generate` and the
# transformers reference script (../shared/bench/hf_generate_bench.py), alternated in one run so both see the
# same machine state. Prints each round, then medians and lushan/transformers ratios.
# Usage: tools/bench_generate_vs_hf.sh [rounds]   (default 3; SMALL=1 adds the small shapes;
#        PROMPT / NEW / REPEATS change the prompt length, new tokens and timed runs per process)
# Needs a venv with torch + transformers: see tools/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
prompt=${PROMPT:-64}
new=${NEW:-128}
repeats=${REPEATS:-5}
hf_script=${HF_SCRIPT:-../shared/bench/hf_generate_bench.py}
# shellcheck source=tools/bench_lib.sh
source tools/bench_lib.sh

# json_fields KEY... : the values at these (dotted) keys of the `JSON {...}` line on stdin, space-separated.
json_fields() {
  grep '^JSON ' | sed 's/^JSON //' | "$py" -c '
import json, sys
d = json.load(sys.stdin)
def get(k):
    v = d
    for p in k.split("."):
        v = v[p]
    return v
print(" ".join(str(get(k)) for k in sys.argv[1:]))' "$@"
}

run_case() {
  local name=$1 lushan_args=$2 hf_config=$3
  local ld=() lp=() lr=() hd=() hp=() hr=() l h
  echo "== $name: prompt $prompt, $new new tokens, $repeats timed runs per process, $rounds rounds"
  for i in $(seq "$rounds"); do
    # decode tok/s = (new - 1) / time of the single-token steps; prefill tok/s; peak RSS (MiB)
    l=$($bin bench generate $lushan_args --prompt-tokens "$prompt" --new-tokens "$new" --repeats "$repeats" |
      json_fields decode_tokens_per_second_overall prefill_tokens_per_second peak_rss_mib bandwidth_bound_percent)
    h=$("$py" "$hf_script" --config "$hf_config" --prompt "$prompt" --new "$new" --repeats "$repeats" |
      json_fields decode_tok_per_s.median prefill_tok_per_s.median peak_rss_MiB)
    read -r a b c d <<<"$l"
    ld+=("$a") lp+=("$b") lr+=("$c")
    printf 'round %d  lushan: decode %6.1f tok/s  prefill %6.0f tok/s  peak %5.0f MiB  (%3.0f%% of the bandwidth bound)\n' \
      "$i" "$a" "$b" "$c" "$d"
    read -r a b c <<<"$h"
    hd+=("$a") hp+=("$b") hr+=("$c")
    printf 'round %d  transformers: decode %6.1f tok/s  prefill %6.0f tok/s  peak %5.0f MiB\n' "$i" "$a" "$b" "$c"
  done
  local m
  for m in decode prefill; do
    local lv hv
    if [ $m = decode ]; then
      lv=$(printf '%s\n' "${ld[@]}" | median) hv=$(printf '%s\n' "${hd[@]}" | median)
    else
      lv=$(printf '%s\n' "${lp[@]}" | median) hv=$(printf '%s\n' "${hp[@]}" | median)
    fi
    printf '%-8s median  lushan %8.1f tok/s   transformers %8.1f tok/s   ratio %.2fx\n' "$m" "$lv" "$hv" \
      "$(echo "$lv / $hv" | bc -l)"
  done
  printf 'peak RSS median  lushan %.0f MiB   transformers %.0f MiB\n' "$(printf '%s\n' "${lr[@]}" | median)" \
    "$(printf '%s\n' "${hr[@]}" | median)"
}

run_case "GPT-2 124M (L12 H12 C768 V50257)" "--preset gpt2" gpt2
if [ "${SMALL:-0}" = 1 ]; then
  run_case "small (L4 H4 C128 V50257 T1024)" "--preset shakespeare-char --vocab-size 50257 --block-size 1024" small
  run_case "small-char (L4 H4 C128 V65 T256)" "--preset shakespeare-char --block-size 256" small-char
fi
