#!/usr/bin/env python3
"""Fine-tuning fixtures from real `transformers` + `peft`: a GPT-2 sequence classifier and LoRA adapters,
for crates/lushan-model/tests/lora_peft.rs and the classifier / LoRA forward-backward tests.

Run by hand from the repository root (see tools/README.md for the venv; needs `peft` too):

    venv/bin/python tools/make_finetune_fixtures.py

Writes, under crates/lushan-model/tests/fixtures/:

  hf_gpt2_classifier_tiny/   GPT2ForSequenceClassification (save_pretrained) + expected.{json,safetensors}:
                             logits, loss, every gradient, 3 AdamW steps (losses, grad norms, final params)
  peft_lora_tiny_lm/         base/ (GPT2LMHeadModel), adapter/ (PEFT LoRA, CAUSAL_LM, c_attn+c_proj+c_fc)
                             + expected.{json,safetensors}: logits, masked loss, LoRA gradients, merged logits
  peft_lora_tiny_cls/        adapter/ (PEFT LoRA, SEQ_CLS, c_attn, score in modules_to_save) over the classifier
                             above + expected.{json,safetensors}: logits, loss, LoRA and score gradients

Every expected tensor is computed from what was read back from the saved directories (`from_pretrained`),
so the fixtures test the files, not the in-memory objects. `expected.json` lists every tensor of
`expected.safetensors` (shape, dtype, meaning) beside the versions, seeds and the configuration.
Deterministic: re-running with the same library versions gives byte-identical files (PYTHONHASHSEED is pinned
because PEFT writes `target_modules` from a Python set).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

if os.environ.get("PYTHONHASHSEED") != "0":  # PEFT saves target_modules as list(set): pin the set order
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

import peft
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import max_abs, save_reproducible, versions  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "crates" / "lushan-model" / "tests" / "fixtures"

V, N_POSITIONS, C, L, NH = 96, 16, 32, 2, 2
LN_EPS = 1e-5
NUM_LABELS = 3
ID2LABEL = {0: "neg", 1: "neu", 2: "pos"}
PAD = 95
# Picked among seeds 1..30 (same init and batch rule) for labels covering all three classes and a slow
# AdamW trajectory (losses 1.70, 1.49, 0.18), so the three steps are not all in the saturated regime.
SEED_CLS = 16  # classifier weights, its batch
SEED_LM = 22  # LM base weights, its batch, LoRA init
SEED_CLS_LORA = 23  # classifier LoRA init, its lora_B and score re-draw
# Weights re-drawn after the model's own init, from the same stream, in named_parameters order (as
# make_hf_fixtures.py does): matrices (embeddings, Conv1D, score) N(0, STD_MATRIX), biases N(0, STD_BIAS),
# LayerNorm weights 1 + N(0, STD_LN), LayerNorm biases N(0, STD_LN).
STD_MATRIX = 0.25
STD_BIAS = 0.1
STD_LN = 0.1
# LoRA: PEFT's own init for lora_A (kaiming-uniform, a=sqrt(5)); lora_B (zero after init) re-drawn
# N(0, STD_LORA_B) so that the adapter changes the outputs.
R, ALPHA = 4, 8
STD_LORA_B = 0.25
STD_SCORE_DELTA = 0.1  # the SEQ_CLS adapter's score head = base score + N(0, this): "trained", not the base's

B_CLS, T_CLS = 3, 10
CLS_LENGTHS = (6, 10, 1)  # real tokens per row; the rest is PAD (right padding)
B_LM, T_LM = 2, 10
LM_MASKED = 4  # labels = -100 on the first LM_MASKED positions of each row

LR, BETAS, ADAM_EPS, WEIGHT_DECAY, CLIP, STEPS = 1e-2, (0.9, 0.99), 1e-8, 0.1, 1.0, 3
TOL_CHECK = 1e-5
MAX_TOTAL_BYTES = 800_000

COMMON = dict(
    vocab_size=V, n_positions=N_POSITIONS, n_embd=C, n_layer=L, n_head=NH, activation_function="gelu_new",
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0, layer_norm_epsilon=LN_EPS,
    bos_token_id=None, eos_token_id=None,
)


def cls_config() -> GPT2Config:
    return GPT2Config(
        **COMMON, pad_token_id=PAD, num_labels=NUM_LABELS, id2label=dict(ID2LABEL),
        label2id={v: k for k, v in ID2LABEL.items()}, problem_type="single_label_classification",
    )


def lm_config() -> GPT2Config:
    return GPT2Config(**COMMON)


CONFIG_TEXT = (
    f"GPT2Config(vocab_size={V}, n_positions={N_POSITIONS}, n_embd={C}, n_layer={L}, n_head={NH}, "
    "activation_function='gelu_new', resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, summary_first_dropout=0, "
    f"layer_norm_epsilon={LN_EPS}, bos_token_id=None, eos_token_id=None)"
)
CLS_CONFIG_TEXT = CONFIG_TEXT[:-1] + (
    f", pad_token_id={PAD}, num_labels={NUM_LABELS}, id2label={ID2LABEL}, "
    "problem_type='single_label_classification')"
)
REDRAW_TEXT = (
    "then, in named_parameters order from the same stream, torch.randn per tensor: embeddings, Conv1D weights "
    f"and score.weight * {STD_MATRIX}, biases * {STD_BIAS}, LayerNorm weights 1 + {STD_LN} * z, LayerNorm "
    f"biases {STD_LN} * z"
)


def redraw(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm_head.weight is wte: listed once
            z = torch.randn(p.shape, dtype=p.dtype)
            if ".ln_" in name or ".ln_f." in name:
                p.copy_(1.0 + STD_LN * z if name.endswith(".weight") else STD_LN * z)
            elif name.endswith(".bias"):
                p.copy_(STD_BIAS * z)
            else:
                p.copy_(STD_MATRIX * z)


def load_back(cls, d: Path):
    model, info = cls.from_pretrained(d, output_loading_info=True, attn_implementation="eager")
    problems = {k: v for k, v in info.items() if v}
    assert not problems, (d, problems)
    return model.float().eval()


def fresh_dir(d: Path) -> Path:
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def header(path: Path) -> dict[str, dict]:
    """name -> {dtype, shape} of a safetensors file, and its metadata under `__metadata__`."""
    with safe_open(str(path), "pt") as f:
        out = {k: {"dtype": str(f.get_slice(k).get_dtype()), "shape": list(f.get_slice(k).get_shape())}
               for k in sorted(f.keys())}
        out["__metadata__"] = f.metadata()
    return out


def describe(tensors: dict[str, torch.Tensor], what: dict[str, str]) -> dict[str, dict]:
    """The `tensors` section of expected.json: every tensor of expected.safetensors with shape and meaning."""
    out = {}
    for name, t in sorted(tensors.items()):
        key = name.split(".", 1)[0] + "." if "." in name else name
        out[name] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                     "what": what.get(name, what.get(key, ""))}
    return out


def write_expected(d: Path, tensors: dict[str, torch.Tensor], meta: dict, what: dict[str, str]) -> None:
    for name, t in tensors.items():
        assert t.dtype in (torch.float32, torch.int32), (name, t.dtype)
        assert torch.isfinite(t.float()).all(), name
    meta = {**meta, "tensors": describe(tensors, what)}
    save_reproducible({k: v.contiguous() for k, v in tensors.items()}, d / "expected.safetensors", meta)
    (d / "expected.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def all_versions() -> dict[str, str]:
    return {**versions(), "peft_version": peft.__version__}


def drop_model_card(adapter_dir: Path) -> None:
    """PEFT's save_pretrained also writes a README.md model-card template (boilerplate, no data)."""
    card = adapter_dir / "README.md"
    assert card.exists(), "peft no longer writes a model card: update this script and tools/README.md"
    card.unlink()


