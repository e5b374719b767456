#!/usr/bin/env bash
# Side-by-side generation speed against llama.cpp on the same GPT-2 124M (random weights) and machine, per weight
# type: `llama-bench -p 64 -n 128 -t THREADS` on the GGUF file and `lushan bench generate --preset gpt2 --dtype T`,
# alternated round by round so both see the same machine state. Prints every round, then medians and ratios
# (lushan / llama.cpp) for prefill (pp64) and decode (tg128), and lushan's share of its bandwidth bound.
#
# Usage: tools/llama_side_by_side.sh [rounds]      (default 3; TYPES="f32 f16 q8_0 q4_0", THREADS=2)
# Needs: llama.cpp built with cmake (LLAMA_DIR, default ../llama.cpp: `cmake -B build -DGGML_NATIVE=ON
# -DLLAMA_CURL=OFF && cmake --build build -j --target llama-bench llama-quantize`), a venv with torch +
# transformers + llama.cpp's gguf-py requirements (see tools/README.md). Files go to WORK (default out/llama-side);
# PREPARE_ONLY=1 makes them and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
types=${TYPES:-f32 f16 q8_0 q4_0}
threads=${THREADS:-2}
llama=${LLAMA_DIR:-../llama.cpp}
work=${WORK:-out/llama-side}
# shellcheck source=tools/bench_lib.sh
source tools/bench_lib.sh
[ -x "$llama/build/bin/llama-bench" ] || { echo "no llama-bench under $llama/build/bin: build llama.cpp first" >&2; exit 1; }

mkdir -p "$work"
[ -f "$work/hf/model.safetensors" ] || "$py" tools/make_random_gpt2.py "$work/hf" > /dev/null
for t in $types; do
  gguf="$work/gpt2-$t.gguf"
  [ -f "$gguf" ] && continue
  case $t in
    f32|f16|q8_0) "$py" tools/convert_gpt2_gguf.py "$llama" "$work/hf" --outtype "$t" --outfile "$gguf" > "$work/convert-$t.log" 2>&1 ;;
    q4_0) [ -f "$work/gpt2-f32.gguf" ] || "$py" tools/convert_gpt2_gguf.py "$llama" "$work/hf" --outtype f32 --outfile "$work/gpt2-f32.gguf" > "$work/convert-f32.log" 2>&1
          "$llama/build/bin/llama-quantize" "$work/gpt2-f32.gguf" "$gguf" Q4_0 > "$work/quantize-q4_0.log" 2>&1 ;;
    *) echo "unknown type $t" >&2; exit 1 ;;
  esac
done
[ -n "${PREPARE_ONLY:-}" ] && { echo "files ready in $work"; exit 0; }

# lushan's figures from its JSON line: decode tok/s, prefill tok/s, % of bandwidth bound, peak RSS MiB.
lushan_fields() {
  grep '^JSON ' | sed 's/^JSON //' | "$py" -c '
import json, sys
d = json.load(sys.stdin)
print(d["decode_tokens_per_second"], d["prefill_tokens_per_second"], d["bandwidth_bound_percent"], d["peak_rss_mib"])'
}
# llama-bench's JSON: the pp and tg averages.
llama_fields() {
  "$py" -c '
import json, sys
rows = json.load(sys.stdin)
pp = [r["avg_ts"] for r in rows if r["n_prompt"] > 0][0]
tg = [r["avg_ts"] for r in rows if r["n_gen"] > 0][0]
print(tg, pp)'
}

summary=()
for t in $types; do
  lushan_type=$t
  [ "$t" = f16 ] && lushan_type=${F16_AS:-f16}
  ld=() lp=() lb=() ls=() hd=() hp=()
  echo "== $t: llama.cpp $work/gpt2-$t.gguf vs lushan --dtype $lushan_type, $threads threads, $rounds rounds"
  for i in $(seq "$rounds"); do
    read -r d p b s < <(RAYON_NUM_THREADS=$threads $bin bench generate --preset gpt2 --dtype "$lushan_type" \
      --prompt-tokens 64 --new-tokens 128 --repeats 3 | lushan_fields)
    read -r hd_ hp_ < <("$llama/build/bin/llama-bench" -m "$work/gpt2-$t.gguf" -p 64 -n 128 -t "$threads" -r 3 -o json 2> /dev/null | llama_fields)
    printf '  round %d: lushan decode %.1f tok/s (%.0f%% of its bandwidth bound), prefill %.0f tok/s | llama.cpp tg128 %.1f, pp64 %.0f\n' \
      "$i" "$d" "$b" "$p" "$hd_" "$hp_"
    ld+=("$d") lp+=("$p") lb+=("$b") ls+=("$s") hd+=("$hd_") hp+=("$hp_")
  done
  md=$(printf '%s\n' "${ld[@]}" | median) mp=$(printf '%s\n' "${lp[@]}" | median) mb=$(printf '%s\n' "${lb[@]}" | median)
  hmd=$(printf '%s\n' "${hd[@]}" | median) hmp=$(printf '%s\n' "${hp[@]}" | median)
  ms=$(printf '%s\n' "${ls[@]}" | median)
  summary+=("$(printf '%-5s | lushan decode %6.1f tok/s (%3.0f%% of bound), prefill %6.0f | llama.cpp tg %6.1f, pp %6.0f | decode %.2f×, prefill %.2f× | lushan peak RSS %.0f MiB' \
    "$t" "$md" "$mb" "$mp" "$hmd" "$hmp" "$(echo "$md / $hmd" | bc -l)" "$(echo "$mp / $hmp" | bc -l)" "$ms")")
done
echo "== medians (lushan / llama.cpp)"
printf '%s\n' "${summary[@]}"
