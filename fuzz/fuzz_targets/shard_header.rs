//! A token shard (`train.bin`): header, tokenizer description and token table; a shard that opens is read
//! at its first and last positions and its ids checked against a vocabulary.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lushan_fuzz::{scratch_dir, write};
use lushan_train::data::shard::Shard;

fuzz_target!(|data: &[u8]| {
    let path = write(scratch_dir(), "train.bin", data);
    let Ok(shard) = Shard::open(&path, None) else { return };
    if !shard.is_empty() {
        let _ = shard.token(0);
        let _ = shard.token(shard.len() - 1);
        let mut window = vec![0u32; shard.len().min(16)];
        let _ = shard.copy_window(0, &mut window);
    }
    let _ = shard.check_ids(65);
});
