#!/usr/bin/env python3
"""Makes the GGUF fixtures of crates/lushan-model/tests/fixtures/gguf/ with llama.cpp's own tools.

    venv/bin/python tools/gguf_fixture.py [--llama-cpp ../llama.cpp] [--out DIR]

1. A tiny GPT-2 (32 channels, 2 layers, 2 heads, context 64; weights drawn with a fixed seed) and a byte-level
   BPE of 300 tokens trained with `tokenizers` on the start of tiny Shakespeare, saved by `transformers`.
2. llama.cpp's convert_hf_to_gguf.py turns it into tiny-f32.gguf, tiny-f16.gguf and tiny-q8_0.gguf; its
   llama-quantize turns the F32 file into tiny-q4_0.gguf. convert_hf_to_gguf recognises a pre-tokenizer by
   hashing the ids it gives on a test text, which a fresh vocabulary cannot match: tools/convert_gpt2_gguf.py
   runs it with that detection answering "gpt-2" (the pre-tokenizer GPT-2 and this vocabulary use) instead of
   editing llama.cpp.
3. expected.json: transformers' logits for a fixed prompt (every position), and the ids the Hugging Face
   tokenizer gives for a test text — lushan-independent references for the Rust tests.

With `--check FILE.gguf` it instead reads FILE with the `gguf` Python package (llama.cpp's gguf-py) and prints
its architecture, tensor names, types and shapes: a reader other than lushan's for exported files.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "ROMEO: But soft, what light"
TOKENIZER_TEXT = "Hello  world!\n\tIt's 2026 — naïve café 🙂 <|endoftext|> ROMEO: yes,  sir."


def check(path):
    from gguf import GGUFReader

    reader = GGUFReader(path)
    arch = reader.fields["general.architecture"]
    print("architecture", bytes(arch.parts[arch.data[0]]).decode())
    for t in reader.tensors:
        print(t.name, t.tensor_type.name, list(int(d) for d in t.shape))


def make(llama_cpp, out_dir):
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        text = open(os.path.join(ROOT, "data", "tinyshakespeare.txt"), encoding="utf-8").read()[:50_000]
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator([text], vocab_size=300, min_frequency=2, special_tokens=["<|endoftext|>"])
        eot = "<|endoftext|>"
        tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=eot, eos_token=eot, unk_token=eot)
        tokenizer.save_pretrained(tmp)
        vocab_size = len(tokenizer)

        torch.manual_seed(14)
        # n_ctx: the old config key convert_hf_to_gguf reads for GPT-2 (transformers no longer writes it).
        config = GPT2Config(vocab_size=vocab_size, n_positions=64, n_ctx=64, n_embd=32, n_layer=2, n_head=2,
                            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                            initializer_range=0.1)
        model = GPT2LMHeadModel(config).eval()
        with torch.no_grad():
            # Non-trivial norms and biases, so a loader that drops or swaps them fails the logits test.
            for name, p in model.named_parameters():
                if name.endswith(".bias") or "ln_" in name:
                    p.add_(torch.randn_like(p) * 0.1)
        model.save_pretrained(tmp, safe_serialization=True)

        for outtype in ["f32", "f16", "q8_0"]:
            path = os.path.join(out_dir, f"tiny-{outtype}.gguf")
            subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_gpt2_gguf.py"), llama_cpp, tmp,
                            "--outtype", outtype, "--outfile", path, "--model-name", "tiny-gpt2"], check=True)
        subprocess.run([os.path.join(llama_cpp, "build", "bin", "llama-quantize"),
                        os.path.join(out_dir, "tiny-f32.gguf"), os.path.join(out_dir, "tiny-q4_0.gguf"), "Q4_0"],
                       check=True, stdout=subprocess.DEVNULL)

        ids = tokenizer(PROMPT)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        greedy = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                pad_token_id=tokenizer.eos_token_id)[0][len(ids):].tolist()
        expected = {
            "prompt": PROMPT,
            "prompt_ids": ids,
            "vocab_size": vocab_size,
            "logits": [round(float(v), 7) for v in logits.flatten()],
            "tokenizer_text": TOKENIZER_TEXT,
            # transformers matches added tokens such as <|endoftext|> in text: lushan's encode_with_special.
            "tokenizer_ids": tokenizer(TOKENIZER_TEXT)["input_ids"],
            "greedy_continuation": greedy,
            "greedy_text": tokenizer.decode(greedy),
        }
        with open(os.path.join(out_dir, "expected.json"), "w") as f:
            json.dump(expected, f)
            f.write("\n")
    for name in sorted(os.listdir(out_dir)):
        print(name, os.path.getsize(os.path.join(out_dir, name)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", default=os.path.join(os.path.dirname(ROOT), "llama.cpp"))
    ap.add_argument("--out", default=os.path.join(ROOT, "crates", "lushan-model", "tests", "fixtures", "gguf"))
    ap.add_argument("--check", metavar="FILE")
    args = ap.parse_args()
    if args.check:
        return check(args.check)
    make(args.llama_cpp, args.out)


if __name__ == "__main__":
    main()
