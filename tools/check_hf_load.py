#!/usr/bin/env python3
"""Loads a lushan checkpoint directory with Hugging Face transformers and checks it is the same model.

Usage: venv/bin/python tools/check_hf_load.py out/shakespeare-char [--prompt "ROMEO:"] [--tokens 100]

1. GPT2LMHeadModel.from_pretrained(DIR, output_loading_info=True) must report no missing, unexpected or
   mismatched keys.
2. Greedy decoding with transformers (model.generate(do_sample=False)) must give exactly the text that
   `lushan generate --temperature 0` gives for the same prompt (the lushan binary is run by this script):
   equal greedy continuations mean equal argmax logits at every step.
Exits non-zero on any difference.
"""
import argparse, json, os, subprocess, sys

import torch
from transformers import GPT2LMHeadModel

ap = argparse.ArgumentParser()
ap.add_argument("model_dir")
ap.add_argument("--prompt", default="ROMEO:")
ap.add_argument("--tokens", type=int, default=100)
ap.add_argument("--lushan", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "lushan"))
args = ap.parse_args()

model, info = GPT2LMHeadModel.from_pretrained(args.model_dir, output_loading_info=True)
model.eval()
problems = {k: v for k, v in info.items() if v}
print("loading info:", {k: len(v) for k, v in info.items()})
if problems:
    print("FAIL: loading problems:", problems)
    sys.exit(1)

with open(os.path.join(args.model_dir, "lushan-tokenizer.json")) as f:
    vocab = json.load(f)["vocab"]
stoi = {ch: i for i, ch in enumerate(vocab)}
ids = torch.tensor([[stoi[ch] for ch in args.prompt]])
# Generate inside the model's context (lushan slides its window beyond it; transformers cannot).
n_new = min(args.tokens, model.config.n_positions - ids.shape[1])
with torch.no_grad():
    out = model.generate(ids, max_new_tokens=n_new, do_sample=False, pad_token_id=0)
hf_text = args.prompt + "".join(vocab[i] for i in out[0, ids.shape[1]:].tolist())

lushan = subprocess.run(
    [args.lushan, "generate", "--model", args.model_dir, "--prompt", args.prompt, "--max-new-tokens", str(n_new),
     "--temperature", "0"], check=True, capture_output=True, text=True).stdout.rstrip("\n")
print("transformers:", repr(hf_text))
print("lushan:      ", repr(lushan))
if hf_text != lushan:
    print("FAIL: greedy continuations differ")
    sys.exit(1)
print(f"OK: no missing/unexpected keys; {n_new} greedy tokens identical")
