#!/usr/bin/env bash
# Checks a `lushan explain` HTML report in headless Chromium (`--headless --no-sandbox --disable-gpu`):
#   1. the file refers to nothing outside itself (no http://, https:// or protocol-relative src/href/url());
#   2. Chromium opens it from file://, takes a 1280x2000 screenshot, and logs the page's console to stderr
#      (`--enable-logging=stderr --v=0`);
#   3. the page wrote nothing to the console. Chromium logs every console message as `INFO:CONSOLE`, whatever
#      its level, so levels cannot be told apart there; the report has no script, so any message at all
#      (an uncaught exception, console.error, a Content-Security-Policy violation from a resource outside the
#      file, a failed load) is a fault;
#   4. the screenshot is a PNG of exactly 1280x2000 (read from its IHDR chunk) and not a blank page.
#
# Usage: tests/browser/check_report.sh REPORT.html [SCREENSHOT.png]
#   SCREENSHOT.png  where the screenshot goes (default: report-screenshot.png in a new temporary folder);
#                   Chromium's stderr is kept beside it as chromium.log.
# Environment: CHROMIUM (the browser; default: chromium, chromium-browser or google-chrome on PATH),
#   REPORT_TIMEOUT_S (limit for the browser run, default 60).
# Exit status: 0 when every check passes, 1 with a "check_report: FAIL: ..." line on stderr otherwise.
set -euo pipefail

WIDTH=1280
HEIGHT=2000

fail() {
  echo "check_report: FAIL: $*" >&2
  exit 1
}

[ $# -ge 1 ] && [ $# -le 2 ] || fail "usage: $0 REPORT.html [SCREENSHOT.png]"
report=$1
[ -f "$report" ] || fail "$report does not exist or is not a file"
[ -r "$report" ] || fail "$report is not readable"
report_abs=$(cd "$(dirname "$report")" && pwd)/$(basename "$report")
shot=${2:-$(mktemp -d /tmp/check-report.XXXXXX)/report-screenshot.png}
mkdir -p "$(dirname "$shot")"
shot_abs=$(cd "$(dirname "$shot")" && pwd)/$(basename "$shot")
log=$(dirname "$shot_abs")/chromium.log
command -v python3 > /dev/null || fail "python3 is needed to check the report and the screenshot"

# shellcheck source=tests/browser/find_browser.sh
source "$(dirname "$0")/find_browser.sh"

# 1. Self-contained: no reference to a resource elsewhere (token text in the page is escaped, so a URL typed
#    in the prompt shows up as text, not inside an attribute).
python3 - "$report_abs" << 'EOF' || exit 1
import re, sys
path = sys.argv[1]
html = open(path, encoding="utf-8", errors="replace").read()
if "<html" not in html.lower():
    print(f"check_report: FAIL: {path} does not look like an HTML page", file=sys.stderr)
    sys.exit(1)
external = re.compile(r"""(?:\b(?:src|href|srcset|action|poster)\s*=\s*["']?|url\(\s*["']?|@import\s+["']?)\s*(?:https?:|//)""", re.I)
hits = [m.group(0) for m in external.finditer(html)]
if hits:
    print(f"check_report: FAIL: {path} refers to resources outside the file: {hits[:5]}", file=sys.stderr)
    sys.exit(1)
EOF

# 2. Open it and take the screenshot, in a throw-away profile so that runs never share state.
profile=$(mktemp -d /tmp/check-report-profile.XXXXXX)
trap 'rm -rf "$profile"' EXIT
rm -f "$shot_abs"
status=0
timeout "${REPORT_TIMEOUT_S:-60}" "$browser" --headless --no-sandbox --disable-gpu --no-first-run \
  --no-default-browser-check --disable-extensions --disable-background-networking --hide-scrollbars \
  --user-data-dir="$profile" --enable-logging=stderr --v=0 \
  --screenshot="$shot_abs" --window-size="$WIDTH,$HEIGHT" "file://$report_abs" > "$log" 2>&1 || status=$?
[ "$status" -ne 124 ] || fail "Chromium did not finish within ${REPORT_TIMEOUT_S:-60} s (log: $log)"
[ "$status" -eq 0 ] || fail "Chromium exited with status $status (log: $log)"

# 3. The console must be silent.
if grep -q ':CONSOLE' "$log"; then
  echo "check_report: the page wrote to the browser console:" >&2
  grep ':CONSOLE' "$log" | sed 's/^\[[^]]*\] */  /' >&2
  if grep ':CONSOLE' "$log" | grep -q 'Uncaught'; then
    fail "an uncaught exception was raised (log: $log)"
  fi
  fail "the report must produce no console messages (errors, blocked or failed resources) (log: $log)"
fi

# 4. The screenshot: a PNG of the window size, with something on it.
python3 - "$shot_abs" "$WIDTH" "$HEIGHT" << 'EOF' || exit 1
import os, struct, sys
path, want_w, want_h = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def fail(msg):
    print(f"check_report: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)
if not os.path.isfile(path):
    fail(f"Chromium wrote no screenshot at {path}")
data = open(path, "rb").read(33)
if len(data) < 33 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
    fail(f"{path} is not a PNG")
w, h = struct.unpack(">II", data[16:24])
if (w, h) != (want_w, want_h):
    fail(f"the screenshot {path} is {w}x{h}, not {want_w}x{want_h}")
size = os.path.getsize(path)
# A blank page compresses to a few kilobytes; a report with tables and heat maps takes far more.
if size < 20000:
    fail(f"the screenshot {path} is only {size} bytes: the page looks blank")
print(f"check_report: screenshot {path}: {w}x{h} PNG, {size} bytes")
EOF
echo "check_report: ok ($report: no console messages, no external resources)"
