#!/usr/bin/env python3
"""Checks that a lushan checkpoint directory loads in Hugging Face transformers with the same token ids.

Usage (from the repository root, after `cargo build --release`):

    venv/bin/python tools/check_hf_tokenizer.py DIR [TEXTFILE] [--lushan target/release/lushan]

1. `AutoTokenizer.from_pretrained(DIR)` and `GPT2LMHeadModel.from_pretrained(DIR)` load (the model with no
   missing, unexpected or mismatched keys), and the model's vocabulary covers the tokenizer's ids.
2. For each text — TEXTFILE (default: the first 10 KB of data/tinyshakespeare.txt) and a Unicode sample
   (newlines, CRLF, tabs, CJK, emoji, combining marks; for a character-level tokenizer only the characters
   its vocabulary has) — the ids of `tokenizer(text)["input_ids"]` (special tokens on, as users call it)
   equal those of `lushan tokenizer encode --tokenizer DIR`, and `tokenizer.decode(ids)` gives the text
   back exactly.
3. The model runs on the first ids of the text and its logits are finite.

Prints one OK/FAIL line per check and exits non-zero if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

UNICODE_SAMPLE = (
    "ROMEO:\nBut soft, what light through yonder window breaks?\r\n"
    "\tTabs,  double  spaces , and ' quotes ' ; odd spacing .\n\n"
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。\n"
    "Emoji: 🙂😀👍🏽 👨\u200d👩\u200d👧 flags 🇫🇷\n"
    "Combining: e\u0301 n\u0303 a\u030a; precomposed: é ñ å\n"
    "Greek Ελληνικά, Cyrillic Русский, Arabic العربية, Hindi हिन्दी\n"
    "NBSP:\u00a0| line sep:\u2028| zero width:\u200b| BOM:\ufeff|\n"
)


def lushan_ids(lushan: str, model_dir: str, text: str) -> list[int]:
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", newline="", suffix=".txt", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        done = subprocess.run(
            [lushan, "tokenizer", "encode", "--tokenizer", model_dir, "--lines", path],
            capture_output=True,
            text=True,
            encoding="utf-8",
        )
    finally:
        os.unlink(path)
    if done.returncode != 0:
        raise RuntimeError(f"lushan tokenizer encode exited {done.returncode}: {done.stderr.strip()}")
    return [int(line) for line in done.stdout.split()]


def first_difference(a: list[int], b: list[int]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"first difference at position {i}: hf {x}, lushan {y}"
    return f"lengths differ: hf {len(a)}, lushan {len(b)}"


def lushan_kind(model_dir: str) -> str:
    path = os.path.join(model_dir, "lushan-tokenizer.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("type", "?")
    return "hf-only"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("text_file", nargs="?", help="UTF-8 text to compare (default: 10 KB of tiny Shakespeare)")
    ap.add_argument("--bytes", type=int, default=10_000, help="characters of the default text (default 10000)")
    ap.add_argument("--lushan", default=os.path.join(ROOT, "target", "release", "lushan"))
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoTokenizer, GPT2LMHeadModel

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    failures = 0

    def report(ok: bool, what: str, detail: str = "") -> None:
        nonlocal failures
        failures += not ok
        print(f"{'OK  ' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}", flush=True)

    print(f"{args.model_dir} (lushan tokenizer: {lushan_kind(args.model_dir)}; transformers {transformers.__version__})")
    try:
        tok = AutoTokenizer.from_pretrained(args.model_dir)
        report(True, "AutoTokenizer.from_pretrained", f"{type(tok).__name__}, {len(tok)} tokens")
    except Exception as e:  # noqa: BLE001 - any failure to load is the report
        report(False, "AutoTokenizer.from_pretrained", repr(e))
        return 1
    model = None
    try:
        model, info = GPT2LMHeadModel.from_pretrained(args.model_dir, output_loading_info=True)
        problems = {k: v for k, v in info.items() if v}
        report(not problems, "GPT2LMHeadModel.from_pretrained", str(problems) if problems else
               f"vocab {model.config.vocab_size}, context {model.config.n_positions}")
        report(model.config.vocab_size >= len(tok), "model vocabulary covers the tokenizer",
               f"{model.config.vocab_size} >= {len(tok)}")
    except Exception as e:  # noqa: BLE001
        report(False, "GPT2LMHeadModel.from_pretrained", repr(e))

    if args.text_file:
        with open(args.text_file, encoding="utf-8", newline="") as f:
            main_text = f.read()
        main_name = args.text_file
    else:
        with open(os.path.join(ROOT, "data", "tinyshakespeare.txt"), encoding="utf-8", newline="") as f:
            main_text = f.read(args.bytes)
        main_name = f"tinyshakespeare.txt[:{args.bytes}]"

    sample = UNICODE_SAMPLE
    vocab = tok.get_vocab()
    if all(len(t) == 1 for t in vocab):  # a character-level vocabulary: keep the characters it has
        sample = "".join(c for c in UNICODE_SAMPLE if c in vocab)
    texts = [(main_name, main_text), (f"unicode sample ({len(sample)} chars)", sample)]

    for name, text in texts:
        try:
            expected = lushan_ids(args.lushan, args.model_dir, text)
        except RuntimeError as e:
            report(False, f"lushan encode {name}", str(e))
            continue
        try:
            ids = tok(text)["input_ids"]
        except Exception as e:  # noqa: BLE001
            report(False, f"transformers encode {name}", repr(e))
            continue
        report(ids == expected, f"ids equal on {name}", f"{len(ids)} ids" if ids == expected
               else first_difference(ids, expected))
        decoded = tok.decode(ids)
        same = decoded == text
        detail = f"{len(text)} chars"
        if not same:
            i = next((i for i, (a, b) in enumerate(zip(decoded, text)) if a != b), min(len(decoded), len(text)))
            detail = f"differs at char {i}: hf {decoded[i:i + 20]!r}, text {text[i:i + 20]!r}"
        report(same, f"decode round-trips {name}", detail)
        if model is not None and ids:
            window = torch.tensor([ids[: model.config.n_positions]])
            with torch.no_grad():
                logits = model(window).logits
            finite = bool(torch.isfinite(logits).all())
            report(finite and logits.shape[-1] == model.config.vocab_size, f"model forward on {name}",
                   f"logits {tuple(logits.shape)}")

    print("OK" if failures == 0 else f"FAIL ({failures} check(s) failed)")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
