#!/usr/bin/env bash
# Runs lushan's fuzz targets with libFuzzer (cargo-fuzz, nightly toolchain, AddressSanitizer) and prints,
# per target, the executions, coverage and outcome:
#   fuzz/run.sh [--runs N] [--seconds S] [TARGET…]   (default: every target, 60 s each; with both, whichever
#                                                    comes first)
# The seed corpora in fuzz/corpus/TARGET are read; what a run discovers goes to $LUSHAN_FUZZ_CORPUS/TARGET
# (default target/fuzz-corpus, outside the committed seeds). A crash leaves its input in
# fuzz/artifacts/TARGET and makes this script exit 1; turn it into a regression test.
set -euo pipefail
cd "$(dirname "$0")"
limit=()
targets=()
while [ $# -gt 0 ]; do
  case $1 in
    --runs) limit+=(-runs="$2"); shift 2 ;;
    --seconds) limit+=(-max_total_time="$2"); shift 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#limit[@]} -gt 0 ] || limit=(-max_total_time=60)
[ ${#targets[@]} -gt 0 ] || targets=(safetensors config_json shard_header tokenizer_files train_toml http_bodies gguf)
command -v cargo-fuzz > /dev/null || cargo install cargo-fuzz --locked
cargo +nightly fuzz build -O > /dev/null
grown=${LUSHAN_FUZZ_CORPUS:-target/fuzz-corpus}
status=0
printf '%-16s %12s %8s %8s %10s  %s\n' target executions cov features seconds outcome
for t in "${targets[@]}"; do
  mkdir -p "$grown/$t"
  log="target/fuzz-$t.log"
  start=$(date +%s)
  if cargo +nightly fuzz run -O "$t" "$grown/$t" "corpus/$t" -- "${limit[@]}" -rss_limit_mb=2048 -timeout=10 \
    -max_len=65536 -print_final_stats=1 > "$log" 2>&1; then
    outcome=ok
  else
    outcome="FAILED (log: fuzz/$log)"
    tail -n 40 "$log" >&2
    status=1
  fi
  seconds=$(( $(date +%s) - start ))
  runs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -ao '[0-9]*$' || echo '?')
  cov=$(grep -ao 'cov: [0-9]*' "$log" | tail -1 | grep -ao '[0-9]*' || echo '?')
  ft=$(grep -ao 'ft: [0-9]*' "$log" | tail -1 | grep -ao '[0-9]*' || echo '?')
  printf '%-16s %12s %8s %8s %10s  %s\n' "$t" "$runs" "$cov" "$ft" "$seconds" "$outcome"
done
exit $status