# --------------------------------------------------------------------------------------------------------
# 1. GPT2ForSequenceClassification
# --------------------------------------------------------------------------------------------------------

def cls_batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, PAD, (B_CLS, T_CLS), generator=gen)  # real tokens never equal PAD
    for row, n in enumerate(CLS_LENGTHS):
        ids[row, n:] = PAD
    labels = torch.randint(0, NUM_LABELS, (B_CLS,), generator=gen)
    return ids, labels


def pooled_positions(ids: torch.Tensor) -> torch.Tensor:
    """The last position whose token is not PAD, per row (what GPT2ForSequenceClassification pools)."""
    return torch.tensor([max(t for t in range(ids.shape[1]) if ids[b, t] != PAD) for b in range(ids.shape[0])])


def check_pooling(model: GPT2ForSequenceClassification, ids: torch.Tensor, logits: torch.Tensor) -> float:
    """Our reading of transformers' pooling: score(hidden state at the last non-PAD token), with or without
    an attention mask (causal attention never lets a real token see the right padding)."""
    with torch.no_grad():
        hidden = model.transformer(ids).last_hidden_state
        pos = pooled_positions(ids)
        manual = model.score(hidden[torch.arange(ids.shape[0]), pos])
        masked = model(ids, attention_mask=(ids != PAD).long()).logits
    diff = max(max_abs(manual, logits), max_abs(masked, logits))
    assert diff < TOL_CHECK, diff
    return diff


