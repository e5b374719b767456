//! `lushan prepare`: text files → tokenizer + `train.bin` / `val.bin`, and the helpers that read text for
//! evaluation and the tokenizer file back.
//!
//! The char-level path follows nanoGPT's `shakespeare_char/prepare.py`: the vocabulary is every character
//! of the whole corpus, the first `(1 - val_fraction)` of the tokens is the training split and the rest
//! the validation split (no shuffling, so validation text is text the model never saw in training).

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use lushan_tokenizer::{CharTokenizer, TOKENIZER_FILE, Tokenizer};

use super::shard::{TRAIN_SHARD, VAL_SHARD, write_shard};
use crate::error::{Result, TrainError};
use lushan_model::checkpoint::atomic_write_with as atomic_write;

/// What `prepare_char` wrote, for the CLI to print.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareReport {
    /// The text files read, in concatenation order.
    pub files: Vec<PathBuf>,
    pub vocab_size: usize,
    /// `Tokenizer::describe()`, as stored in the shard headers.
    pub description: String,
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub train_path: PathBuf,
    pub val_path: PathBuf,
    pub tokenizer_path: PathBuf,
}

impl std::fmt::Display for PrepareReport {
    /// The summary `lushan prepare` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.train_tokens + self.val_tokens;
        writeln!(
            f,
            "read {} file(s): {total} tokens, vocabulary of {} ({})",
            self.files.len(),
            self.vocab_size,
            self.description
        )?;
        writeln!(f, "train: {:>12} tokens -> {}", self.train_tokens, self.train_path.display())?;
        writeln!(f, "val:   {:>12} tokens -> {}", self.val_tokens, self.val_path.display())?;
        write!(f, "tokenizer -> {}", self.tokenizer_path.display())
    }
}

/// The concatenated text of some inputs and the files it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corpus {
    pub text: String,
    pub files: Vec<PathBuf>,
}

/// Builds a char tokenizer from `inputs` and writes `train.bin`, `val.bin` and the tokenizer file into
/// `out_dir` (created if needed), each atomically.
pub fn prepare_char(inputs: &[PathBuf], out_dir: &Path, val_fraction: f64) -> Result<PrepareReport> {
    prepare_with(None, inputs, out_dir, val_fraction)
}

/// Like [`prepare_char`], but with a given tokenizer (fine-tuning keeps the checkpoint's vocabulary; a
/// character it lacks is an error naming the file, line and column). `None` builds a char tokenizer.
pub fn prepare_with(
    tokenizer: Option<&Tokenizer>,
    inputs: &[PathBuf],
    out_dir: &Path,
    val_fraction: f64,
) -> Result<PrepareReport> {
    check_val_fraction(val_fraction)?;
    let corpus = read_corpus(inputs)?;
    let tokenizer = match tokenizer {
        Some(t) => t.clone(),
        None => Tokenizer::Char(
            CharTokenizer::from_text(&corpus.text)
                .map_err(|source| TrainError::Tokenizer { path: corpus_label(&corpus.files).into(), source })?,
        ),
    };
    let tokens = tokenizer
        .encode(&corpus.text)
        .map_err(|source| TrainError::Tokenizer { path: corpus_label(&corpus.files).into(), source })?;
    let n_train = split_point(tokens.len(), val_fraction)?;

    fs::create_dir_all(out_dir).map_err(|source| TrainError::Io { path: out_dir.to_path_buf(), source })?;
    let vocab_size = tokenizer.vocab_size();
    let description = tokenizer.describe();
    let train_path = out_dir.join(TRAIN_SHARD);
    let val_path = out_dir.join(VAL_SHARD);
    write_shard(&train_path, &tokens[..n_train], vocab_size, &description)?;
    write_shard(&val_path, &tokens[n_train..], vocab_size, &description)?;
    let tokenizer_path = out_dir.join(TOKENIZER_FILE);
    write_tokenizer_json(&tokenizer_path, &tokenizer.to_json())?;
    Ok(PrepareReport {
        files: corpus.files,
        vocab_size,
        description,
        train_tokens: n_train,
        val_tokens: tokens.len() - n_train,
        train_path,
        val_path,
        tokenizer_path,
    })
}

/// Reads and concatenates `inputs` as-is: a file is read whole, a directory contributes every regular file
/// directly inside it, sorted by name.
pub fn read_corpus(inputs: &[PathBuf]) -> Result<Corpus> {
    if inputs.is_empty() {
        return Err(TrainError::DataArgument {
            name: "inputs",
            value: "none".to_owned(),
            expected: "at least one text file or directory".to_owned(),
        });
    }
    let files = corpus_files(inputs)?;
    let mut text = String::new();
    for file in &files {
        text.push_str(&read_utf8(file)?);
    }
    if text.is_empty() {
        return Err(TrainError::EmptyCorpus { paths: corpus_label(inputs) });
    }
    Ok(Corpus { text, files })
}

