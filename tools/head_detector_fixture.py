#!/usr/bin/env python3
"""Head-detection reference for lushan's head roles (crates/lushan-model/tests/head_roles.rs).

Run by hand from the repository root with the project venv (torch, transformers, transformer-lens):

    venv/bin/python tools/head_detector_fixture.py

Loads the tiny GPT-2 checkpoint of tools/make_hf_fixtures.py (crates/lushan-model/tests/fixtures/hf_gpt2_tiny,
V=96, n_positions=48, C=48, L=2, NH=4) with transformers (eager attention, float32), feeds it a seeded random
segment of 20 distinct tokens repeated twice (no BOS token is prepended: lushan has none), and scores every
head with TransformerLens' head detector for the three roles (`previous_token_head`, `duplicate_token_head`,
`induction_head`, error_measure "mul"), with exclude_bos / exclude_current_token off and on, into

    crates/lushan-model/tests/fixtures/head_detector.json

TransformerLens 4 removed `HookedTransformer` (its replacement, `TransformerBridge`, boots models by hub name
and wraps the same transformers modules), and `detect_head` tokenizes text, which this checkpoint has no
tokenizer for. So the script runs exactly what `detect_head` runs per head — `get_<role>_detection_pattern(tokens)`
and `compute_head_attention_similarity_score` from `transformer_lens.head_detector` — on the attention
patterns transformers computes (`output_attentions`; the patterns TransformerLens' hooks would cache).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel
from transformer_lens import head_detector

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates" / "lushan-model" / "tests" / "fixtures"
MODEL_DIR = FIXTURES / "hf_gpt2_tiny"
OUT = FIXTURES / "head_detector.json"
SEGMENT = 20
SEED = 12
ROLES = ["previous_token_head", "duplicate_token_head", "induction_head"]
SETTINGS = {
    "default": dict(exclude_bos=False, exclude_current_token=False),
    "exclude_bos_and_current": dict(exclude_bos=True, exclude_current_token=True),
}


def main() -> None:
    torch.manual_seed(0)
    hf = GPT2LMHeadModel.from_pretrained(MODEL_DIR, attn_implementation="eager").eval()
    generator = torch.Generator().manual_seed(SEED)
    segment = torch.randperm(hf.config.vocab_size, generator=generator)[:SEGMENT]
    tokens = torch.cat([segment, segment]).unsqueeze(0)  # (1, 2·SEGMENT)

    with torch.no_grad():
        attentions = hf(tokens, output_attentions=True).attentions  # L × (1, NH, T, T)

    scores: dict[str, dict[str, list[list[float]]]] = {}
    for name, flags in SETTINGS.items():
        scores[name] = {}
        for role in ROLES:
            pattern = getattr(head_detector, f"get_{role}_detection_pattern")(tokens.cpu())
            table = []
            for layer in range(hf.config.n_layer):
                row = []
                for head in range(hf.config.n_head):
                    # The detector zeroes excluded entries in place: give it a copy.
                    attention = attentions[layer][0, head].clone()
                    row.append(
                        head_detector.compute_head_attention_similarity_score(
                            attention, detection_pattern=pattern, error_measure="mul", **flags
                        )
                    )
                table.append(row)
            scores[name][role] = table

    OUT.write_text(
        json.dumps(
            {
                "source": "tools/head_detector_fixture.py (transformer_lens.head_detector, error_measure mul)",
                "model": "hf_gpt2_tiny",
                "tokens": tokens[0].tolist(),
                "scores": scores,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {OUT.relative_to(ROOT)}")
    for name in SETTINGS:
        for role in ROLES:
            print(name, role, [[round(s, 4) for s in row] for row in scores[name][role]])


if __name__ == "__main__":
    main()
