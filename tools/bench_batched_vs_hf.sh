#!/usr/bin/env bash
# Batched decoding of GPT-2 124M (random init, greedy, 16-token prompts, 64 new tokens, 2 threads), lushan
# (`bench generate --batch B`, the kernel path `lushan serve` uses for concurrent requests) against
# transformers decoding the same batch with its KV cache (tools/hf_batched_generate.py), one after the other.
# Usage: tools/bench_batched_vs_hf.sh [VENV_PYTHON]  (default ./venv/bin/python or ../venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-}
for candidate in venv/bin/python ../venv/bin/python; do
  [ -z "$py" ] && [ -x "$candidate" ] && py=$candidate
done
[ -n "$py" ] || { echo "no Python with torch + transformers: pass its path" >&2; exit 1; }
cargo build --release -q
for b in 4 16; do
  target/release/lushan bench generate --batch "$b" --prompt-tokens 16 --new-tokens 64 --repeats 3 | grep -E "^decode|^batched"
done
"$py" tools/hf_batched_generate.py --batches 1,4,16 --prompt 16 --new 64 --repeats 3 | grep -v '^JSON'