def decay_groups(named: list[tuple[str, torch.nn.Parameter]]) -> tuple[list[str], list[str]]:
    decay = [n for n, p in named if p.dim() == 2]  # wte, wpe, Conv1D weights, score
    return decay, [n for n, p in named if p.dim() != 2]


def train_classifier(model: GPT2ForSequenceClassification, ids: torch.Tensor, labels: torch.Tensor) -> dict:
    """Forward/backward at the initial weights, then STEPS AdamW steps on the same batch."""
    named = list(model.named_parameters())
    out = model(ids, labels=labels)
    out.loss.backward()
    result = {"logits": out.logits.detach().clone(), "loss": out.loss.detach().reshape(1).clone()}
    result.update({f"grad.{n}": p.grad.detach().clone() for n, p in named})
    model.zero_grad(set_to_none=True)

    decay, no_decay = decay_groups(named)
    params = dict(named)
    opt = torch.optim.AdamW(
        [{"params": [params[n] for n in decay], "weight_decay": WEIGHT_DECAY},
         {"params": [params[n] for n in no_decay], "weight_decay": 0.0}],
        lr=LR, betas=BETAS, eps=ADAM_EPS, foreach=False, fused=False,
    )
    losses, norms = [], []
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = model(ids, labels=labels).loss
        losses.append(loss.item())
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=CLIP).item())
        opt.step()
    with torch.no_grad():
        result["loss_after"] = model(ids, labels=labels).loss.reshape(1).clone()
    result["adamw_losses"] = torch.tensor(losses, dtype=model.dtype)
    result["grad_norms"] = torch.tensor(norms, dtype=model.dtype)
    result.update({f"param_after.{n}": p.detach().clone() for n, p in named})
    return result


