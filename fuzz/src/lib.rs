//! What the fuzz targets share: a scratch directory per process (the loaders under test read files, as a
//! user's checkpoints and tokenizers are files) and small fixed models and tokenizers to feed them.
//! A target's input is the bytes of a file or a request body; every loader must return `Ok` or a clean `Err`
//! — a panic, an abort, a hang or an allocation past libFuzzer's RSS limit is a bug.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A directory of this process's own under the temporary directory (tmpfs `/dev/shm` when it exists).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = base.join(format!("lushan-fuzz-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("creating the fuzz scratch directory");
        dir
    })
}

/// An empty sub-directory `name` of the scratch directory (emptied on each call).
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = scratch_dir().join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("creating a fuzz case directory");
    dir
}

/// Writes `bytes` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).expect("writing a fuzz case file");
    path
}

/// Splits `data` at its first `0xFF` byte (which no UTF-8 text contains) into two files' contents.
pub fn split_two(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// The model every model-file target checks against: GPT-2's shape, shrunk (vocabulary 11, context 8,
/// 2 layers, 2 heads, 8 channels).
pub fn tiny_config() -> lushan_model::ModelConfig {
    lushan_model::ModelConfig::new(11, 8, 2, 2, 8)
}
