#!/usr/bin/env python3
"""Reference for `lushan bench generate --batch N` / `lushan bench serve`: HF transformers GPT2LMHeadModel
(random init, no download, 2 threads) decoding B sequences together with a KV cache, greedy.

For each batch size: one prefill over B random prompts of the same length (no padding needed), then N - 1
single-token steps with the cache; reports the median ms per step and the aggregate tokens/s
(B / step time), and the ratio to batch 1. Run by tools/bench_batched_vs_hf.sh.

Usage: python tools/hf_batched_generate.py [--batches 1,4,16] [--prompt 16] [--new 64] [--repeats 3]
"""
import argparse
import inspect
import json
import os
import statistics
import time

ap = argparse.ArgumentParser()
ap.add_argument("--batches", default="1,4,16")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--prompt", type=int, default=16)
ap.add_argument("--new", type=int, default=64)
ap.add_argument("--repeats", type=int, default=3)
args = ap.parse_args()
os.environ["OMP_NUM_THREADS"] = str(args.threads)

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

torch.set_num_threads(args.threads)
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(attn_implementation="sdpa")).eval()
new_api = "cache" in inspect.signature(model.forward).parameters


def fwd(ids, kv):
    if new_api:
        o = model(ids, cache=kv, use_cache=True)
        return o, o.cache
    o = model(ids, past_key_values=kv, use_cache=True)
    return o, o.past_key_values


results = []
with torch.inference_mode():
    fwd(torch.randint(0, 50257, (1, 8)), None)  # warm-up
    for b in [int(x) for x in args.batches.split(",")]:
        medians = []
        for r in range(args.repeats):
            g = torch.Generator().manual_seed(r)
            prompt = torch.randint(0, 50257, (b, args.prompt), generator=g)
            o, kv = fwd(prompt, None)
            nxt = o.logits[:, -1, :].argmax(-1, keepdim=True)
            steps = []
            for _ in range(args.new - 1):
                t = time.perf_counter()
                o, kv = fwd(nxt, kv)
                nxt = o.logits[:, -1, :].argmax(-1, keepdim=True)
                steps.append(time.perf_counter() - t)
            medians.append(statistics.median(steps))
        step = statistics.median(medians)
        results.append({"batch": b, "ms_per_step": step * 1e3, "tokens_per_second": b / step})
base = results[0]["tokens_per_second"]
for r in results:
    r["ratio_to_first"] = r["tokens_per_second"] / base
    print(f"transformers batch {r['batch']:>2}: {r['ms_per_step']:.2f} ms/step → {r['tokens_per_second']:.1f} tokens/s "
          f"aggregate = {r['ratio_to_first']:.2f}× batch {results[0]['batch']}")
print("JSON", json.dumps({"bench": "hf_batched_generate", "torch": torch.__version__, "results": results}))
