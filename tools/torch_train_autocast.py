#!/usr/bin/env python3
"""The PyTorch reference trainer (../shared/bench/gpt_train_torch.py) with its forward pass under
`torch.autocast("cpu", dtype=torch.bfloat16)`: PyTorch's CPU mixed precision, the comparison for
`lushan train --precision bf16` (linear layers in bf16, master weights and optimiser in f32; autocast keeps
layer norm, softmax and the cross-entropy in f32).

Usage: venv/bin/python tools/torch_train_autocast.py [the reference script's flags]
       (TORCH_SCRIPT=path overrides the reference script's location.)
Prints the reference script's output; its JSON line gains "autocast": "bf16".
"""
import importlib.util
import json
import os
import sys

import torch

here = os.path.dirname(os.path.abspath(__file__))
script = os.environ.get("TORCH_SCRIPT", os.path.join(here, "..", "..", "shared", "bench", "gpt_train_torch.py"))
spec = importlib.util.spec_from_file_location("gpt_train_torch", script)
ref = importlib.util.module_from_spec(spec)
sys.argv = [script] + sys.argv[1:]
spec.loader.exec_module(ref)  # parses the flags; main() is not run on import

plain_forward = ref.GPT.forward


def autocast_forward(self, idx, targets):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return plain_forward(self, idx, targets)


ref.GPT.forward = autocast_forward

# Tag the JSON line so a reader cannot mistake it for the f32 run.
real_print = print


def tagged_print(*args, **kwargs):
    if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("JSON "):
        res = json.loads(args[0][5:])
        res["autocast"] = "bf16"
        args = ("JSON " + json.dumps(res),)
    real_print(*args, **kwargs)


ref.print = tagged_print
ref.main()
