"""A GPT-2 124M with random weights (transformers' init, seeded) and GPT-2's tokenizer, saved as a Hugging Face
checkpoint directory: the model both lushan and llama.cpp (after convert_hf_to_gguf.py) run in
tools/llama_side_by_side.sh. Weights do not change the speed of either; the file only has to be the same.

Usage: python tools/make_random_gpt2.py OUT_DIR [GPT2_FILES_DIR]   (default ../shared/data/gpt2)
"""
import os
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

out = sys.argv[1]
gpt2_files = sys.argv[2] if len(sys.argv) > 2 else "../shared/data/gpt2"
torch.manual_seed(1337)
config = GPT2Config()
# llama.cpp's convert_hf_to_gguf.py reads the context length as `n_ctx`, which recent transformers no longer write.
config.n_ctx = config.n_positions
model = GPT2LMHeadModel(config)
model.save_pretrained(out, safe_serialization=True)
# GPT-2's BPE files as OpenAI shipped them: encoder.json = vocab.json, vocab.bpe = merges.txt.
tok = GPT2TokenizerFast(vocab_file=os.path.join(gpt2_files, "encoder.json"),
                        merges_file=os.path.join(gpt2_files, "vocab.bpe"))
tok.save_pretrained(out)
print(f"wrote {out}: {sum(p.numel() for p in model.parameters())} parameters")
