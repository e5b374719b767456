#!/usr/bin/env python3
"""GPT-2 BPE parity fixtures for crates/lushan-tokenizer/tests, written by tiktoken.

Run by hand (a venv with tiktoken; transformers for --check-hf):

    /work/venv/bin/python tools/make_tokenizer_fixtures.py
    /work/venv/bin/python tools/make_tokenizer_fixtures.py --check-hf DIR --lushan target/release/lushan

tiktoken's `gpt2` encoding is built offline from the original encoder.json / vocab.bpe shipped in
crates/lushan-tokenizer/tests/fixtures/gpt2/ (tiktoken's get_encoding("gpt2") would download), with the
GPT-2 pattern, exactly as ../shared/bench/tokenizer_bench.py does.

Writes into crates/lushan-tokenizer/tests/fixtures/:
  unicode_sample.txt            a hand-written Unicode-heavy text (CJK, emoji with ZWJ and skin tones,
                                combining marks, RTL scripts, controls, whitespace runs, contractions, ...)
  gpt2_expected.json            versions; ids of the sample and of each edge case, both with special tokens
                                as plain text (encode_ordinary) and allowed (encode(allowed_special="all"));
                                the tinyshakespeare file's size, sha256 and token count
  tinyshakespeare.gpt2.u16le    the ids of data/tinyshakespeare.txt (encode_ordinary), little-endian u16
  tiktoken_classes.json         the code points tiktoken's regex engine puts in \\p{L}, \\p{N} and \\s, as
                                inclusive [first, last] ranges (read out by encoding every code point)

--check-hf DIR: loads DIR (written by `lushan tokenizer ...` / Bpe::write_hf_files) with transformers'
AutoTokenizer and compares its ids with `lushan tokenizer encode --allow-special --tokenizer DIR` on every
fixture text (transformers matches added tokens in text, so the special-token ids are the ones to compare);
exits non-zero on any difference.
"""
import argparse, hashlib, json, os, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "crates/lushan-tokenizer/tests/fixtures")
GPT2 = os.path.join(FIX, "gpt2")
SHAKESPEARE = os.path.join(ROOT, "data/tinyshakespeare.txt")
# GPT-2 ("r50k") pre-tokenisation regex, as used by tiktoken's gpt2 encoding
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

UNICODE_SAMPLE = (
    "Unicode sample for lushan's GPT-2 tokenizer tests.\n"
    "中文：床前明月光，疑是地上霜。举头望明月，低头思故乡。\n"
    "日本語：吾輩は猫である。名前はまだ無い。カタカナとひらがな。\n"
    "한국어: 안녕하세요, 세계! 반갑습니다.\n"
    "Emoji: 👍 👍🏽 👍🏿 👨‍👩‍👧‍👦 👩🏽‍💻 🏳️‍🌈 🇯🇵 ❤️ 🙂🙂🙂 😀!\n"
    "Combining: e\u0301 vs \u00e9, n\u0303, Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319"
    "\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dA\u0334\u0335\u031c\u0330\u0354\u036b\u0357\u0362L\u0320"
    "\u0368\u0367\u0369\u0358G\n"
    "Arabic: مرحبا بالعالم، كيف حالك؟ ١٢٣٤٥\n"
    "Hebrew: שָׁלוֹם עוֹלָם! מה שלומך?\n"
    "Devanagari: नमस्ते दुनिया। Thai: สวัสดีชาวโลก\n"
    "Greek: Καλημέρα κόσμε. Cyrillic: Привет, мир! ǅ ʰ Ⅻ ½ ²\n"
    "Controls: \x00\x01\x07\x1b[0m\x7f \x1c\x1d\x1e\x1f \u0085 \u200b\u200d\ufeff end\n"
    "Whitespace:\ttab\t\ttabs  two  spaces   three\r\nCRLF\r\n\r\nblank CRLF line\n"
    "trailing spaces   \n"
    "\u00a0nbsp\u3000ideographic\u2028line sep\u2029para sep\u1680ogham \n\n\n"
    "Contractions: it's I'm we'll you've they're I'd don't. IT'S I'M WE'LL YOU'VE THEY'RE I'D DON'T.\n"
    "Mixed 'quotes' and ''double'' and 's at the start, and a lone ' here.\n"
    "Numbers: 0 7 42 3.14159 1,000,000 12345678901234567890 ²³ ¼ Ⅳ ٣ ४२ 一二三\n"
    "Literal special: <|endoftext|> in the middle<|endoftext|>and glued <|endoftext|>\n"
    "Code: fn main() { println!(\"héllo {}\", 1 + 2); } // done\n"
    "URLs: https://example.com/a/b?c=d&e=f#g user@example.org\n"
    "Unicode 16/17 edges: \U00011DE0\U00011DE1 \u1c89\u1c8a \U0010FFFF \U000E0001\n"
    "          \n"
    "\n\n\n"
    "The end.   "
)