def make_classifier() -> dict:
    d = fresh_dir(OUT_DIR / "hf_gpt2_classifier_tiny")
    torch.manual_seed(SEED_CLS)
    model = GPT2ForSequenceClassification(cls_config()).eval()
    redraw(model)
    ids, labels = cls_batch(torch.Generator().manual_seed(SEED_CLS))
    model.save_pretrained(d)
    assert not list(d.glob("*.bin")), "save_pretrained wrote a pickle"
    saved = header(d / "model.safetensors")
    assert "score.weight" in saved and all(v["dtype"] == "F32" for k, v in saved.items() if k != "__metadata__")

    model = load_back(GPT2ForSequenceClassification, d)
    assert model.config.pad_token_id == PAD and model.config.num_labels == NUM_LABELS
    f32 = train_classifier(model, ids, labels)
    pooling_diff = check_pooling(load_back(GPT2ForSequenceClassification, d), ids, f32["logits"])
    want_loss = F.cross_entropy(f32["logits"], labels)
    assert abs(want_loss.item() - f32["loss"].item()) < TOL_CHECK
    f64 = train_classifier(load_back(GPT2ForSequenceClassification, d).double(), ids, labels)
    precision = {k: max_abs(f32[k], f64[k].float()) for k in sorted(f32)}
    for l in range(L):  # the key-bias slice apart (see key_bias_note)
        name = f"param_after.transformer.h.{l}.attn.c_attn.bias"
        rest = [torch.cat([t[name][:C], t[name][2 * C:]]).float() for t in (f32, f64)]
        precision[f"{name} without [C:2C]"] = max_abs(*rest)
        precision[f"{name}[C:2C]"] = max_abs(f32[name][C:2 * C], f64[name][C:2 * C].float())
    key_bias_noise = max(f32[f"grad.transformer.h.{l}.attn.c_attn.bias"][C:2 * C].abs().max().item()
                         for l in range(L))

    names = [k for k in saved if k != "__metadata__"]
    decay, no_decay = decay_groups(list(model.named_parameters()))
    meta = {
        "fixture": d.name,
        "generator": "tools/make_finetune_fixtures.py",
        **all_versions(),
        "seed": SEED_CLS,
        "config": CLS_CONFIG_TEXT,
        "init": f"torch.manual_seed({SEED_CLS}); GPT2ForSequenceClassification(config).eval(); {REDRAW_TEXT}",
        "batch": f"g = torch.Generator().manual_seed({SEED_CLS}); input_ids = torch.randint(0, {PAD}, "
                 f"({B_CLS}, {T_CLS}), generator=g) then row b set to PAD={PAD} from position "
                 f"{list(CLS_LENGTHS)}[b] on (right padding); labels = torch.randint(0, {NUM_LABELS}, ({B_CLS},), "
                 "generator=g)",
        "saved_as": "model.save_pretrained(dir)",
        "saved_tensor_names": names,
        "expected_from": "GPT2ForSequenceClassification.from_pretrained(dir, attn_implementation='eager'), "
                         "float32, eval mode (all dropouts are 0), no attention_mask (the logits are the same "
                         "with one: checked)",
        "input_ids": ids.tolist(),
        "labels": labels.tolist(),
        "lengths": list(CLS_LENGTHS),
        "pooled_positions": pooled_positions(ids).tolist(),
        "pooling": "logits[b] = score(last_hidden_state[b, p_b]) with p_b the last position whose token is not "
                   f"pad_token_id={PAD}",
        "loss_rule": "mean cross-entropy over the B rows (problem_type single_label_classification)",
        "loss": f32["loss"].item(),
        "adamw_losses": f32["adamw_losses"].tolist(),
        "grad_norms": f32["grad_norms"].tolist(),
        "loss_after": f32["loss_after"].item(),
        "optimizer": "torch.optim.AdamW(foreach=False, fused=False)",
        "lr": LR, "lr_schedule": "constant", "betas": list(BETAS), "adam_eps": ADAM_EPS,
        "weight_decay": WEIGHT_DECAY,
        "decay_params": decay,
        "no_decay_params": no_decay,
        "decay_rule": "weight decay on 2-D tensors (wte, wpe, Conv1D weights, score), none on biases and LayerNorm",
        "grad_clip": CLIP,
        "grad_clip_rule": "torch.nn.utils.clip_grad_norm_ over all parameters: grads *= min(1, 1.0 / (total + "
                          "1e-6)); grad_norms holds the pre-clip total",
        "steps": STEPS,
        "step_order": "zero_grad; loss = forward (recorded in adamw_losses[i]); backward; clip; AdamW step; "
                      "loss_after = the loss after the last step",
        "layout": "grad.X and param_after.X have the name and shape of tensor X in model.safetensors "
                  "(Hugging Face names; Conv1D weights (in, out))",
        "check_pooling_max_abs_diff": pooling_diff,
        "f32_vs_f64_max_abs_diff": precision,
        "key_bias_note": "the key slice [C:2C] of every attn.c_attn.bias has a mathematically zero gradient: its "
                         f"grad entries are f32 rounding noise (here up to {key_bias_noise:.1e}) that AdamW turns "
                         "into O(lr) moves, so param_after.*.attn.c_attn.bias[C:2C] is not reproducible (it never "
                         "changes logits or loss; see f32_vs_f64_max_abs_diff); compare that slice loosely or skip it",
    }
    tensors = {"input_ids": ids.to(torch.int32), "labels": labels.to(torch.int32),
               "pooled_positions": pooled_positions(ids).to(torch.int32), **f32}
    what = {
        "input_ids": f"(B, T) int32, right-padded with {PAD}",
        "labels": "(B,) int32 class ids",
        "pooled_positions": "(B,) int32: the position each row's logits are read at",
        "logits": "(B, num_labels) at the initial weights",
        "loss": "(1,) mean cross-entropy at the initial weights",
        "grad.": "d loss / d X at the initial weights, before clipping, for every tensor X of model.safetensors",
        "adamw_losses": f"({STEPS},) the loss before each AdamW step (adamw_losses[0] == loss)",
        "grad_norms": f"({STEPS},) pre-clip global gradient norm at each step",
        "loss_after": "(1,) the loss after the last step",
        "param_after.": f"tensor X after {STEPS} AdamW steps",
    }
    write_expected(d, tensors, meta, what)
    print(f"[write] {d.relative_to(ROOT)}: loss {f32['loss'].item():.6f}, adamw losses "
          f"{[round(x, 6) for x in f32['adamw_losses'].tolist()]}, pooling check {pooling_diff:.1e}, "
          f"worst f32 vs f64 {max(precision.values()):.1e}")
    return {"dir": d, "ids": ids, "labels": labels}


