//! Q8_0 / Q4_0 blocks byte for byte against llama.cpp's reference quantizers (through the `gguf` Python
//! package: `tools/quant_fixture.py` wrote `fixtures/quant_blocks.json`).

use lushan_kernels::quant::{
    BLOCK, BlockQ4_0, BlockQ8_0, dequantize_q4_0, dequantize_q8_0, quantize_q4_0, quantize_q8_0,
};

struct Fixture {
    values: Vec<f32>,
    q8_bytes: Vec<u8>,
    q8_values: Vec<f32>,
    q4_bytes: Vec<u8>,
    q4_values: Vec<f32>,
}

fn fixture() -> Fixture {
    let text = include_str!("fixtures/quant_blocks.json");
    let json: serde_json::Value = serde_json::from_str(text).expect("fixture parses");
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
    };
    let hex = |v: &serde_json::Value| -> Vec<u8> {
        let s = v.as_str().expect("hex string");
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    };
    Fixture {
        values: floats(&json["values"]),
        q8_bytes: hex(&json["q8_0"]["bytes"]),
        q8_values: floats(&json["q8_0"]["dequantized"]),
        q4_bytes: hex(&json["q4_0"]["bytes"]),
        q4_values: floats(&json["q4_0"]["dequantized"]),
    }
}

#[test]
fn q8_0_blocks_are_llama_cpp_s_bytes() {
    let f = fixture();
    let mut blocks = vec![BlockQ8_0::default(); f.values.len() / BLOCK];
    quantize_q8_0(&f.values, &mut blocks);
    let bytes: Vec<u8> = blocks.iter().flat_map(|b| b.to_bytes()).collect();
    assert_eq!(bytes, f.q8_bytes);
    let mut out = vec![0.0f32; f.values.len()];
    dequantize_q8_0(&blocks, &mut out);
    assert_eq!(out, f.q8_values);
}

#[test]
fn q4_0_blocks_are_llama_cpp_s_bytes() {
    let f = fixture();
    let mut blocks = vec![BlockQ4_0::default(); f.values.len() / BLOCK];
    quantize_q4_0(&f.values, &mut blocks);
    let bytes: Vec<u8> = blocks.iter().flat_map(|b| b.to_bytes()).collect();
    assert_eq!(bytes, f.q4_bytes);
    let mut out = vec![0.0f32; f.values.len()];
    dequantize_q4_0(&blocks, &mut out);
    assert_eq!(out, f.q4_values);
}