EDGE_CASES = [
    "", " ", "  ", "\n", "\n\n", "\n\n\n", "\t", "\r\n", "\r\n\r\n", " \n", "\n ", " \n ", "a", "hello",
    " hello", "hello ", "hello  ", "hello\n", "hello\n\n", "hello\n\nworld", "hello \n\n world", "a\r\nb",
    "a \n b", "a\u00a0b", "x\u3000\u3000y", "'s", "'S", "'LL", "'ll", "'re", "'ve", "'m", "'d", "'t", "'x",
    "don't", "DON'T", "we'll've", "I'M", "'", "''", "' s", "?'s", "123", "1234567890123", " 42", "3.14159",
    "½ ¾ Ⅻ ٣", "<|endoftext|>", "a<|endoftext|>b", "<|endoftext|><|endoftext|>", " <|endoftext|> ",
    "\n<|endoftext|>\n\n", "<|endoftext", "endoftext|>", "<|endoftext|", "a" * 5000, "ab" * 3000,
    " " * 1000, "\n" * 500, " " * 100 + "x", "\t" * 50 + "x", "x" + " " * 50, "👍", "👍🏽", "👨‍👩‍👧‍👦",
    "🏳️‍🌈", "\u00e9", "e\u0301", "\x00", "\x01\x02\x1b[0m", "\x7f", "\u200b", "\u200d", "\ufeffBOM",
    "\U0010FFFF", "\U000E0001", "🙂" * 100, "中文测试", "안녕하세요", "नमस्ते", "مرحبا", "שלום", "abc中文123",
    "...", "!!!???", "---", "$$$100", "#hashtag @user", "http://example.com/path?x=1&y=2",
    "fn main() {\n    println!(\"hi\");\n}\n", "    indented", "trailing   ", "ǅ", "ʰ", "\u0085", "\u2028",
    "\u1680", "\x1c\x1d\x1e\x1f", "\U00011DE0", "\u1c89", "Ⅻ1", "a1b2c3", " 1 2 3", "!a", " !a", "a!",
    "The quick brown fox jumps over the lazy dog.",
]


def build_tiktoken():
    import tiktoken, tiktoken.load
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(os.path.join(GPT2, "vocab.bpe"),
                                                          os.path.join(GPT2, "encoder.json"))
    return tiktoken.Encoding(name="gpt2-local", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)


def class_ranges(pattern):
    """Every code point (surrogates excepted) that tiktoken's regex engine matches with `pattern`."""
    import tiktoken
    enc = tiktoken.Encoding(name="classes", pat_str=pattern, mergeable_ranks={bytes([b]): b for b in range(256)},
                            special_tokens={})
    found = set()
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for i in range(0, len(cps), 50000):
        text = "".join(map(chr, cps[i:i + 50000]))
        # Unmatched text is skipped by encode_ordinary, so the ids are the bytes of the matching characters.
        found.update(map(ord, bytes(enc.encode_ordinary(text)).decode("utf-8")))
    ranges = []
    for c in sorted(found):
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return ranges


