#!/usr/bin/env python3
"""TransformerLens reference numbers for `lushan explain`'s causal views (crates/lushan-model/tests/causal.rs).

Run by hand from the repository root with a venv that has transformer-lens (see tools/README.md):

    venv/bin/python tools/transformer_lens_fixture.py

Reads the Hugging Face GPT-2 checkpoint `crates/lushan-model/tests/fixtures/hf_gpt2_tiny/` (made by
make_hf_fixtures.py: V=96, n_positions=48, C=48, L=2, NH=4, gelu_new), loads it into TransformerLens 4's
`TransformerBridge` (the successor of `HookedTransformer`) with `enable_compatibility_mode(no_processing=True)`
— HookedTransformer's hook names, and *no* weight processing (no fold_ln, no centring of the writing weights
or of the unembedding), so every number is the checkpoint's own — and writes
`crates/lushan-model/tests/fixtures/transformer_lens_tiny.json`:

  - direct logit attribution at `position` of `target`, and of `target` minus `versus`: each head
    (`cache.stack_head_results`, no bias), the embeddings (hook_embed + hook_pos_embed), each layer's b_O, each
    MLP (hook_mlp_out), each put through `cache.apply_ln_to_stack` (centred, divided by the actual final
    residual's scale) and dotted with `ln_final.w * (W_U[:, target] - W_U[:, versus])`; ln_final.b's term;
  - zero ablation (hook_z of one head, hook_mlp_out of one MLP set to 0) and mean ablation (set to its mean
    over every position of `reference`): the change of log p(target) at `position`, and of the mean loss over
    `data`;
  - activation patching from `tokens` into `corrupted`: `patching.get_act_patch_resid_pre` and
    `patching.get_act_patch_attn_head_out_all_pos` (hook_z at every position), with the metric
    (logit diff − corrupted) / (clean − corrupted), logit diff = logit(target) − logit(versus) at `position`.
"""

from __future__ import annotations

import json
import tempfile
from functools import partial
from pathlib import Path

import torch
import transformer_lens
from tokenizers import Tokenizer, models
from transformer_lens import patching
from transformer_lens.model_bridge import TransformerBridge
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates" / "lushan-model" / "tests" / "fixtures"
CHECKPOINT = FIXTURES / "hf_gpt2_tiny"
OUT = FIXTURES / "transformer_lens_tiny.json"

SEED = 12
T = 12  # prompt length (clean and corrupted)
POSITION = T - 1
REFERENCE_LEN = 40
DATA_LEN = 30


def load():
    hf = GPT2LMHeadModel.from_pretrained(CHECKPOINT, attn_implementation="eager").eval()
    # The checkpoint has no tokenizer and every input here is token ids: a placeholder word-level one.
    vocab = {f"t{i}": i for i in range(hf.config.vocab_size)}
    words = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="t0", pad_token="t0", bos_token="t0",
                                        eos_token="t0")
    # TransformerLens reloads the tokenizer from its `name_or_path`: give it a directory to reload from.
    tokenizer_dir = tempfile.mkdtemp(prefix="tl-fixture-tokenizer-")
    tokenizer.save_pretrained(tokenizer_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    model = TransformerBridge.boot_transformers(str(CHECKPOINT), hf_model=hf, tokenizer=tokenizer)
    model.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    model.eval()
    # The same logits as transformers: the bridge changed nothing.
    ids = torch.arange(T).unsqueeze(0)
    diff = (model(ids) - hf(ids).logits).abs().max().item()
    assert diff < 1e-4, f"TransformerLens and transformers disagree by {diff}"
    return model, hf


def dla(model, hf, cache, logits, position: int, target: int, versus: int | None) -> dict:
    """Every component's direct contribution to logit(target) [− logit(versus)] at `position`."""
    ln_f = hf.transformer.ln_f
    w_u = hf.lm_head.weight.T  # (C, V), tied to wte
    direction = w_u[:, target] - (w_u[:, versus] if versus is not None else 0)
    w = ln_f.weight * direction  # (C)

    def through_ln(stack: torch.Tensor) -> list[float]:
        """(n, batch = 1, C) at `position` → each row's share."""
        scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=position)
        return (scaled.reshape(stack.shape[0], -1) @ w).tolist()

    heads = cache.stack_head_results(layer=-1, pos_slice=position)  # (L*NH, 1, C)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    head_values = through_ln(heads)
    embed = (cache["hook_embed"] + cache["hook_pos_embed"])[:, position].unsqueeze(0)
    bias = torch.stack([hf.transformer.h[l].attn.c_proj.bias for l in range(n_layers)])[:, None, :]
    mlp = torch.stack([cache[f"blocks.{l}.hook_mlp_out"][:, position] for l in range(n_layers)])
    total = logits[0, position, target] - (logits[0, position, versus] if versus is not None else 0)
    return {
        "total": float(total),
        "embed": through_ln(embed)[0],
        "heads": [head_values[l * n_heads : (l + 1) * n_heads] for l in range(n_layers)],
        "attn_bias": through_ln(bias),
        "mlp": through_ln(mlp),
        "ln_final_bias": float(ln_f.bias @ direction),
    }


