//! The safetensors header and tensor table of `model.safetensors`: read against a fixed tiny model.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lushan_fuzz::{scratch_dir, tiny_config, write};

fuzz_target!(|data: &[u8]| {
    let path = write(scratch_dir(), "model.safetensors", data);
    let _ = lushan_model::checkpoint::load_safetensors(&path, &tiny_config());
});
