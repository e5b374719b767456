"""Runs llama.cpp's convert_hf_to_gguf.py on a GPT-2 checkpoint whose tokenizer it does not recognise by hash.

llama.cpp identifies a BPE tokenizer's pre-tokenizer by hashing how it splits a test text; a GPT-2 tokenizer
rebuilt from OpenAI's encoder.json / vocab.bpe (or a small byte-level BPE trained the GPT-2 way) splits the same
way but hashes differently, and the script refuses it. This wrapper loads the script as a module, answers
"gpt-2" for that check and runs it unchanged otherwise.

Usage: python tools/convert_gpt2_gguf.py LLAMA_CPP_DIR HF_DIR --outtype f32|f16|q8_0 --outfile OUT.gguf
"""
import importlib.util
import os
import sys

llama_dir = sys.argv[1]
script = os.path.join(llama_dir, "convert_hf_to_gguf.py")
sys.path.insert(1, os.path.join(llama_dir, "gguf-py"))
spec = importlib.util.spec_from_file_location("convert_hf_to_gguf", script)
module = importlib.util.module_from_spec(spec)
sys.modules["convert_hf_to_gguf"] = module
spec.loader.exec_module(module)
base = getattr(module, "TextModel", None) or module.Model
base.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv = [script] + sys.argv[2:]
module.main()