def write_fixtures():
    import tiktoken
    tk = build_tiktoken()
    with open(os.path.join(FIX, "unicode_sample.txt"), "w", encoding="utf-8", newline="") as f:
        f.write(UNICODE_SAMPLE)
    text = open(SHAKESPEARE, encoding="utf-8", newline="").read()
    raw = text.encode("utf-8")
    ids = tk.encode_ordinary(text)
    assert tk.decode_bytes(ids) == raw and max(ids) < 65536
    with open(os.path.join(FIX, "tinyshakespeare.gpt2.u16le"), "wb") as f:
        f.write(b"".join(i.to_bytes(2, "little") for i in ids))
    expected = {
        "generator": "tools/make_tokenizer_fixtures.py",
        "versions": {"tiktoken": tiktoken.__version__, "python": sys.version.split()[0]},
        "tinyshakespeare": {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(), "tokens": len(ids),
                            "ids_file": "tinyshakespeare.gpt2.u16le"},
        "unicode_sample": {"ordinary": tk.encode_ordinary(UNICODE_SAMPLE),
                           "special": tk.encode(UNICODE_SAMPLE, allowed_special="all")},
        "edge_cases": [{"text": t, "ordinary": tk.encode_ordinary(t), "special": tk.encode(t, allowed_special="all")}
                       for t in EDGE_CASES],
    }
    with open(os.path.join(FIX, "gpt2_expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")
    classes = {"unicode": "tiktoken's regex engine", "L": class_ranges(r"\p{L}"), "N": class_ranges(r"\p{N}"),
               "S": class_ranges(r"\s")}
    with open(os.path.join(FIX, "tiktoken_classes.json"), "w") as f:
        json.dump(classes, f, separators=(",", ":"))
        f.write("\n")
    print(f"tinyshakespeare: {len(raw)} bytes -> {len(ids)} ids; sample -> "
          f"{len(expected['unicode_sample']['ordinary'])} ids; {len(EDGE_CASES)} edge cases; "
          f"classes L/N/S: {len(classes['L'])}/{len(classes['N'])}/{len(classes['S'])} ranges")


def check_hf(directory, lushan):
    """transformers on DIR vs lushan on DIR, ids compared on every fixture text."""
    from transformers import AutoTokenizer
    import transformers
    hf = AutoTokenizer.from_pretrained(directory)
    texts = {"tinyshakespeare": open(SHAKESPEARE, encoding="utf-8", newline="").read(),
             "unicode_sample": UNICODE_SAMPLE}
    texts.update({f"edge case {i}": t for i, t in enumerate(EDGE_CASES)})
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in texts.items():
            path = os.path.join(tmp, "in.txt")
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(text)
            out = subprocess.run([lushan, "tokenizer", "encode", "--tokenizer", directory, "--allow-special", path],
                                 check=True, capture_output=True, text=True).stdout.split()
            ours = [int(x) for x in out]
            theirs = hf(text, add_special_tokens=False)["input_ids"]
            if ours != theirs:
                bad += 1
                first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
                print(f"DIFFERENT {name}: lushan {len(ours)} ids, transformers {len(theirs)}; first at {first}")
            if hf.decode(theirs) != text and "\ufffd" not in text:
                print(f"note: transformers does not round-trip {name!r}")
    print(f"transformers {transformers.__version__} {type(hf).__name__} on {directory}: "
          f"{len(texts) - bad}/{len(texts)} texts identical, vocab {len(hf)}")
    return bad == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-hf", metavar="DIR")
    ap.add_argument("--lushan", default=os.path.join(ROOT, "target/release/lushan"))
    args = ap.parse_args()
    if args.check_hf:
        sys.exit(0 if check_hf(args.check_hf, args.lushan) else 1)
    write_fixtures()


if __name__ == "__main__":
    main()
