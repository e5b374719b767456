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

/// [`Tokenizer::load_dir`], for the training crate's callers.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    Tokenizer::load_dir(dir).map_err(TrainError::TokenizerFiles)
}

/// [`Tokenizer::save_dir`], for the training crate's callers.
pub fn save_tokenizer(dir: &Path, tokenizer: &Tokenizer) -> Result<PathBuf> {
    tokenizer.save_dir(dir).map_err(TrainError::TokenizerFiles)
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
