//! A tokenizer saved in a directory beside data or a checkpoint: lushan's `lushan-tokenizer.json` plus the
//! Hugging Face files, and reading such a directory back. This lives here, not in the training crate, so
//! loading a model for generation or serving needs only the model and tokenizer crates.

use std::path::{Path, PathBuf};

use crate::bpe::files::{MERGES_TXT, TOKENIZER_CONFIG_JSON, TOKENIZER_JSON, VOCAB_JSON, read, write_file};
use crate::error::{Result, TokenizerError};
use crate::{TOKENIZER_FILE, Tokenizer};

/// Hugging Face files whose presence makes a directory without `lushan-tokenizer.json` a tokenizer
/// directory.
const HF_MARKERS: [&str; 3] = [TOKENIZER_JSON, VOCAB_JSON, crate::bpe::files::ENCODER_JSON];

impl Tokenizer {
    /// Reads `dir/lushan-tokenizer.json`, or when it is absent the Hugging Face files (`tokenizer.json`,
    /// `vocab.json` + `merges.txt`, `encoder.json` + `vocab.bpe`). Every error names the file; a file that
    /// is not a regular file (a FIFO, a directory) is refused without being opened.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let path = dir.join(TOKENIZER_FILE);
        if !path.exists() {
            if HF_MARKERS.iter().any(|f| dir.join(f).exists()) {
                return crate::hf_export::load_hf_dir(dir);
            }
            return Err(TokenizerError::TokenizerFileMissing { path });
        }
        let bytes = read(&path)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| TokenizerError::FileNotUtf8 { file: path.display().to_string(), offset: e.valid_up_to() })?;
        Self::from_json(text).map_err(|source| TokenizerError::InFile { path, source: Box::new(source) })
    }

    /// Writes the tokenizer into `dir` (created if needed), each file crash-safely, and returns the path of
    /// `lushan-tokenizer.json` (used by checkpoint saving and streaming prepare, so every such directory
    /// carries its vocabulary): first the Hugging Face files (`tokenizer.json` + `tokenizer_config.json`, and
    /// for BPE `vocab.json` + `merges.txt`), so that `transformers`' `AutoTokenizer.from_pretrained(dir)`
    /// loads it, then `lushan-tokenizer.json`, which lushan reads first.
    ///
    /// A directory that already holds this tokenizer (the same `lushan-tokenizer.json` and every Hugging
    /// Face file) is left alone: training saves the best model again and again with the same tokenizer, and
    /// GPT-2's files are megabytes. When the tokenizer differs, the old `lushan-tokenizer.json` is removed
    /// before the Hugging Face files are rewritten, so a crash in between never leaves it beside another
    /// tokenizer's files.
    pub fn save_dir(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(TOKENIZER_FILE);
        let json = self.to_json();
        let unchanged = lushan_fs::read_regular(&path).is_ok_and(|old| old == json.as_bytes())
            && self.hf_file_names().iter().all(|name| dir.join(name).is_file());
        if unchanged {
            return Ok(path);
        }
        match std::fs::remove_file(&path) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                return Err(TokenizerError::Write { path, source });
            }
            _ => {}
        }
        self.write_hf_files(dir)?;
        write_file(&path, json.as_bytes())?;
        Ok(path)
    }

    /// The Hugging Face files [`Tokenizer::write_hf_files`] writes for this kind of tokenizer.
    fn hf_file_names(&self) -> Vec<&'static str> {
        match self {
            Self::Char(t) => t.hf_files().into_iter().map(|(name, _)| name).collect(),
            Self::Bpe(_) => vec![VOCAB_JSON, MERGES_TXT, TOKENIZER_JSON, TOKENIZER_CONFIG_JSON],
        }
    }
}
