"""A GPT-2 124M with random weights (transformers' init, seeded) and GPT-2's tokenizer, saved as a Hugging Face
checkpoint directory: the model both lushan and llama.cpp (after convert_hf_to_gguf.py) run in
tools/llama_side_by_side.sh. Weights do not change the speed of either; the file only has to be the same.

Usage: python tools/make_random_gpt2.py OUT_DIR [GPT2_FILES_DIR]   (default ../shared/data/gpt2)
"""
import os
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

out = sys.argv[1]
gpt2_files = sys.argv[2] if len(sys.argv) > 2 else "../shared/data/gpt2"
torch.manual_seed(1337)
config = GPT2Config()
# llama.cpp's convert_hf_to_gguf.py reads the context length as `n_ctx`, which recent transformers no longer write.
config.n_ctx = config.n_positions
model = GPT2LMHeadModel(config)
model.save_pretrained(out, safe_serialization=True)
# GPT-2's BPE files as OpenAI shipped them: encoder.json = vocab.json, vocab.bpe = merges.txt, built into a
# byte-level BPE with the `tokenizers` library (so tokenizer.json carries the merges llama.cpp's converter reads).
bpe = models.BPE.from_file(os.path.join(gpt2_files, "encoder.json"), os.path.join(gpt2_files, "vocab.bpe"))
backend = Tokenizer(bpe)
backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
backend.decoder = decoders.ByteLevel()
backend.post_processor = processors.ByteLevel(trim_offsets=False)
tok = GPT2TokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                        unk_token="<|endoftext|>")
tok.save_pretrained(out)
assert tok.encode("Hello world") == [15496, 995], tok.encode("Hello world")
print(f"wrote {out}: {sum(p.numel() for p in model.parameters())} parameters")
