#!/usr/bin/env python3
"""Checks that `peft` loads a LoRA adapter directory (e.g. one lushan wrote) cleanly, and prints its logits.

    venv/bin/python tools/check_peft_roundtrip.py DIR_BASE DIR_ADAPTER [--ids 1,2,3;4,5,6] [--expect FILE]

DIR_BASE is a transformers GPT-2 directory (GPT2LMHeadModel or GPT2ForSequenceClassification, picked from
its config's `architectures`); DIR_ADAPTER holds adapter_config.json + adapter_model.safetensors. The script

1. loads the adapter with `peft.PeftModel.from_pretrained(base, DIR_ADAPTER)`, failing on any warning about
   missing or unexpected keys;
2. asserts that the tensors of adapter_model.safetensors and the adapter state PEFT now holds
   (`get_peft_model_state_dict`, what PEFT itself would save) have exactly the same names, and equal values —
   so no tensor was ignored (unexpected) and none was left at its initial value (missing);
3. loads the file a second time through `load_adapter` and asserts that its load result lists no missing or
   unexpected keys;
4. prints the logits for `--ids` (rows separated by `;`) — or, with `--expect FILE` (JSON with `input_ids` and
   `logits`, e.g. the `expected.json` lushan's ignored test `write_adapters_for_peft_roundtrip` writes), runs
   those ids and fails if any logit differs by more than `--tol` (default 1e-4).

Exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

import peft
import transformers
from peft import PeftModel
from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel


def load_base(d: Path):
    config = json.loads((d / "config.json").read_text())
    cls = GPT2ForSequenceClassification if "GPT2ForSequenceClassification" in config.get("architectures", []) \
        else GPT2LMHeadModel
    model, info = cls.from_pretrained(d, output_loading_info=True, attn_implementation="eager")
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise SystemExit(f"FAIL: the base model {d} does not load cleanly: {problems}")
    return model.float().eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path)
    parser.add_argument("adapter", type=Path)
    parser.add_argument("--ids", default="1,2,3,4,5,6,7,8", help="input ids, rows separated by ';'")
    parser.add_argument("--expect", type=Path, help="JSON with input_ids and logits to compare against")
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    print(f"peft {peft.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(load_base(args.base), args.adapter).eval()
    key_warnings = [str(w.message) for w in caught if re.search(r"missing|unexpected", str(w.message), re.I)]
    if key_warnings:
        print(f"FAIL: PeftModel.from_pretrained warned: {key_warnings}")
        return 1

    file = load_file(str(args.adapter / "adapter_model.safetensors"))
    state = peft.get_peft_model_state_dict(model, save_embedding_layers=False)
    unexpected, missing = sorted(set(file) - set(state)), sorted(set(state) - set(file))
    if unexpected or missing:
        print(f"FAIL: tensors in the file PEFT does not use: {unexpected}; adapter tensors the file lacks: {missing}")
        return 1
    different = [k for k in file if not torch.equal(file[k].to(state[k].dtype), state[k])]
    if different:
        print(f"FAIL: tensors whose loaded values differ from the file: {different}")
        return 1
    result = model.load_adapter(args.adapter, adapter_name="recheck")
    if result.missing_keys or result.unexpected_keys:
        print(f"FAIL: load_adapter: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
        return 1
    model.delete_adapter("recheck")
    model.set_adapter("default")
    config = model.peft_config["default"]
    print(f"ok: {len(file)} tensors loaded, none missing or unexpected; task {config.task_type}, r={config.r}, "
          f"lora_alpha={config.lora_alpha}, target_modules={sorted(config.target_modules)}, "
          f"modules_to_save={config.modules_to_save}")

    if args.expect:
        expected = json.loads(args.expect.read_text())
        ids = torch.tensor(expected["input_ids"])
    else:
        ids = torch.tensor([[int(x) for x in row.split(",")] for row in args.ids.split(";")])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    if args.expect:
        want = torch.tensor(expected["logits"], dtype=torch.float32).reshape(logits.shape)
        diff = (logits - want).abs().max().item()
        print(f"max |logits (PEFT, adapter) - expected| = {diff:.3e} over {tuple(logits.shape)}")
        if diff > args.tol:
            print(f"FAIL: above the tolerance {args.tol}")
            return 1
    else:
        torch.set_printoptions(precision=5, linewidth=120)
        print(f"logits {tuple(logits.shape)}:\n{logits}")
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
