//! A GGUF file: the header parser on the bytes, then the whole GPT-2 load (metadata, tensor checks,
//! weights, embedded tokenizer) from a file holding them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lushan_fuzz::{scratch_dir, write};

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = lushan_model::gguf::parse(data) {
        for t in &file.tensors {
            let _ = file.tensor_bytes(t);
        }
    }
    let path = write(scratch_dir(), "model.gguf", data);
    let _ = lushan_model::gguf::load_gpt2(&path);
});
