//! The TOML training configuration (`lushan train --config FILE`): parsed, merged over a preset and
//! validated, as `train` does before it allocates anything.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lushan_fuzz::{scratch_dir, write};
use lushan_train::{Preset, TrainConfig, TrainOverrides};

fuzz_target!(|data: &[u8]| {
    let path = write(scratch_dir(), "train.toml", data);
    if let Ok(config) = TrainConfig::resolve(Preset::ShakespeareChar, Some(&path), &TrainOverrides::default()) {
        let _ = config.tokens_per_step();
        let _ = config.model_config(65);
    }
});
