#!/usr/bin/env python3
"""Checks that a lushan classifier checkpoint is the same model in Hugging Face transformers.

    venv/bin/python tools/check_hf_classifier.py DIR DATA.jsonl [--limit 50] [--lushan target/release/lushan]

1. Loading: AutoModelForSequenceClassification.from_pretrained(DIR, output_loading_info=True) reports no
   missing, unexpected or mismatched keys; AutoTokenizer.from_pretrained(DIR) loads lushan's tokenizer files.
2. Outputs: for the first --limit texts of DATA (JSONL with "text"), the softmax of transformers' logits
   (one text at a time, truncated to the context keeping the start, as lushan does) equals the
   per-label probabilities `lushan classify` prints within --atol (default 1e-4), and the labels agree.
Exits non-zero on any difference.
"""
import argparse
import json
import math
import os
import subprocess
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("data")
ap.add_argument("--limit", type=int, default=50)
ap.add_argument("--atol", type=float, default=1e-4)
ap.add_argument("--lushan", default=os.path.join(ROOT, "target", "release", "lushan"))
args = ap.parse_args()

model, info = AutoModelForSequenceClassification.from_pretrained(args.dir, output_loading_info=True)
problems = {k: v for k, v in info.items() if v}
if problems:
    sys.exit(f"loading {args.dir}: {problems}")
model.eval()
tok = AutoTokenizer.from_pretrained(args.dir)
labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
texts = []
with open(args.data, encoding="utf-8") as f:
    for line in f:
        if line.strip():
            texts.append(json.loads(line)["text"])
        if len(texts) >= args.limit:
            break
out = subprocess.run([args.lushan, "classify", "--model", args.dir, "--file", "/dev/stdin"],
                     input="".join(json.dumps({"text": t}) + "\n" for t in texts),
                     capture_output=True, text=True, check=True).stdout
lushan_rows = [json.loads(l) for l in out.splitlines() if l.strip()]
assert len(lushan_rows) == len(texts), (len(lushan_rows), len(texts))
worst = 0.0
for text, row in zip(texts, lushan_rows):
    ids = tok(text)["input_ids"][: model.config.n_positions]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    probs = torch.softmax(logits, -1).tolist()
    theirs = [row["probabilities"][l] for l in labels]
    worst = max(worst, max(abs(a - b) for a, b in zip(probs, theirs)))
    if labels[max(range(len(probs)), key=probs.__getitem__)] != row["label"] and worst > args.atol:
        sys.exit(f"label differs for {text[:60]!r}: transformers {probs}, lushan {row}")
print(f"{len(texts)} texts: loaded with no missing/unexpected keys; max |p_transformers - p_lushan| = {worst:.2e}")
if worst > args.atol:
    sys.exit(f"probabilities differ by {worst} > {args.atol}")
