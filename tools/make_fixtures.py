#!/usr/bin/env python3
"""Golden fixtures for lushan's Rust tests, from a self-contained PyTorch reference of lushan's GPT.

Run by hand from the repository root (see tools/README.md for the venv):

    venv/bin/python tools/make_fixtures.py

Writes, under crates/lushan-train/tests/fixtures/:

  gpt_tiny_learned.safetensors      (+ .json side-car with the same metadata)
  gpt_tiny_sinusoidal.safetensors   (+ .json)

Every run first proves the reference is GPT-2: it copies the reference weights into transformers'
GPT2LMHeadModel (with the Conv1D transposes) and asserts identical logits. A failing assertion writes
nothing further. The Hugging Face checkpoint fixtures are written by tools/make_hf_fixtures.py, which
reuses this reference.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import safetensors
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "crates" / "lushan-train" / "tests" / "fixtures"

SEED = 1337
HF_CHECK_TOL = 1e-5

# Parameters in lushan's storage order (ParamKind::ALL). Per-layer kinds are stacked with a leading L.
PARAM_NAMES = [
    "wte", "wpe", "ln1_w", "ln1_b", "qkv_w", "qkv_b", "attn_proj_w", "attn_proj_b",
    "ln2_w", "ln2_b", "fc_w", "fc_b", "fc_proj_w", "fc_proj_b", "lnf_w", "lnf_b",
]
GLOBAL_NAMES = {"wte", "wpe", "lnf_w", "lnf_b"}
# Weight decay by NAME: the matmul and embedding weights (2-D per layer; the stacked ones are 3-D here).
DECAY_NAMES = ["wte", "wpe", "qkv_w", "attn_proj_w", "fc_w", "fc_proj_w"]
# HF GPT2 names (under `transformer.`); the four Conv1D weights are stored (in, out) = our transpose.
HF_NAMES = {
    "wte": "wte.weight", "wpe": "wpe.weight", "lnf_w": "ln_f.weight", "lnf_b": "ln_f.bias",
    "ln1_w": "ln_1.weight", "ln1_b": "ln_1.bias",
    "qkv_w": "attn.c_attn.weight", "qkv_b": "attn.c_attn.bias",
    "attn_proj_w": "attn.c_proj.weight", "attn_proj_b": "attn.c_proj.bias",
    "ln2_w": "ln_2.weight", "ln2_b": "ln_2.bias",
    "fc_w": "mlp.c_fc.weight", "fc_b": "mlp.c_fc.bias",
    "fc_proj_w": "mlp.c_proj.weight", "fc_proj_b": "mlp.c_proj.bias",
}
HF_TRANSPOSED = {"qkv_w", "attn_proj_w", "fc_w", "fc_proj_w"}


@dataclass(frozen=True)
class Hyper:
    vocab_size: int = 64
    block_size: int = 8
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 32
    ln_eps: float = 1e-5
    batch_size: int = 2
    seq_len: int = 8
    # fixture init (deliberately larger than GPT-2's 0.02 so every path carries signal)
    std_embedding: float = 0.2  # wte, wpe
    std_matrix: float = 0.1  # qkv_w, attn_proj_w, fc_w, fc_proj_w
    std_bias: float = 0.05  # every bias
    std_ln_weight: float = 0.1  # ln weights are 1 + N(0, this)
    std_ln_bias: float = 0.05
    # optimiser
    lr: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    adam_eps: float = 1e-8
    weight_decay: float = 0.1
    clip_max_norm: float = 1.0
    steps: int = 10


def shapes(h: Hyper) -> dict[str, tuple[int, ...]]:
    V, T, L, C = h.vocab_size, h.block_size, h.n_layer, h.n_embd
    return {
        "wte": (V, C), "wpe": (T, C),
        "ln1_w": (L, C), "ln1_b": (L, C),
        "qkv_w": (L, 3 * C, C), "qkv_b": (L, 3 * C),
        "attn_proj_w": (L, C, C), "attn_proj_b": (L, C),
        "ln2_w": (L, C), "ln2_b": (L, C),
        "fc_w": (L, 4 * C, C), "fc_b": (L, 4 * C),
        "fc_proj_w": (L, C, 4 * C), "fc_proj_b": (L, C),
        "lnf_w": (C,), "lnf_b": (C,),
    }


def sinusoidal_table(max_t: int, c: int) -> torch.Tensor:
    """pe[p, j] = sin/cos(p / 10000^(2*(j//2)/C)), sin for even j, cos for odd j; computed in f64, stored f32."""
    p = torch.arange(max_t, dtype=torch.float64)[:, None]
    pair = (torch.arange(c) // 2 * 2).to(torch.float64)[None, :]
    angle = p / torch.pow(torch.tensor(10000.0, dtype=torch.float64), pair / c)
    even = (torch.arange(c) % 2 == 0)[None, :]
    return torch.where(even, torch.sin(angle), torch.cos(angle)).to(torch.float32)


def init_params(h: Hyper, position_encoding: str) -> dict[str, torch.Tensor]:
    """Draws every tensor from torch.manual_seed(SEED), in storage order, one torch.randn(shape) each.

    wpe is drawn for both variants (so all other tensors are identical between them) and then replaced by
    the fixed table for the sinusoidal variant.
    """
    torch.manual_seed(SEED)
    out = {}
    for name, shape in shapes(h).items():
        z = torch.randn(shape, dtype=torch.float32)
        if name in ("wte", "wpe"):
            t = z * h.std_embedding
        elif name in HF_TRANSPOSED:
            t = z * h.std_matrix
        elif name in ("ln1_w", "ln2_w", "lnf_w"):
            t = 1.0 + z * h.std_ln_weight
        elif name in ("ln1_b", "ln2_b", "lnf_b"):
            t = z * h.std_ln_bias
        else:
            t = z * h.std_bias
        out[name] = t
    if position_encoding == "sinusoidal":
        out["wpe"] = sinusoidal_table(h.block_size, h.n_embd)
    return out


def draw_batch(h: Hyper) -> tuple[torch.Tensor, torch.Tensor]:
    """Drawn right after the parameters, from the same generator (call after init_params)."""
    inputs = torch.randint(0, h.vocab_size, (h.batch_size, h.seq_len))
    targets = torch.randint(0, h.vocab_size, (h.batch_size, h.seq_len))
    return inputs, targets


def forward(p: dict[str, torch.Tensor], idx: torch.Tensor, h: Hyper, targets: torch.Tensor | None = None):
    """lushan's GPT, written out op by op. Returns (logits (B,T,V), loss or None, [att (B,NH,T,T)] per layer)."""
    B, T = idx.shape
    C, NH = h.n_embd, h.n_head
    hs = C // NH
    x = p["wte"][idx] + p["wpe"][:T]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    atts = []
    for l in range(h.n_layer):
        a = F.layer_norm(x, (C,), p["ln1_w"][l], p["ln1_b"][l], h.ln_eps)
        qkv = a @ p["qkv_w"][l].T + p["qkv_b"][l]
        q, k, v = qkv.split(C, dim=-1)
        q = q.view(B, T, NH, hs).transpose(1, 2)
        k = k.view(B, T, NH, hs).transpose(1, 2)
        v = v.view(B, T, NH, hs).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        atts.append(att)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + (y @ p["attn_proj_w"][l].T + p["attn_proj_b"][l])
        m = F.layer_norm(x, (C,), p["ln2_w"][l], p["ln2_b"][l], h.ln_eps)
        m = F.gelu(m @ p["fc_w"][l].T + p["fc_b"][l], approximate="tanh")
        x = x + (m @ p["fc_proj_w"][l].T + p["fc_proj_b"][l])
    x = F.layer_norm(x, (C,), p["lnf_w"], p["lnf_b"], h.ln_eps)
    logits = x @ p["wte"].T
    loss = None
    if targets is not None:
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
    return logits, loss, atts


def to_hf_state(p: dict[str, torch.Tensor], h: Hyper) -> dict[str, torch.Tensor]:
    sd = {}
    for name in PARAM_NAMES:
        if name in GLOBAL_NAMES:
            sd[f"transformer.{HF_NAMES[name]}"] = p[name].clone()
            continue
        for l in range(h.n_layer):
            t = p[name][l]
            sd[f"transformer.h.{l}.{HF_NAMES[name]}"] = (t.T if name in HF_TRANSPOSED else t).contiguous().clone()
    sd["lm_head.weight"] = p["wte"].clone()
    return sd


def from_hf_state(sd: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    def get(key):
        return sd[f"transformer.{key}"].detach().to(torch.float32)

    p = {}
    for name in PARAM_NAMES:
        if name in GLOBAL_NAMES:
            p[name] = get(HF_NAMES[name]).clone()
        else:
            per = [get(f"h.{l}.{HF_NAMES[name]}") for l in range(n_layer)]
            p[name] = torch.stack([t.T if name in HF_TRANSPOSED else t for t in per]).contiguous()
    return p


def hf_config(h: Hyper, n_positions: int) -> GPT2Config:
    return GPT2Config(
        vocab_size=h.vocab_size, n_positions=n_positions, n_embd=h.n_embd, n_layer=h.n_layer,
        n_head=h.n_head, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=h.ln_eps,
    )


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def check_against_transformers(p: dict[str, torch.Tensor], idx: torch.Tensor, h: Hyper, what: str) -> float:
    """Copies the reference weights into GPT2LMHeadModel and asserts the logits agree."""
    model = GPT2LMHeadModel(hf_config(h, h.block_size)).eval()
    missing, unexpected = model.load_state_dict(to_hf_state(p, h), strict=False)
    # only the causal-mask buffers (if this transformers version has them) may be left out
    assert not unexpected, unexpected
    assert all(k.endswith((".attn.bias", ".attn.masked_bias")) for k in missing), missing
    with torch.no_grad():
        ref, _, _ = forward(p, idx, h)
        hf = model(idx).logits
    diff = max_abs(ref, hf)
    print(f"[check] reference vs transformers GPT2LMHeadModel ({what}): max |logits diff| = {diff:.3e}")
    assert diff < HF_CHECK_TOL, f"reference disagrees with transformers ({what}): {diff}"
    return diff


def run_variant(h: Hyper, position_encoding: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Forward, backward and `steps` AdamW steps on one batch. Returns the fixture tensors."""
    params = {k: v.to(dtype) for k, v in init_params(h, position_encoding).items()}
    inputs, targets = draw_batch(h)
    trainable = [n for n in PARAM_NAMES if not (n == "wpe" and position_encoding == "sinusoidal")]
    initial = {n: t.clone() for n, t in params.items()}
    for n in trainable:
        params[n].requires_grad_(True)

    out: dict[str, torch.Tensor] = {}
    for n in PARAM_NAMES:
        out[f"param.{n}"] = initial[n]
    out["inputs"] = inputs.to(torch.int32)
    out["targets"] = targets.to(torch.int32)

    logits, loss, atts = forward(params, inputs, h, targets)
    loss.backward()
    out["logits"] = logits.detach().clone()
    out["loss"] = loss.detach().reshape(1).clone()
    for l, att in enumerate(atts):
        out[f"att.{l}"] = att.detach().clone()
    for n in PARAM_NAMES:
        g = params[n].grad
        out[f"grad.{n}"] = g.detach().clone() if g is not None else torch.zeros_like(params[n])

    for n in trainable:
        params[n].grad = None
    groups = [
        {"params": [params[n] for n in trainable if n in DECAY_NAMES], "weight_decay": h.weight_decay},
        {"params": [params[n] for n in trainable if n not in DECAY_NAMES], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=h.lr, betas=(h.beta1, h.beta2), eps=h.adam_eps, foreach=False, fused=False)
    losses, norms = [], []
    plist = [params[n] for n in trainable]
    for _ in range(h.steps):
        opt.zero_grad(set_to_none=True)
        _, loss, _ = forward(params, inputs, h, targets)
        losses.append(loss.item())
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(plist, max_norm=h.clip_max_norm, foreach=False)
        norms.append(norm.item())
        opt.step()
    out["adamw_losses"] = torch.tensor(losses, dtype=dtype)
    out["grad_norms"] = torch.tensor(norms, dtype=dtype)
    for n in PARAM_NAMES:
        out[f"param_after.{n}"] = params[n].detach().clone()
    assert out["adamw_losses"][0].item() == out["loss"].item()
    if position_encoding == "sinusoidal":
        assert torch.equal(out["param_after.wpe"], out["param.wpe"])
        assert not out["grad.wpe"].any()
    return out


def precision_report(f32: dict[str, torch.Tensor], f64: dict[str, torch.Tensor]) -> dict:
    """How far the f32 fixture sits from the same computation in f64: a floor for Rust's tolerances."""
    rep: dict[str, float] = {}
    for key in ("logits", "loss", "adamw_losses", "grad_norms"):
        rep[key] = max_abs(f32[key], f64[key])
    rep["att"] = max(max_abs(f32[k], f64[k]) for k in f32 if k.startswith("att."))
    rep["grad"] = max(max_abs(f32[f"grad.{n}"], f64[f"grad.{n}"]) for n in PARAM_NAMES)
    # The key bias qkv_b[:, C:2C] has an exactly-zero true gradient (adding a constant to every key score of
    # a query leaves its softmax unchanged), so its f32 gradient is rounding noise (~1e-9) that AdamW
    # normalises into O(lr) steps. It never changes the loss, but its param_after is not reproducible.
    C = f32["param.wte"].shape[1]
    after = {n: max_abs(f32[f"param_after.{n}"], f64[f"param_after.{n}"]) for n in PARAM_NAMES}
    kb = (slice(None), slice(C, 2 * C))
    rest = torch.cat([f32["param_after.qkv_b"][:, :C], f32["param_after.qkv_b"][:, 2 * C:]], dim=1)
    rest64 = torch.cat([f64["param_after.qkv_b"][:, :C], f64["param_after.qkv_b"][:, 2 * C:]], dim=1)
    after["qkv_b"] = max_abs(rest, rest64)
    after["qkv_b[:, C:2C] (key bias)"] = max_abs(f32["param_after.qkv_b"][kb], f64["param_after.qkv_b"][kb])
    rep["grad_key_bias_abs_max"] = f32["grad.qkv_b"][kb].abs().max().item()
    rep["param_after"] = after
    return rep


def versions() -> dict[str, str]:
    return {
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "safetensors_version": safetensors.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
    }


def variant_metadata(h: Hyper, position_encoding: str, check: float, precision: dict[str, float]) -> dict:
    trainable = [n for n in PARAM_NAMES if not (n == "wpe" and position_encoding == "sinusoidal")]
    return {
        "fixture": f"gpt_tiny_{position_encoding}",
        "generator": "tools/make_fixtures.py",
        **versions(),
        "seed": SEED,
        "seed_order": "torch.manual_seed(seed); torch.randn(shape) per param in storage order (wpe drawn for "
                      "both variants); then randint inputs (B,T), randint targets (B,T)",
        "B": h.batch_size, "T": h.seq_len, "V": h.vocab_size, "block_size": h.block_size,
        "L": h.n_layer, "NH": h.n_head, "C": h.n_embd, "ln_eps": h.ln_eps,
        "activation": "gelu_tanh", "bias": True, "dropout": 0.0, "tied_lm_head": True,
        "position_encoding": position_encoding,
        "init": {
            "wte,wpe": f"N(0, {h.std_embedding})",
            "qkv_w,attn_proj_w,fc_w,fc_proj_w": f"N(0, {h.std_matrix})",
            "qkv_b,attn_proj_b,fc_b,fc_proj_b": f"N(0, {h.std_bias})",
            "ln1_w,ln2_w,lnf_w": f"1 + N(0, {h.std_ln_weight})",
            "ln1_b,ln2_b,lnf_b": f"N(0, {h.std_ln_bias})",
            "wpe (sinusoidal)": "pe[p,j] = sin|cos(p / 10000^(2*(j//2)/C)), sin for even j; f64 then f32",
        },
        "param_order": PARAM_NAMES,
        "param_shapes": {n: list(s) for n, s in shapes(h).items()},
        "loss": "mean cross-entropy over B*T positions",
        "optimizer": "torch.optim.AdamW(foreach=False, fused=False)",
        "lr": h.lr, "lr_schedule": "constant", "betas": [h.beta1, h.beta2], "adam_eps": h.adam_eps,
        "weight_decay": h.weight_decay,
        "decay_params": [n for n in DECAY_NAMES if n in trainable],
        "no_decay_params": [n for n in trainable if n not in DECAY_NAMES],
        "trainable_params": trainable,
        "frozen_params": [n for n in PARAM_NAMES if n not in trainable],
        "grad_clip": h.clip_max_norm,
        "grad_clip_rule": "torch.nn.utils.clip_grad_norm_ over all trainable params: total = ||all grads||_2, "
                          "grads *= min(1, max_norm / (total + 1e-6)); grad_norms holds the pre-clip total",
        "steps": h.steps,
        "step_order": "zero_grad; loss = forward (recorded in adamw_losses[i]); backward; clip; AdamW step",
        "same_batch_every_step": True,
        "grad": "grad.* = d(mean loss)/d(param) at the initial params, before any clipping",
        "check_vs_transformers_max_abs_logits_diff": check,
        "f32_vs_f64_max_abs_diff": precision,
        "key_bias_note": "qkv_b[:, C:2C] (the key bias) has a mathematically zero gradient: its grad.* entries "
                         "are f32 rounding noise (~1e-9) and AdamW turns that noise into O(lr) moves, so "
                         "param_after.qkv_b[:, C:2C] is not reproducible (it never affects logits or loss); "
                         "compare that slice with a loose tolerance (e.g. abs 0.1) or skip it",
    }


def st_metadata(meta: dict) -> dict[str, str]:
    """safetensors __metadata__ must be str -> str: each top-level value JSON-encoded, plus the whole."""
    flat = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    flat["json"] = json.dumps(meta, sort_keys=True)
    return flat


def save_reproducible(tensors: dict[str, torch.Tensor], path: Path, meta: dict) -> None:
    """save_file, then rewrite the JSON header with sorted keys: the safetensors writer emits
    `__metadata__` in hash-map order, which would make every re-run a spurious git diff."""
    for k, t in tensors.items():
        assert t.dtype in (torch.float32, torch.int32), (k, t.dtype)
    save_file({k: t.contiguous() for k, t in tensors.items()}, str(path), metadata=st_metadata(meta))
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the writer pads the header to 8 bytes with spaces; keep that
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    back = load_file(str(path))
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    save_reproducible(tensors, path, meta)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"[write] {path.relative_to(ROOT)} ({path.stat().st_size} bytes, {len(tensors)} tensors)")


def make_gpt_tiny(h: Hyper) -> None:
    for pe in ("learned", "sinusoidal"):
        params = init_params(h, pe)
        inputs, _ = draw_batch(h)
        check = check_against_transformers(params, inputs, h, f"gpt_tiny_{pe} initial weights")
        f32 = run_variant(h, pe, torch.float32)
        f64 = run_variant(h, pe, torch.float64)
        precision = precision_report(f32, f64)
        print(f"[info] gpt_tiny_{pe}: loss {f32['loss'].item():.6f}, "
              f"losses {[round(x, 5) for x in f32['adamw_losses'].tolist()]}")
        print(f"[info] gpt_tiny_{pe}: grad_norms {[round(x, 5) for x in f32['grad_norms'].tolist()]}")
        print(f"[info] gpt_tiny_{pe}: f32 vs f64 max |diff| {json.dumps(precision)}")
        write_safetensors(OUT_DIR / f"gpt_tiny_{pe}.safetensors", f32, variant_metadata(h, pe, check, precision))


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    h = Hyper()
    make_gpt_tiny(h)
    total = sum(f.stat().st_size for f in OUT_DIR.rglob("*") if f.is_file())
    print(f"[done] {OUT_DIR.relative_to(ROOT)}: {total} bytes in total")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