/// The files `inputs` name: a file itself, a directory every regular file directly inside it (sorted).
pub fn corpus_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let meta = fs::metadata(input).map_err(|source| missing_or_io(input, source))?;
        if meta.is_dir() {
            files.extend(dir_files(input)?);
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

/// Number of training tokens: `floor(n × (1 - val_fraction))`, as nanoGPT's `data[:int(n*0.9)]`.
pub fn split_point(n_tokens: usize, val_fraction: f64) -> Result<usize> {
    check_val_fraction(val_fraction)?;
    // `as` truncates toward zero, which is Python's int() for this non-negative product.
    let n_train = (n_tokens as f64 * (1.0 - val_fraction)) as usize;
    let empty = if n_train == 0 {
        Some("train")
    } else if n_train >= n_tokens {
        Some("val")
    } else {
        None
    };
    match empty {
        Some(split) => Err(TrainError::EmptySplit { split, tokens: n_tokens, val_fraction }),
        None => Ok(n_train),
    }
}

/// Encodes one UTF-8 text file (for `lushan eval --data file.txt`); a character outside the vocabulary is
/// reported with this file's path and the character's line and column.
pub fn encode_file_with(tokenizer: &Tokenizer, path: &Path) -> Result<Vec<u32>> {
    let text = read_utf8(path)?;
    if text.is_empty() {
        return Err(TrainError::EmptyCorpus { paths: path.display().to_string() });
    }
    tokenizer.encode(&text).map_err(|source| TrainError::Tokenizer { path: path.to_path_buf(), source })
}

/// Reads `dir/lushan-tokenizer.json`, or when it is absent the Hugging Face files (`tokenizer.json`,
/// `vocab.json` + `merges.txt`, `encoder.json` + `vocab.bpe`).
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join(TOKENIZER_FILE);
    if !path.is_file() {
        // A Hugging Face directory: tokenizer.json, vocab.json + merges.txt, or encoder.json + vocab.bpe.
        let hf = ["tokenizer.json", "vocab.json", "encoder.json"].iter().any(|f| dir.join(f).is_file());
        if hf {
            return Tokenizer::load(&dir.to_string_lossy())
                .map_err(|source| TrainError::Tokenizer { path: dir.to_path_buf(), source });
        }
    }
    let json = fs::read_to_string(&path).map_err(|source| match source.kind() {
        ErrorKind::NotFound => TrainError::TokenizerMissing { path: path.clone() },
        _ => TrainError::Io { path: path.clone(), source },
    })?;
    Tokenizer::from_json(&json).map_err(|source| TrainError::Tokenizer { path, source })
}

/// Writes the tokenizer into `dir`, each file atomically, and returns the path of `lushan-tokenizer.json`
/// (used by checkpoint saving and streaming prepare, so every such directory carries its vocabulary): first
/// the Hugging Face files (`tokenizer.json` + `tokenizer_config.json`, and for BPE `vocab.json` +
/// `merges.txt`), so that `transformers`' `AutoTokenizer.from_pretrained(dir)` loads it, then
/// `lushan-tokenizer.json`, which lushan reads first.
///
/// A directory that already holds this tokenizer (the same `lushan-tokenizer.json` and every Hugging Face
/// file) is left alone: training saves the best model again and again with the same tokenizer, and GPT-2's
/// files are megabytes. When the tokenizer differs, the old `lushan-tokenizer.json` is removed before the
/// Hugging Face files are rewritten, so a crash in between never leaves it beside another tokenizer's files.
pub fn save_tokenizer(dir: &Path, tokenizer: &Tokenizer) -> Result<PathBuf> {
    let path = dir.join(TOKENIZER_FILE);
    let json = tokenizer.to_json();
    let unchanged = fs::read(&path).is_ok_and(|old| old == json.as_bytes())
        && hf_file_names(tokenizer).iter().all(|name| dir.join(name).is_file());
    if unchanged {
        return Ok(path);
    }
    match fs::remove_file(&path) {
        Err(source) if source.kind() != ErrorKind::NotFound => return Err(TrainError::Io { path, source }),
        _ => {}
    }
    write_hf_files(dir, tokenizer)?;
    write_tokenizer_json(&path, &json)?;
    Ok(path)
}

/// The Hugging Face files [`save_tokenizer`] writes for this kind of tokenizer.
fn hf_file_names(tokenizer: &Tokenizer) -> Vec<&'static str> {
    use lushan_tokenizer::bpe::files::{MERGES_TXT, TOKENIZER_CONFIG_JSON, TOKENIZER_JSON, VOCAB_JSON};
    match tokenizer {
        Tokenizer::Char(t) => t.hf_files().into_iter().map(|(name, _)| name).collect(),
        Tokenizer::Bpe(_) => vec![VOCAB_JSON, MERGES_TXT, TOKENIZER_JSON, TOKENIZER_CONFIG_JSON],
    }
}

fn write_hf_files(dir: &Path, tokenizer: &Tokenizer) -> Result<()> {
    match tokenizer {
        Tokenizer::Char(t) => {
            for (name, text) in t.hf_files() {
                let path = dir.join(name);
                atomic_write(&path, |w| w.write_all(text.as_bytes()))
                    .map_err(|source| TrainError::Io { path: path.clone(), source })?;
            }
        }
        // Bpe writes each file through a temporary file and a rename too.
        Tokenizer::Bpe(t) => {
            t.write_hf_files(dir).map_err(|source| TrainError::Tokenizer { path: dir.to_path_buf(), source })?;
        }
    }
    Ok(())
}

