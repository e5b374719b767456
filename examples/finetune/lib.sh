# Shared by the fine-tuning recipes (sourced, not run): finds lushan (or builds it), checks the data
# directory, and runs each stage with its log, wall and CPU time, and best validation figures.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 DATA_DIR OUT_DIR   (DATA_DIR holds train.jsonl and val.jsonl)" >&2
  exit 2
fi
DATA=$1
OUT=$2
for f in train.jsonl val.jsonl; do
  [ -f "$DATA/$f" ] || { echo "$0: $DATA/$f does not exist" >&2; exit 2; }
done
mkdir -p "$OUT"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ -z "${LUSHAN:-}" ]; then
  if [ -x "$ROOT/target/release/lushan" ] || [ -f "$ROOT/Cargo.toml" ]; then
    (cd "$ROOT" && cargo build --release --quiet)
    LUSHAN="$ROOT/target/release/lushan"
  else
    LUSHAN=lushan
  fi
fi

SUMMARY=()
TIMEFORMAT='%R %U %S'

# stage NAME ARGS…: runs `lushan ARGS…` into $OUT/NAME.log and records the figures its last lines report.
stage() {
  local name=$1
  shift
  local log="$OUT/$name.log"
  echo "== $name: lushan $*"
  local times
  if ! times=$( { time "$LUSHAN" "$@" > "$log" 2>&1; } 2>&1 ); then
    tail -n 30 "$log"
    echo "$0: stage $name failed (log: $log)" >&2
    exit 1
  fi
  read -r wall user sys <<< "$times"
  local cpu
  cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.0f", u + s }')
  wall=$(awk -v w="$wall" 'BEGIN { printf "%.0f", w }')
  local best
  best=$(grep -o 'best validation loss [^;]*' "$log" | tail -n 1 || true)
  echo "   ${wall} s wall, ${cpu} s CPU${best:+; $best}"
  SUMMARY+=("$(printf '%-30s %6s s wall %6s s CPU   %s' "$name" "$wall" "$cpu" "$best")")
}

summary() {
  echo
  echo "== summary ($OUT)"
  printf '%s\n' "${SUMMARY[@]}"
}
