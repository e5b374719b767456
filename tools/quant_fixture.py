"""Reference Q8_0 / Q4_0 blocks for lushan's quantization kernels, made with the `gguf` package's
quantizers (the Python twin of llama.cpp's ggml-quants.c reference code, bit-exact for these two types).

    venv/bin/pip install gguf numpy
    venv/bin/python tools/quant_fixture.py   # writes crates/lushan-kernels/tests/fixtures/quant_blocks.json

Rows of 32-value blocks cover the cases that matter: random normals, a block of zeros, a block whose largest
magnitude is negative (Q4_0 keeps the sign of the extreme value), a single outlier, ties at .5 for rounding.
"""
import json
import pathlib

import numpy as np
from gguf import GGMLQuantizationType, quants

rng = np.random.default_rng(7)
blocks = [
    rng.standard_normal(32).astype(np.float32),
    rng.standard_normal(32).astype(np.float32) * 0.02,
    np.zeros(32, dtype=np.float32),
    np.concatenate([[-3.0], rng.uniform(-1, 1, 31)]).astype(np.float32),
    np.concatenate([rng.uniform(-0.01, 0.01, 31), [50.0]]).astype(np.float32),
    (np.arange(32, dtype=np.float32) - 16.0) * np.float32(127.0 / 16.0) / 8.0,
    rng.standard_normal(32).astype(np.float32) * 1000.0,
    rng.uniform(-1, 1, 32).astype(np.float32),
]
values = np.concatenate(blocks).astype(np.float32)
out = {"values": [float(v) for v in values]}
for name, qtype in [("q8_0", GGMLQuantizationType.Q8_0), ("q4_0", GGMLQuantizationType.Q4_0)]:
    q = quants.quantize(values.reshape(1, -1), qtype)
    out[name] = {
        "bytes": bytes(q.reshape(-1)).hex(),
        "dequantized": [float(v) for v in quants.dequantize(q, qtype).reshape(-1)],
    }
path = pathlib.Path(__file__).resolve().parent.parent / "crates/lushan-kernels/tests/fixtures/quant_blocks.json"
path.write_text(json.dumps(out, indent=1) + "\n")
print(f"wrote {path}")
