#!/usr/bin/env bash
# Exercises the web playground of a running `lushan serve` in headless Chromium (`--headless --no-sandbox
# --disable-gpu`), driven over the DevTools protocol on a pipe (Python's standard library only):
#   1. opens `URL/?prompt=ROMEO:&autorun=1&…`, which makes the page stream a completion (POST /v1/completions)
#      and then explain the whole text (POST /v1/explain), and waits in real time for the page's own marker
#      `<body data-state="done">` (or "error", which fails with the message the page shows);
#   2. checks the DOM: streamed tokens in #output, the explained tokens, the attention row, the logit lens;
#   3. flips the logit lens through every layer, switches attention layer and head, hovers an explained token
#      and a streamed one, and checks the alternatives tooltip appears;
#   4. checks the colour legends (viridis, 0 to 1, beside every probability colouring and heat map), the heat
#      maps' axes (token labels drawn, axis titles), and that at 820 px width nothing overflows sideways;
#   5. moves the pointer away (no tooltip over the headings), takes a screenshot and checks it is a PNG of the
#      requested window size and not blank.
# Any uncaught exception, console.error/assert or browser log entry of level "error" fails the check.
#
# Why not `--virtual-time-budget` with `--dump-dom`/`--screenshot`: virtual time does not wait for a streamed
# response body, so such a run captures the page after the first token, long before the explanation.
#
# Usage: tests/browser/check_playground.sh URL [OUT_DIR]
#   URL      the server, e.g. http://127.0.0.1:8000 (no API key: the page is driven without one)
#   OUT_DIR  where playground.png, playground-dom.html and chromium.log go (default: a new temporary folder)
# Environment: CHROMIUM (the browser; default: chromium, chromium-browser or google-chrome on PATH),
#   PLAYGROUND_TIMEOUT_S (real-time limit for the page to finish, default 60), PLAYGROUND_PROMPT (default ROMEO:).
set -euo pipefail

fail() {
  echo "check_playground: FAIL: $*" >&2
  exit 1
}

