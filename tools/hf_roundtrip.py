#!/usr/bin/env python3
"""Checks that a lushan checkpoint directory is the same model in Hugging Face transformers.

Usage (from the repository root, after `cargo build --release`):

    venv/bin/python tools/hf_roundtrip.py [out/shakespeare-char] [--prompt "ROMEO:"] [--tokens 100]

For a directory with a character-level tokenizer (`lushan-tokenizer.json`, type "char"):

1. Loading: GPT2LMHeadModel.from_pretrained(DIR, output_loading_info=True) must report no missing,
   unexpected or mismatched keys and no error messages.
2. Loss: a fixed id sequence (--eval-tokens ids drawn with random.Random(--seed) over the vocabulary,
   several context windows long; or, with --text FILE, that file's first --eval-tokens characters) is
   written as text to a temporary file and scored by
   `lushan eval --model DIR --data FILE --json`; transformers scores the same ids over the same
   non-overlapping windows (`lushan eval`'s: the model's context, every token after the first predicted
   once). The two mean cross-entropies must agree to --loss-rtol (relative, default 1e-5).
3. Greedy: `lushan generate --temperature 0` and model.generate(do_sample=False) must give exactly the same
   text for --prompt (within the model's context: transformers cannot slide beyond it).

The lushan binary is run by this script (--lushan, default target/release/lushan); nothing is added to
lushan's CLI for it. Exits non-zero on any difference.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile

import torch
import transformers
from transformers import GPT2LMHeadModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8")
    if done.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {done.returncode}:\n{done.stderr}")
    return done.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", nargs="?", default="out/shakespeare-char")
    ap.add_argument("--prompt", default="ROMEO:")
    ap.add_argument("--tokens", type=int, default=100, help="greedy tokens (capped to the model's context)")
    ap.add_argument("--eval-tokens", type=int, default=0,
                    help="length of the scored id sequence (default: 3 context windows + 10)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the scored id sequence")
    ap.add_argument("--text", help="score the start of this text file instead of random ids")
    ap.add_argument("--loss-rtol", type=float, default=1e-5)
    ap.add_argument("--lushan", default=os.path.join(ROOT, "target", "release", "lushan"))
    args = ap.parse_args()
    torch.manual_seed(0)
    transformers.utils.logging.disable_progress_bar()

    # 1. A clean load.
    model, info = GPT2LMHeadModel.from_pretrained(args.model_dir, output_loading_info=True)
    model = model.float().eval()
    problems = {k: v for k, v in info.items() if v}
    print(f"[load] {args.model_dir}: transformers {transformers.__version__}, torch {torch.__version__}; "
          f"loading info {{{', '.join(f'{k}: {len(v)}' for k, v in info.items())}}}")
    if problems:
        print(f"FAIL: loading problems: {problems}")
        return 1

    with open(os.path.join(args.model_dir, "lushan-tokenizer.json"), encoding="utf-8") as f:
        tokenizer = json.load(f)
    if tokenizer.get("type") != "char":
        print(f"FAIL: only character-level tokenizers are supported here, found {tokenizer.get('type')!r}")
        return 1
    vocab: list[str] = tokenizer["vocab"]
    stoi = {ch: i for i, ch in enumerate(vocab)}
    t_ctx = model.config.n_positions
    assert len(vocab) == model.config.vocab_size, (len(vocab), model.config.vocab_size)

    # 2. Loss over a fixed id sequence.
    n = args.eval_tokens or 3 * t_ctx + 10
    if args.text:
        with open(args.text, encoding="utf-8", newline="") as f:
            text = f.read(n)
        ids = [stoi[ch] for ch in text]
        n = len(ids)
        source = f"the first {n} characters of {args.text}"
    else:
        rng = random.Random(args.seed)
        ids = [rng.randrange(len(vocab)) for _ in range(n)]
        text = "".join(vocab[i] for i in ids)
        assert [stoi[ch] for ch in text] == ids
        source = f"{n} random ids (seed {args.seed})"
    total, count, worst = 0.0, 0, 0.0
    with torch.no_grad():
        for start in range(0, n - 1, t_ctx):  # lushan eval's windows
            length = min(t_ctx, n - 1 - start)
            x = torch.tensor([ids[start:start + length]])
            y = torch.tensor(ids[start + 1:start + 1 + length])
            logits = model(x).logits[0].double()
            nll = torch.nn.functional.cross_entropy(logits, y, reduction="none")
            total += nll.sum().item()
            count += length
    hf_loss = total / count
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ids.txt")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        report = json.loads(run([args.lushan, "eval", "--model", args.model_dir, "--data", path, "--json"]))
    lushan_loss = float(report["loss"])
    rel = abs(lushan_loss - hf_loss) / abs(hf_loss)
    print(f"[loss] {source}: {count} predicted tokens in {math.ceil((n - 1) / t_ctx)} windows of <= {t_ctx}: "
          f"transformers {hf_loss:.8f}, lushan {lushan_loss:.8f}, relative difference {rel:.2e}")
    ok = True
    if report["tokens"] != count:
        print(f"FAIL: lushan scored {report['tokens']} tokens, transformers {count}")
        ok = False
    if not rel <= args.loss_rtol:
        print(f"FAIL: losses differ by {rel:.2e} relative (> {args.loss_rtol})")
        ok = False

    # 3. Greedy continuation.
    prompt_ids = torch.tensor([[stoi[ch] for ch in args.prompt]])
    n_new = min(args.tokens, t_ctx - prompt_ids.shape[1])
    # lushan writes the last id as bos/eos (GPT-2's convention, 50256 = its last id); here that is an
    # ordinary character, which must not end transformers' generation early (lushan's never stops on it).
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = model.generate(prompt_ids, max_new_tokens=n_new, do_sample=False,
                             attention_mask=torch.ones_like(prompt_ids))
    assert out.shape[1] == prompt_ids.shape[1] + n_new, out.shape
    hf_text = args.prompt + "".join(vocab[i] for i in out[0, prompt_ids.shape[1]:].tolist())
    stdout = run([args.lushan, "generate", "--model", args.model_dir, "--prompt", args.prompt,
                  "--max-new-tokens", str(n_new), "--temperature", "0"])
    lushan_text = stdout[:-1] if stdout.endswith("\n") else stdout  # `generate` ends each sample with "\n"
    print(f"[greedy] {n_new} tokens after {args.prompt!r}:")
    print(f"  transformers: {hf_text!r}")
    print(f"  lushan:       {lushan_text!r}")
    if hf_text != lushan_text:
        first = next((i for i, (a, b) in enumerate(zip(hf_text, lushan_text)) if a != b),
                     min(len(hf_text), len(lushan_text)))
        print(f"FAIL: greedy continuations differ from character {first}")
        ok = False
    if ok:
        print(f"OK: clean load; loss relative difference {rel:.2e}; {n_new} greedy tokens identical")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
