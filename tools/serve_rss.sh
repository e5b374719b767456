#!/usr/bin/env bash
# Peak resident memory (VmHWM) of `lushan serve` per weight type: starts the server on MODEL with --dtype T,
# waits for /health, sends REQUESTS concurrent completions of 64 tokens, reads VmHWM from /proc, stops it.
# Prints each type's peak and its ratio to f32's.
#
# Usage: tools/serve_rss.sh MODEL_DIR [TYPES]     (default TYPES="f32 bf16 q8_0 q4_0"; REQUESTS=4, PORT=18181)
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1
types=${2:-f32 bf16 q8_0 q4_0}
requests=${REQUESTS:-4}
port=${PORT:-18181}
[ -x target/release/lushan ] || cargo build --release -q
declare -A peak
for t in $types; do
  target/release/lushan serve --model "$model" --dtype "$t" --port "$port" > /tmp/lushan-serve-rss.log 2>&1 &
  pid=$!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/health" > /dev/null && break; sleep 0.2; done
  for i in $(seq "$requests"); do
    curl -sf "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
      -d "{\"prompt\": \"The meaning of life is $i\", \"max_tokens\": 64, \"temperature\": 0}" > /dev/null &
  done
  wait $(jobs -p | grep -v "^$pid$") 2> /dev/null || true
  peak[$t]=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2> /dev/null || true
  printf '%-5s peak RSS %7.1f MiB\n' "$t" "$(echo "${peak[$t]} / 1024" | bc -l)"
done
if [ -n "${peak[f32]:-}" ]; then
  for t in $types; do
    printf '%-5s / f32 = %.1f %%\n' "$t" "$(echo "100 * ${peak[$t]} / ${peak[f32]}" | bc -l)"
  done
fi