def log_prob(model, tokens, position, target, hooks) -> float:
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    return torch.log_softmax(logits[0, position].double(), -1)[target].item()


def data_loss(model, tokens, hooks) -> float:
    return model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks).item()


def set_head(z, hook, head, value):
    z[:, :, head] = value
    return z


def set_all(x, hook, value):
    x[:] = value
    return x


def ablations(model, measure, means) -> dict:
    """`measure(hooks)` for every head and MLP, zeroed and (with `means`) set to its mean, minus the clean one."""
    clean = measure([])
    out = {}
    for kind in ["zero", "mean"]:
        heads, mlps = [], []
        for l in range(model.cfg.n_layers):
            row = []
            for h in range(model.cfg.n_heads):
                value = 0.0 if kind == "zero" else means["z"][l][h]
                row.append(measure([(f"blocks.{l}.attn.hook_z", partial(set_head, head=h, value=value))]) - clean)
            heads.append(row)
            value = 0.0 if kind == "zero" else means["mlp"][l]
            mlps.append(measure([(f"blocks.{l}.hook_mlp_out", partial(set_all, value=value))]) - clean)
        out[kind] = {"heads": heads, "mlp": mlps}
    out["clean"] = clean
    return out


def main() -> None:
    torch.manual_seed(SEED)
    torch.set_grad_enabled(False)
    model, hf = load()
    v = model.cfg.d_vocab
    tokens = torch.randint(0, v, (1, T))
    clean_logits, cache = model.run_with_cache(tokens)
    target = int(clean_logits[0, POSITION].argmax())
    # Corrupt a few early tokens, re-drawn until the corrupted run predicts something else at POSITION.
    for _ in range(100):
        corrupted = tokens.clone()
        corrupted[0, 2:6] = torch.randint(0, v, (4,))
        corrupted_logits = model(corrupted)
        if int(corrupted_logits[0, POSITION].argmax()) != target:
            break
    reference = torch.randint(0, v, (1, REFERENCE_LEN))
    data = torch.randint(0, v, (1, DATA_LEN))

    versus = int(corrupted_logits[0, POSITION].argmax())
    assert versus != target, "pick another SEED: the corruption keeps the top prediction"

    _, reference_cache = model.run_with_cache(reference)
    means = {
        "z": [reference_cache[f"blocks.{l}.attn.hook_z"][0].mean(0) for l in range(model.cfg.n_layers)],
        "mlp": [reference_cache[f"blocks.{l}.hook_mlp_out"][0].mean(0) for l in range(model.cfg.n_layers)],
    }

    attribution = dla(model, hf, cache, clean_logits, POSITION, target, None)
    attribution_versus = dla(model, hf, cache, clean_logits, POSITION, target, versus)
    logit = clean_logits[0, POSITION, target].item()
    assert abs(attribution["total"] - logit) < 1e-4, (attribution["total"], logit)
    parts = attribution["embed"] + sum(map(sum, attribution["heads"])) + sum(attribution["attn_bias"])
    parts += sum(attribution["mlp"]) + attribution["ln_final_bias"]
    assert abs(parts - logit) < 1e-4, f"the components add up to {parts}, the logit is {logit}"

    prediction = ablations(model, partial(log_prob, model, tokens, POSITION, target), means)
    over_data = ablations(model, partial(data_loss, model, data), means)

    def logit_diff(logits):
        return logits[0, POSITION, target] - logits[0, POSITION, versus]

    clean_diff, corrupted_diff = logit_diff(clean_logits).item(), logit_diff(corrupted_logits).item()

    def metric(logits):
        return (logit_diff(logits) - corrupted_diff) / (clean_diff - corrupted_diff)

    resid = patching.get_act_patch_resid_pre(model, corrupted, cache, metric)
    heads = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric)

    rounded = lambda x: json.loads(json.dumps(x), parse_float=lambda s: round(float(s), 7))  # noqa: E731
    fixture = {
        "about": "made by tools/transformer_lens_fixture.py from hf_gpt2_tiny/ with transformer_lens "
        f"{getattr(transformer_lens, '__version__', '?')}, torch {torch.__version__}; layers/heads 0-based",
        "tokens": tokens[0].tolist(),
        "corrupted": corrupted[0].tolist(),
        "reference": reference[0].tolist(),
        "data": data[0].tolist(),
        "position": POSITION,
        "target": target,
        "versus": versus,
        "attribution": attribution,
        "attribution_versus": attribution_versus,
        "ablation": prediction,
        "data_ablation": over_data,
        "patching": {
            "clean_diff": clean_diff,
            "corrupted_diff": corrupted_diff,
            "resid": resid.tolist(),
            "heads": heads.tolist(),
        },
    }
    OUT.write_text(json.dumps(rounded(fixture), indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