/// Writes `lushan-tokenizer.json` alone: `prepare_char`'s data directories hold only lushan's file.
fn write_tokenizer_json(path: &Path, json: &str) -> Result<()> {
    atomic_write(path, |w| w.write_all(json.as_bytes()))
        .map_err(|source| TrainError::Io { path: path.to_path_buf(), source })
}

pub(crate) fn check_val_fraction(val_fraction: f64) -> Result<()> {
    // Written so that NaN fails too.
    if val_fraction > 0.0 && val_fraction < 1.0 {
        Ok(())
    } else {
        Err(TrainError::DataArgument {
            name: "--val-fraction",
            value: val_fraction.to_string(),
            expected: "a fraction strictly between 0 and 1 (nanoGPT uses 0.1)".to_owned(),
        })
    }
}

/// Regular files (symlinks followed) directly inside `dir`, sorted by name.
fn dir_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| TrainError::Io { path: dir.to_path_buf(), source };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let meta = fs::metadata(&path).map_err(|source| TrainError::Io { path: path.clone(), source })?;
        if meta.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read_utf8(path: &Path) -> Result<String> {
    let bytes = fs::read(path).map_err(|source| missing_or_io(path, source))?;
    String::from_utf8(bytes)
        .map_err(|e| TrainError::NotUtf8 { path: path.to_path_buf(), offset: e.utf8_error().valid_up_to() })
}

pub(crate) fn missing_or_io(path: &Path, source: std::io::Error) -> TrainError {
    match source.kind() {
        ErrorKind::NotFound => TrainError::InputMissing { path: path.to_path_buf() },
        _ => TrainError::Io { path: path.to_path_buf(), source },
    }
}

/// The inputs as one comma-separated string, for errors about the corpus as a whole.
pub(crate) fn corpus_label(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    fn char_tokenizer() -> Tokenizer {
        Tokenizer::Char(CharTokenizer::from_text("First Citizen:\r\n床前明月光 🙂\n").unwrap())
    }

    fn hf_tokenizer_kind(dir: &Path) -> String {
        let json: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
        json["model"]["type"].as_str().unwrap().to_owned()
    }

    #[test]
    fn save_tokenizer_writes_lushan_and_hugging_face_files() {
        let gpt2 = Tokenizer::gpt2().unwrap();
        for (tokenizer, files, kind) in [
            (char_tokenizer(), &["tokenizer.json", "tokenizer_config.json"][..], "WordLevel"),
            (gpt2, &["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"][..], "BPE"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = save_tokenizer(dir.path(), &tokenizer).unwrap();
            assert_eq!(path, dir.path().join(TOKENIZER_FILE));
            let mut names: Vec<String> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            let mut expected: Vec<String> = files.iter().map(|f| f.to_string()).collect();
            expected.push(TOKENIZER_FILE.to_owned());
            expected.sort();
            assert_eq!(names, expected, "no temporary files are left");
            assert_eq!(hf_tokenizer_kind(dir.path()), kind);
            assert_eq!(load_tokenizer(dir.path()).unwrap(), tokenizer);
            // Without lushan's file, the Hugging Face files alone give the same tokenizer.
            fs::remove_file(&path).unwrap();
            assert_eq!(load_tokenizer(dir.path()).unwrap(), tokenizer);
        }
    }

    #[test]
    fn saving_the_same_tokenizer_again_leaves_the_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = char_tokenizer();
        save_tokenizer(dir.path(), &tokenizer).unwrap();
        let config = dir.path().join("tokenizer_config.json");
        fs::write(&config, "marker").unwrap();
        save_tokenizer(dir.path(), &tokenizer).unwrap();
        assert_eq!(fs::read_to_string(&config).unwrap(), "marker", "an unchanged tokenizer is not rewritten");
        // A missing Hugging Face file makes the next save write them all again.
        fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
        save_tokenizer(dir.path(), &tokenizer).unwrap();
        assert!(fs::read_to_string(&config).unwrap().contains("PreTrainedTokenizerFast"));
        assert_eq!(hf_tokenizer_kind(dir.path()), "WordLevel");
    }

    #[test]
    fn saving_another_tokenizer_rewrites_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let (chars, gpt2) = (char_tokenizer(), Tokenizer::gpt2().unwrap());
        for (tokenizer, kind) in [(&chars, "WordLevel"), (&gpt2, "BPE"), (&chars, "WordLevel")] {
            save_tokenizer(dir.path(), tokenizer).unwrap();
            assert_eq!(&load_tokenizer(dir.path()).unwrap(), tokenizer);
            assert_eq!(hf_tokenizer_kind(dir.path()), kind);
            let config = fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap();
            assert_eq!(config.contains("GPT2Tokenizer"), kind == "BPE", "{config}");
        }
    }
}
