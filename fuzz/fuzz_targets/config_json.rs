//! `config.json` (lushan's and Hugging Face's GPT-2 keys); a config that parses is also checked against a
//! tiny weights file, as loading a checkpoint does (sizes must be compared with the file, never enumerated).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lushan_fuzz::{fresh_dir, tiny_config, write};
use std::path::Path;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if lushan_model::checkpoint::hf_config::parse_config_json(text, Path::new("config.json")).is_err() {
        return;
    }
    // A checkpoint directory with this config and a real (tiny) weights file.
    static WEIGHTS: OnceLock<Vec<u8>> = OnceLock::new();
    let weights = WEIGHTS.get_or_init(|| {
        let dir = fresh_dir("weights");
        let cfg = tiny_config();
        let params = vec![0.5f32; lushan_model::params::ParamLayout::new(&cfg).total()];
        lushan_model::checkpoint::save_model_dir(&dir, &cfg, &params).expect("saving the tiny checkpoint");
        std::fs::read(dir.join(lushan_model::checkpoint::WEIGHTS_FILE)).expect("reading it back")
    });
    let dir = fresh_dir("checkpoint");
    write(&dir, "config.json", data);
    write(&dir, lushan_model::checkpoint::WEIGHTS_FILE, weights);
    let _ = lushan_model::checkpoint::load_model_dir(&dir);
});