[ $# -ge 1 ] && [ $# -le 2 ] || fail "usage: $0 URL [OUT_DIR]"
base=${1%/}
out=${2:-$(mktemp -d /tmp/check-playground.XXXXXX)}
mkdir -p "$out"

# shellcheck source=tests/browser/find_browser.sh
source "$(dirname "$0")/find_browser.sh"
command -v python3 > /dev/null || fail "python3 is needed to drive the browser"

profile=$(mktemp -d /tmp/check-playground-profile.XXXXXX)
trap 'rm -rf "$profile"' EXIT

status=0
python3 - "$browser" "$base" "$out" "$profile" "${PLAYGROUND_TIMEOUT_S:-60}" "${PLAYGROUND_PROMPT:-ROMEO:}" << 'EOF' || status=$?
import base64, fcntl, json, os, select, struct, subprocess, sys, time, urllib.parse, urllib.request

browser, base, out, profile, timeout_s, prompt = sys.argv[1:7]
timeout_s = float(timeout_s)
WIDTH, HEIGHT = 1280, 1600


class Fail(Exception):
    pass


def say(msg):
    print(f"check_playground: {msg}", flush=True)


# The page must be served before a browser is worth starting (a clearer message than a blank page).
try:
    with urllib.request.urlopen(base + "/", timeout=10) as r:
        page = r.read().decode("utf-8")
        kind = r.headers.get("Content-Type", "")
except OSError as e:
    print(f"check_playground: FAIL: GET {base}/ failed: {e}", file=sys.stderr)
    sys.exit(1)
if not kind.startswith("text/html") or 'id="lens"' not in page:
    print(f"check_playground: FAIL: GET {base}/ is not the playground page ({kind})", file=sys.stderr)
    sys.exit(1)

query = urllib.parse.urlencode({"prompt": prompt, "max_tokens": 40, "temperature": 0.8, "top_p": 0.95,
                                "repetition_penalty": 1.1, "seed": 7, "autorun": 1})
url = f"{base}/?{query}"

# --remote-debugging-pipe: Chromium reads commands on fd 3 and writes answers and events on fd 4, each a JSON
# text ended by NUL.
to_browser_r, to_browser_w = os.pipe()
from_browser_r, from_browser_w = os.pipe()


def child_fds():
    # Out of the way first: either pipe end may itself be fd 3 or 4.
    read_end = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
    write_end = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
    os.dup2(read_end, 3)
    os.dup2(write_end, 4)


log = open(os.path.join(out, "chromium.log"), "wb")
proc = subprocess.Popen(
    [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
     "--disable-extensions", "--disable-background-networking", "--hide-scrollbars", "--mute-audio",
     f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", "--remote-debugging-pipe", "about:blank"],
    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=child_fds, close_fds=False,
)
os.close(to_browser_r)
os.close(from_browser_w)

buffer = b""
next_id = 0
problems = []  # console errors and exceptions, as they come
notes = []  # other console output, reported only


def on_event(msg):
    method, p = msg.get("method"), msg.get("params", {})
    if method == "Runtime.exceptionThrown":
        d = p.get("exceptionDetails", {})
        text = d.get("exception", {}).get("description") or d.get("text")
        problems.append(f"uncaught exception: {text} ({d.get('url', '')}:{d.get('lineNumber')})")
    elif method == "Runtime.consoleAPICalled":
        args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
        (problems if p.get("type") in ("error", "assert") else notes).append(f"console.{p.get('type')}: {args}")
    elif method == "Log.entryAdded":
        e = p.get("entry", {})
        line = f"{e.get('level')} {e.get('source')}: {e.get('text')} {e.get('url', '')}".rstrip()
        (problems if e.get("level") == "error" else notes).append(line)


def read_message(deadline):
    global buffer
    while b"\0" not in buffer:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Fail("Chromium did not answer in time")
        ready, _, _ = select.select([from_browser_r], [], [], left)
        if ready:
            chunk = os.read(from_browser_r, 1 << 20)
            if not chunk:
                raise Fail(f"Chromium closed the pipe (exit status {proc.poll()}); see {out}/chromium.log")
            buffer += chunk
    raw, buffer = buffer.split(b"\0", 1)
    return json.loads(raw)


def call(method, params=None, session=None, wait=30):
    """Sends a command and returns its result, handling the events that arrive meanwhile."""
    global next_id
    next_id += 1
    msg = {"id": next_id, "method": method, "params": params or {}}
    if session:
        msg["sessionId"] = session
    os.write(to_browser_w, json.dumps(msg).encode() + b"\0")
    deadline = time.monotonic() + wait
    while True:
        answer = read_message(deadline)
        if answer.get("id") == next_id:
            if "error" in answer:
                raise Fail(f"{method} failed: {answer['error']}")
            return answer.get("result", {})
        on_event(answer)


def run():
    target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
    s = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def js(expression):
        r = call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, s)
        if "exceptionDetails" in r:
            raise Fail(f"evaluating {expression[:60]!r} threw: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
        call(domain, session=s)
    call("Emulation.setDeviceMetricsOverride",
         {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}, s)
    say(f"opening {url} with {browser}")
    nav = call("Page.navigate", {"url": url}, s)
    if nav.get("errorText"):
        raise Fail(f"navigation failed: {nav['errorText']}")

    # Wait, in real time, for the page's own marker.
    started = time.monotonic()
    state = None
    while time.monotonic() - started < timeout_s:
        state = js("document.body ? document.body.dataset.state : null")
        if state in ("done", "error"):
            break
        time.sleep(0.2)
    with open(os.path.join(out, "playground-dom.html"), "w", encoding="utf-8") as f:
        f.write(js("document.documentElement.outerHTML") or "")
    shown_error = js("document.getElementById('error').textContent")
    if state == "error":
        raise Fail(f"the page ended in an error: {shown_error}")
    if state != "done":
        status = js("document.getElementById('status').textContent")
        raise Fail(f"the page did not finish within {timeout_s:.0f} s (data-state={state!r}, status: {status!r})")
    say(f"page done in {time.monotonic() - started:.1f} s")

    counts = js("""(() => {
        const n = (sel) => document.querySelectorAll(sel).length;
        return {
            streamed: n('#output .tok'),
            explained: n('#ex-tokens .chip'),
            attention: n('#attn-tokens .chip'),
            lens: n('#lens .lens-cell'),
            lensLayers: Number(document.getElementById('lens-layer').max) + 1,
            layers: document.getElementById('layer').options.length,
            heads: document.getElementById('head').options.length,
            alternatives: n('#alternatives .t'),
            prediction: n('#prediction .t'),
            hidden: document.getElementById('explain-view').classList.contains('hidden'),
            errorShown: document.getElementById('error').classList.contains('shown'),
        };
    })()""")
    say(f"DOM: {json.dumps(counts)}")
    wrong = []
    if counts["streamed"] < 1:
        wrong.append("no streamed tokens in #output")
    if counts["explained"] <= counts["streamed"]:
        wrong.append("the explanation does not cover the prompt and the generated tokens")
    if counts["attention"] != counts["explained"] or counts["lens"] != counts["explained"]:
        wrong.append("the attention row or the logit lens does not have one cell per token")
    if counts["lensLayers"] < 2 or counts["layers"] < 1 or counts["heads"] < 2:
        wrong.append("the layer / head selectors or the lens slider are not filled")
    if counts["prediction"] < 1 or counts["alternatives"] < 1:
        wrong.append("no alternatives are listed for the selected token")
    if counts["hidden"] or counts["errorShown"]:
        wrong.append(f"the explanation is hidden or an error is shown: {shown_error!r}")
    if wrong:
        raise Fail("; ".join(wrong))

    # Flip through the lens, switch attention layer and head: every view must redraw without an exception.
    flipped = js("""(() => {
        const slider = document.getElementById('lens-layer');
        const labels = [];
        for (let l = 0; l <= Number(slider.max); l++) {
            slider.value = String(l);
            slider.dispatchEvent(new Event('input'));
            labels.push(document.getElementById('lens-label').textContent);
        }
        for (const id of ['layer', 'head']) {
            const sel = document.getElementById(id);
            sel.selectedIndex = sel.options.length - 1;
            sel.dispatchEvent(new Event('change'));
        }
        slider.value = String(Math.floor(Number(slider.max) / 2));
        slider.dispatchEvent(new Event('input'));
        return labels;
    })()""")
    say(f"logit lens flipped through {flipped}")
    if len(set(flipped)) != counts["lensLayers"]:
        raise Fail(f"flipping through the lens did not change its label: {flipped}")

    def centre(selector):
        """The middle of the first visible-text element matching `selector` (of its first line box: an inline
        element that wraps has a bounding box whose middle may lie outside it)."""
        r = js(f"""(() => {{
            const e = [...document.querySelectorAll({json.dumps(selector)})].find((e) => /\\S/.test(e.textContent));
            if (!e) return null;
            e.scrollIntoView({{block: 'center'}});
            const b = e.getClientRects()[0];
            return [b.left + b.width / 2, b.top + b.height / 2];
        }})()""")
        if r is None:
            raise Fail(f"nothing with visible text matches {selector}")
        return r

    def hover(selector):
        x, y = centre(selector)
        call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y}, s)

    # Hovering an explained token selects it (alternatives and attention follow it).
    hover("#ex-tokens .chip:nth-child(3)")
    selected = js("document.querySelector('#ex-tokens .chip.selected') === "
                  "document.querySelector('#ex-tokens .chip:nth-child(3)')")
    if not selected:
        raise Fail("hovering an explained token did not select it")
    # Hovering a streamed token shows its alternatives.
    js("window.scrollTo(0, 0)")
    hover("#output .tok")
    tip = js("""(() => { const t = document.getElementById('tip');
        return {shown: getComputedStyle(t).display !== 'none', rows: t.querySelectorAll('.cands .t').length}; })()""")
    if not tip["shown"] or tip["rows"] < 1:
        raise Fail(f"hovering a streamed token did not show its alternatives: {tip}")
    say(f"hover: the tooltip lists {tip['rows']} alternatives")

    # Legends: each names its scale, reads 0 … 1 and shows viridis from its first stop to its last.
    legends = js("""(() => [...document.querySelectorAll('.legend')].map((e) => {
        const bar = e.querySelector('.bar');
        const box = e.getBoundingClientRect();
        return { id: e.id, text: e.textContent.replace(/\\s+/g, ' ').trim(), shown: box.width > 0 && box.height > 0,
                 gradient: bar ? getComputedStyle(bar).backgroundImage : '' };
    }))()""")
    expected = {"legend-generation", "legend-tokens", "legend-attention-row", "legend-attention", "legend-lens",
                "legend-lens-map", "legend-attribution"}
    found = {legend["id"] for legend in legends}
    if not expected <= found:
        raise Fail(f"legends missing: {sorted(expected - found)}")
    for legend in legends:
        g = legend["gradient"].replace(" ", "")
        if legend["id"] == "legend-attribution":
            # Signed contributions: a diverging blue – white – red scale from −max to +max.
            if not legend["shown"] or "rgb(33,102,172)" not in g or "rgb(178,24,43)" not in g:
                raise Fail(f"the attribution legend is not a shown diverging scale: {legend}")
            continue
        if not legend["shown"] or not legend["text"].endswith("0 1") or "rgb(68,1,84)" not in g \
                or "rgb(253,231,37)" not in g:
            raise Fail(f"legend {legend['id']} is not a shown viridis scale from 0 to 1: {legend}")
    say(f"legends: {', '.join(sorted(found))}")
    # Heat maps: token labels on their axes and axis titles (drawn in the canvas; the page records them).
    for canvas, axes in (("attn-canvas", "query × key"), ("lens-canvas", "layer × position")):
        drawn = js(f"(() => {{ const c = document.getElementById('{canvas}'); "
                   f"return [c.dataset.axes || '', Number(c.dataset.labels || 0)]; }})()")
        if drawn[0] != axes or drawn[1] < counts["explained"] // 4:
            raise Fail(f"#{canvas} has no axes {axes!r} with token labels: {drawn}")
    # The same colours as the report: a token chip is painted with viridis, its text readable on it.
    chip = js("getComputedStyle(document.querySelector('#ex-tokens .chip:nth-child(2)')).backgroundColor")
    say(f"a token chip is painted {chip}")
    # Space is shown as the report shows it.
    chips = js("[...document.querySelectorAll('#ex-tokens .chip')].map((c) => c.textContent)")
    if any(" " in c for c in chips):
        raise Fail(f"an explained token shows a bare space instead of \u2423: {chips!r}")

    # Causes: the attribution heat map has a cell per head and MLP; switching the first head off and
    # regenerating draws a continuation from the model without it.
    causes = js("""(() => {
        const c = document.getElementById('dla-canvas');
        return { hidden: document.getElementById('causes-view').classList.contains('hidden'),
                 axes: c.dataset.axes || '', cells: Number(c.dataset.cells || 0),
                 switches: document.querySelectorAll('#knockouts button[data-key]').length,
                 top: document.querySelectorAll('#dla-top .t').length };
    })()""")
    say(f"causes: {json.dumps(causes)}")
    if causes["hidden"] or causes["axes"] != "layer × head" or causes["cells"] != causes["switches"] \
            or causes["cells"] < counts["layers"] * 2 or causes["top"] < 1:
        raise Fail(f"the attribution heat map or the knockout switches are missing: {causes}")
    js("document.querySelector('#knockouts button[data-key]').click()")
    if js("document.querySelectorAll('#knockouts button.off').length") != 1:
        raise Fail("clicking a knockout switch did not switch that head off")
    js("document.getElementById('regenerate').click()")
    started = time.monotonic()
    knockout = None
    while time.monotonic() - started < timeout_s:
        knockout = js("document.body.dataset.knockout || null")
        if knockout in ("done", "error"):
            break
        time.sleep(0.2)
    if knockout != "done":
        shown = js("document.getElementById('error').textContent")
        raise Fail(f"regenerating with a head off ended {knockout!r}: {shown}")
    regenerated = js("""(() => ({ tokens: document.querySelectorAll('#knockout-output .tok').length,
        title: document.getElementById('knockout-title').textContent }))()""")
    if regenerated["tokens"] < 1 or "L1H1" not in regenerated["title"]:
        raise Fail(f"the regenerated continuation is missing or does not name the head switched off: {regenerated}")
    say(f"knockout: {regenerated['title']}")

    # 820 px wide: nothing may stick out sideways (heat maps scale down, the grid becomes one column).
    call("Emulation.setDeviceMetricsOverride", {"width": 820, "height": HEIGHT, "deviceScaleFactor": 1,
                                                "mobile": False}, s)
    widths = js("""(() => {
        const view = document.documentElement.clientWidth;
        const wide = [...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > view + 1)
            .map((e) => e.id || e.className || e.tagName).slice(0, 8);
        return { page: document.documentElement.scrollWidth, view, wide };
    })()""")
    if widths["page"] > widths["view"] or widths["wide"]:
        raise Fail(f"at 820 px the page overflows sideways: {widths}")
    say(f"820 px: page {widths['page']} px wide, nothing sticks out")
    call("Emulation.setDeviceMetricsOverride",
         {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}, s)

    # The screenshot shows the page, not a tooltip over its headings.
    js("window.scrollTo(0, 0)")
    call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": WIDTH - 4, "y": 4}, s)
    if js("getComputedStyle(document.getElementById('tip')).display") != "none":
        raise Fail("the tooltip stays open after the pointer left")
    shot = call("Page.captureScreenshot", {"format": "png"}, s)["data"]
    path = os.path.join(out, "playground.png")
    with open(path, "wb") as f:
        f.write(base64.b64decode(shot))
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise Fail(f"{path} is not a PNG")
    w, h = struct.unpack(">II", data[16:24])
    if (w, h) != (WIDTH, HEIGHT):
        raise Fail(f"the screenshot is {w}x{h}, not {WIDTH}x{HEIGHT}")
    # A blank page compresses to almost nothing; one with text and heat maps does not.
    if len(data) < 20000:
        raise Fail(f"the screenshot is only {len(data)} bytes: the page looks blank")
    say(f"screenshot {path}: {w}x{h} PNG, {len(data)} bytes")
    # Late events (e.g. from the last redraw) arrive before this answer.
    call("Runtime.evaluate", {"expression": "0"}, s)


code = 0
try:
    run()
except Fail as e:
    print(f"check_playground: FAIL: {e}", file=sys.stderr)
    code = 1
finally:
    try:
        call("Browser.close", wait=5)
    except Exception:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
for note in notes:
    say(f"console (not an error): {note}")
if problems:
    for p in problems:
        print(f"check_playground: console error: {p}", file=sys.stderr)
    print("check_playground: FAIL: the page raised errors in the browser console", file=sys.stderr)
    code = 1
sys.exit(code)
EOF
[ "$status" -eq 0 ] || fail "see the messages above and $out (playground-dom.html, chromium.log)"
echo "check_playground: ok ($out/playground.png)"
