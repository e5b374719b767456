//! Tokenizer files as a model directory holds them. The first byte picks the format — lushan's own
//! `lushan-tokenizer.json`, Hugging Face's `tokenizer.json`, `vocab.json` + `merges.txt`, or OpenAI's
//! `encoder.json` + `vocab.bpe` — and the rest is the file (or two files, split at the first 0xFF byte).
//! A tokenizer that loads must encode and decode a mixed-script text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lushan_fuzz::{fresh_dir, split_two, write};
use lushan_tokenizer::Tokenizer;

fuzz_target!(|data: &[u8]| {
    let Some((&format, rest)) = data.split_first() else { return };
    let dir = fresh_dir("tokenizer");
    match format % 4 {
        0 => {
            write(&dir, "lushan-tokenizer.json", rest);
        }
        1 => {
            write(&dir, "tokenizer.json", rest);
        }
        2 => {
            let (vocab, merges) = split_two(rest);
            write(&dir, "vocab.json", vocab);
            write(&dir, "merges.txt", merges);
        }
        _ => {
            let (encoder, bpe) = split_two(rest);
            write(&dir, "encoder.json", encoder);
            write(&dir, "vocab.bpe", bpe);
        }
    }
    let Ok(tokenizer) = Tokenizer::load_dir(&dir) else { return };
    if let Ok(ids) = tokenizer.encode("Hello, world! 你好 ÿ\n  tabs\tand 123") {
        let _ = tokenizer.decode(&ids);
    }
    let _ = tokenizer.decode(&[0, 1, 2, u32::MAX]);
});
