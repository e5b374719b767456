#!/usr/bin/env python3
"""Head-detection reference for lushan's head roles (crates/lushan-model/tests/head_roles.rs).

Run by hand from the repository root with the project venv (torch, transformers, transformer-lens):

    venv/bin/python tools/head_detector_fixture.py

Loads the tiny GPT-2 checkpoint of tools/make_hf_fixtures.py (crates/lushan-model/tests/fixtures/hf_gpt2_tiny,
V=96, n_positions=48, C=48, L=2, NH=4) with transformers, converts it into a TransformerLens
HookedTransformer *without* processing (no layer-norm folding, no centring: the model computes exactly what
transformers computes, checked below), feeds it a seeded random segment of 20 distinct tokens repeated twice
(no BOS token is prepended: lushan has none), and writes TransformerLens' head-detector scores for the three
roles (`previous_token_head`, `duplicate_token_head`, `induction_head`, error_measure "mul") with
exclude_bos / exclude_current_token off and on to

    crates/lushan-model/tests/fixtures/head_detector.json

`detect_head` itself takes text and tokenizes it; this checkpoint has no tokenizer, so the script runs what
`detect_head` runs on the token ids: `run_with_cache`, `get_<role>_detection_pattern(tokens)` and
`compute_head_attention_similarity_score` per head.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens import head_detector
from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

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


def load_hooked(hf: GPT2LMHeadModel) -> HookedTransformer:
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer,
        d_model=c.n_embd,
        d_head=c.n_embd // c.n_head,
        n_heads=c.n_head,
        d_mlp=4 * c.n_embd,
        d_vocab=c.vocab_size,
        n_ctx=c.n_positions,
        act_fn="gelu_new",
        normalization_type="LN",
        eps=c.layer_norm_epsilon,
        positional_embedding_type="standard",
        default_prepend_bos=False,
        dtype=torch.float32,
        device="cpu",
    )
    model = HookedTransformer(cfg)
    state = convert_gpt2_weights(hf, cfg)
    model.load_and_process_state_dict(
        state, fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False
    )
    model.eval()
    return model


def main() -> None:
    torch.manual_seed(0)
    hf = GPT2LMHeadModel.from_pretrained(MODEL_DIR, attn_implementation="eager").eval()
    model = load_hooked(hf)
    generator = torch.Generator().manual_seed(SEED)
    segment = torch.randperm(hf.config.vocab_size, generator=generator)[:SEGMENT]
    tokens = torch.cat([segment, segment]).unsqueeze(0)  # (1, 2·SEGMENT)

    with torch.no_grad():
        hf_out = hf(tokens, output_attentions=True)
        logits, cache = model.run_with_cache(tokens, remove_batch_dim=True)
    # The conversion is exact: TransformerLens computes what transformers computes.
    assert torch.allclose(logits, hf_out.logits, atol=1e-4), (logits - hf_out.logits).abs().max()
    for layer in range(hf.config.n_layer):
        assert torch.allclose(cache["pattern", layer, "attn"], hf_out.attentions[layer][0], atol=1e-5)

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
                    attention = cache["pattern", layer, "attn"][head].clone()
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
                "source": "tools/head_detector_fixture.py (TransformerLens head_detector, error_measure mul)",
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