# --------------------------------------------------------------------------------------------------------
# 2. and 3. PEFT LoRA adapters
# --------------------------------------------------------------------------------------------------------

def redraw_lora(model: PeftModel, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(STD_LORA_B * torch.randn(p.shape, generator=gen))
            elif ".modules_to_save." in name:
                p.add_(STD_SCORE_DELTA * torch.randn(p.shape, generator=gen))


def save_adapter(model: PeftModel, adapter_dir: Path) -> None:
    """save_pretrained from inside the adapter directory, where the relative base_model_name_or_path resolves
    (PEFT opens the base's config.json there to check the vocabulary size)."""
    adapter_dir.mkdir(parents=True)
    with contextlib.chdir(adapter_dir):
        model.save_pretrained(adapter_dir)
    drop_model_card(adapter_dir)


def saved_name(param_name: str) -> str:
    """A PeftModel parameter's name in adapter_model.safetensors (PEFT drops the adapter name, and stores a
    modules_to_save copy under the wrapped module's own name)."""
    return param_name.replace(".modules_to_save.default.", ".").replace(".default.", ".")


def load_adapter_checked(base, adapter_dir: Path) -> PeftModel:
    """PeftModel.from_pretrained, insisting that every tensor of the file lands and nothing is missing."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
    loading = [str(w.message) for w in caught if re.search(r"missing|unexpected", str(w.message), re.IGNORECASE)]
    assert not loading, loading  # e.g. "Found missing adapter keys while loading the checkpoint"
    file = load_file(str(adapter_dir / "adapter_model.safetensors"))
    state = peft.get_peft_model_state_dict(model, save_embedding_layers=False)
    assert set(file) == set(state), (sorted(set(file) ^ set(state)))
    assert all(torch.equal(file[k], state[k]) for k in file)
    return model


def check_merge_math(merged, base_sd: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor]) -> float:
    """merge_and_unload must equal W_hf + (alpha/r) (B A)^T for every adapted Conv1D weight (in, out)."""
    worst = 0.0
    sd = merged.state_dict()
    for name in adapter:
        if not name.endswith(".lora_A.weight"):
            continue
        module = name.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        a, b = adapter[name], adapter[name.replace(".lora_A.", ".lora_B.")]
        want = base_sd[f"{module}.weight"] + (ALPHA / R) * (b @ a).T
        worst = max(worst, max_abs(sd[f"{module}.weight"], want))
    assert worst < TOL_CHECK, worst
    return worst


def lora_meta(d: Path, adapter_dir: Path, seed: str, description: dict) -> dict:
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = header(adapter_dir / "adapter_model.safetensors")
    return {
        "fixture": d.name,
        "generator": "tools/make_finetune_fixtures.py",
        **all_versions(),
        "seed": seed,
        "r": R, "lora_alpha": ALPHA, "scale": ALPHA / R, "lora_dropout": 0.0,
        "adapter_files": sorted(p.name for p in adapter_dir.iterdir()),
        "adapter_config": config,
        "adapter_tensors": tensors,
        "lora_init": "PEFT's own lora_A init (kaiming_uniform_, a=sqrt(5): U(-1/sqrt(in), 1/sqrt(in))) from the "
                     f"torch stream; lora_B re-drawn N(0, {STD_LORA_B}) (PEFT initialises it to 0)",
        "model_card": "save_pretrained's README.md (a model-card template) is deleted",
        "merge_rule": "W_hf (in, out) += (lora_alpha / r) * (lora_B @ lora_A)^T; in lushan's (out, in) layout "
                      "W += scale * B A",
        **description,
    }


def make_lora_lm() -> None:
    d = fresh_dir(OUT_DIR / "peft_lora_tiny_lm")
    torch.manual_seed(SEED_LM)
    base = GPT2LMHeadModel(lm_config()).eval()
    redraw(base)
    gen = torch.Generator().manual_seed(SEED_LM)
    ids = torch.randint(0, V, (B_LM, T_LM), generator=gen)
    base.save_pretrained(d / "base")

    config = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["c_attn", "c_proj", "c_fc"],
                        fan_in_fan_out=True, task_type="CAUSAL_LM")
    model = get_peft_model(load_back(GPT2LMHeadModel, d / "base"), config)
    model.peft_config["default"].base_model_name_or_path = "../base"  # relative: no machine path in the file
    redraw_lora(model, gen)
    save_adapter(model, d / "adapter")

    model = load_adapter_checked(load_back(GPT2LMHeadModel, d / "base"), d / "adapter")
    labels = ids.clone()
    labels[:, :LM_MASKED] = -100
    targets = torch.full_like(ids, -100)
    targets[:, :-1] = labels[:, 1:]
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    logits = out.logits.detach()
    shifted = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    lushan_convention = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)
    assert abs(shifted.item() - out.loss.item()) < TOL_CHECK and abs(lushan_convention.item() - out.loss.item()) < TOL_CHECK
    grads = {f"grad.{saved_name(n)}": p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    adapter = load_file(str(d / "adapter" / "adapter_model.safetensors"))
    assert {k.removeprefix("grad.") for k in grads} == set(adapter), sorted(grads)

    base_logits = load_back(GPT2LMHeadModel, d / "base")(ids).logits.detach()
    merged_model = copy.deepcopy(model).merge_and_unload().eval()
    merged = merged_model(ids).logits.detach()
    merge_math = check_merge_math(merged_model, load_back(GPT2LMHeadModel, d / "base").state_dict(), adapter)
    merged_vs_adapter = max_abs(merged, logits)
    assert merged_vs_adapter < TOL_CHECK, merged_vs_adapter
    adapter_effect = max_abs(base_logits, logits)
    assert adapter_effect > 0.5, f"the adapter barely changes the logits ({adapter_effect})"

    meta = lora_meta(d, d / "adapter", f"torch.manual_seed({SEED_LM}) before the base model; "
                     f"g = torch.Generator().manual_seed({SEED_LM}) for input_ids then lora_B", {
        "base": "base/: GPT2LMHeadModel.save_pretrained, " + CONFIG_TEXT + f"; init: torch.manual_seed({SEED_LM}); "
                f"GPT2LMHeadModel(config).eval(); {REDRAW_TEXT}",
        "adapter": "adapter/: get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, "
                   "target_modules=['c_attn', 'c_proj', 'c_fc'], fan_in_fan_out=True, task_type='CAUSAL_LM'"
                   "); then peft_config['default'].base_model_name_or_path = '../base' (PEFT "
                   "records the base's absolute path); save_pretrained(dir)",
        "expected_from": "PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base), adapter, "
                         "is_trainable=True), float32, eval mode",
        "input_ids": ids.tolist(),
        "labels": labels.tolist(),
        "targets": targets.tolist(),
        "loss_rule": "transformers shifts inside the model: loss = CE(logits[:, :-1], labels[:, 1:]) averaged over "
                     "the targets that are not -100; in lushan's (inputs, targets) convention targets[:, t] = "
                     "labels[:, t + 1] and targets[:, T-1] = -100 (IGNORE), the same number",
        "loss": out.loss.item(),
        "check_merged_vs_adapter_max_abs_logits_diff": merged_vs_adapter,
        "check_merge_rule_max_abs_weight_diff": merge_math,
        "adapter_effect_max_abs_logits_diff": adapter_effect,
    })
    tensors = {"input_ids": ids.to(torch.int32), "labels": labels.to(torch.int32), "targets": targets.to(torch.int32),
               "logits": logits, "loss": out.loss.detach().reshape(1), "merged_logits": merged,
               "base_logits": base_logits, **grads}
    what = {
        "input_ids": "(B, T) int32",
        "labels": "(B, T) int32, transformers' convention (-100 = ignored; shifted inside the model)",
        "targets": "(B, T) int32, lushan's convention: labels shifted left by one, -100 = IGNORE_INDEX",
        "logits": "(B, T, V) of the base model with the adapter",
        "loss": "(1,) masked mean cross-entropy with the adapter",
        "merged_logits": "(B, T, V) of merge_and_unload()",
        "base_logits": "(B, T, V) of the base model alone",
        "grad.": "d loss / d X for every tensor X of adapter/adapter_model.safetensors (same name and shape)",
    }
    write_expected(d, tensors, meta, what)
    print(f"[write] {d.relative_to(ROOT)}: loss {out.loss.item():.6f}, merged vs adapter {merged_vs_adapter:.1e}, "
          f"merge rule {merge_math:.1e}, adapter effect {adapter_effect:.2f}")


def make_lora_cls(cls: dict) -> None:
    d = fresh_dir(OUT_DIR / "peft_lora_tiny_cls")
    base_dir, ids, labels = cls["dir"], cls["ids"], cls["labels"]
    torch.manual_seed(SEED_CLS_LORA)
    config = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["c_attn"], fan_in_fan_out=True,
                        task_type="SEQ_CLS")
    model = get_peft_model(load_back(GPT2ForSequenceClassification, base_dir), config)
    model.peft_config["default"].base_model_name_or_path = "../../hf_gpt2_classifier_tiny"
    redraw_lora(model, torch.Generator().manual_seed(SEED_CLS_LORA))
    save_adapter(model, d / "adapter")

    model = load_adapter_checked(load_back(GPT2ForSequenceClassification, base_dir), d / "adapter")
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    grads = {f"grad.{saved_name(n)}": p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    adapter = load_file(str(d / "adapter" / "adapter_model.safetensors"))
    assert {k.removeprefix("grad.") for k in grads} == set(adapter), sorted(grads)
    base_score = load_file(str(base_dir / "model.safetensors"))["score.weight"]
    score_moved = max_abs(adapter["base_model.model.score.weight"], base_score)
    assert score_moved > 0.1, score_moved

    base_model = load_back(GPT2ForSequenceClassification, base_dir)
    base_logits = base_model(ids).logits.detach()
    merged_model = copy.deepcopy(model).merge_and_unload().eval()
    merged = merged_model(ids).logits.detach()
    merge_math = check_merge_math(merged_model, base_model.state_dict(), adapter)
    assert torch.equal(merged_model.score.weight, adapter["base_model.model.score.weight"])
    merged_vs_adapter = max_abs(merged, out.logits)
    assert merged_vs_adapter < TOL_CHECK, merged_vs_adapter
    adapter_effect = max_abs(base_logits, out.logits)
    assert adapter_effect > 0.1, adapter_effect

    meta = lora_meta(d, d / "adapter", f"torch.manual_seed({SEED_CLS_LORA}) before get_peft_model; "
                     f"g = torch.Generator().manual_seed({SEED_CLS_LORA}) for lora_B then the score delta", {
        "base": "../hf_gpt2_classifier_tiny (its initial weights, as saved)",
        "adapter": "adapter/: get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, "
                   "target_modules=['c_attn'], fan_in_fan_out=True, task_type='SEQ_CLS'"
                   "); base_model_name_or_path set to '../../hf_gpt2_classifier_tiny'; save_pretrained(dir). PEFT adds "
                   "modules_to_save ['classifier', 'score'] for SEQ_CLS and wraps `score` in a trainable copy, "
                   "saved as base_model.model.score.weight",
        "score": f"the trainable copy (modules_to_save) = base score.weight + N(0, {STD_SCORE_DELTA}) (as if "
                 "trained), so it differs from the base's score head",
        "trainable_parameter_names": trainable,
        "expected_from": "PeftModel.from_pretrained(GPT2ForSequenceClassification.from_pretrained(base), adapter, "
                         "is_trainable=True), float32, eval mode",
        "input_ids": ids.tolist(),
        "labels": labels.tolist(),
        "pooled_positions": pooled_positions(ids).tolist(),
        "loss_rule": "mean cross-entropy over the B rows, logits pooled at the last non-pad token",
        "loss": out.loss.item(),
        "check_merged_vs_adapter_max_abs_logits_diff": merged_vs_adapter,
        "check_merge_rule_max_abs_weight_diff": merge_math,
        "adapter_effect_max_abs_logits_diff": adapter_effect,
        "score_vs_base_score_max_abs_diff": score_moved,
    })
    tensors = {"input_ids": ids.to(torch.int32), "labels": labels.to(torch.int32), "logits": out.logits.detach(),
               "loss": out.loss.detach().reshape(1), "merged_logits": merged, "base_logits": base_logits, **grads}
    what = {
        "input_ids": f"(B, T) int32, right-padded with {PAD} (same batch as hf_gpt2_classifier_tiny)",
        "labels": "(B,) int32",
        "logits": "(B, num_labels) with the adapter (LoRA on c_attn + the adapter's score head)",
        "loss": "(1,) mean cross-entropy with the adapter",
        "merged_logits": "(B, num_labels) of merge_and_unload()",
        "base_logits": "(B, num_labels) of the base classifier alone",
        "grad.": "d loss / d X for every tensor X of adapter/adapter_model.safetensors (LoRA A/B and the score "
                 "head; same name and shape)",
    }
    write_expected(d, tensors, meta, what)
    print(f"[write] {d.relative_to(ROOT)}: loss {out.loss.item():.6f}, merged vs adapter {merged_vs_adapter:.1e}, "
          f"merge rule {merge_math:.1e}, adapter effect {adapter_effect:.2f}")


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    cls = make_classifier()
    make_lora_lm()
    make_lora_cls(cls)
    dirs = ["hf_gpt2_classifier_tiny", "peft_lora_tiny_lm", "peft_lora_tiny_cls"]
    total = sum(f.stat().st_size for name in dirs for f in (OUT_DIR / name).rglob("*") if f.is_file())
    for name in dirs:
        files = sorted(str(f.relative_to(OUT_DIR / name)) for f in (OUT_DIR / name).rglob("*") if f.is_file())
        print(f"[files] {name}/: {', '.join(files)}")
    print(f"[done] {total} bytes in total")
    assert total < MAX_TOTAL_BYTES, total
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
