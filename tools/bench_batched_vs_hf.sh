#!/usr/bin/env bash
# Batched decoding of GPT-2 124M (random init, greedy, 16-token prompts, 64 new tokens, 2 threads): lushan
# (`bench generate --batch B`, the kernel path `lushan serve` uses for concurrent requests) against
# transformers decoding the same batch with its KV cache (tools/hf_batched_generate.py), one after the other.
# Prints both and the lushan/transformers ratio per batch size.
# Usage: tools/bench_batched_vs_hf.sh   (needs a venv with torch + transformers: see tools/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/bench_lib.sh
source tools/bench_lib.sh

declare -A lushan
for b in 1 4 16; do
  out=$("$bin" bench generate --batch "$b" --prompt-tokens 16 --new-tokens 64 --repeats 3)
  echo "$out" | grep -E "^decode|^batched"
  field=$([ "$b" = 1 ] && echo decode_tokens_per_second || echo batched_tokens_per_second)
  lushan[$b]=$(echo "$out" | grep '^JSON ' | sed 's/^JSON //' | "$py" -c "import json,sys; print(json.load(sys.stdin)['$field'])")
done
hf=$("$py" tools/hf_batched_generate.py --batches 1,4,16 --prompt 16 --new 64 --repeats 3)
echo "$hf" | grep -v '^JSON'
for b in 1 4 16; do
  t=$(echo "$hf" | grep '^JSON ' | sed 's/^JSON //' |
    "$py" -c "import json,sys; print(next(r['tokens_per_second'] for r in json.load(sys.stdin)['results'] if r['batch'] == $b))")
  printf 'batch %2s  lushan %7.1f tokens/s   transformers %7.1f tokens/s   ratio %.2fx\n' "$b" "${lushan[$b]}" "$t" \
    "$(echo "${lushan[$b]} $t" | awk '{print $1 / $2}')"
done
