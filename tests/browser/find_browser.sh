# Sourced by the browser checks: sets `browser` to $CHROMIUM or the first Chromium on PATH, or calls the
# caller's `fail`.
browser=${CHROMIUM:-}
if [ -z "$browser" ]; then
  for candidate in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$candidate" > /dev/null; then
      browser=$(command -v "$candidate")
      break
    fi
  done
fi
[ -n "$browser" ] || fail "no Chromium found: install it (apt-get install chromium) or set CHROMIUM"
