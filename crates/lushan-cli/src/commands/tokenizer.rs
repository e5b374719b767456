//! `lushan tokenizer`: encode text to ids, decode ids to bytes, train a byte-level BPE vocabulary.
//!
//! `--tokenizer` takes `gpt2` (GPT-2's vocabulary, built into the binary: the same ids as tiktoken's `gpt2`
//! encoding), a directory (with `lushan-tokenizer.json`, `tokenizer.json`, `vocab.json` + `merges.txt`, or
//! `encoder.json` + `vocab.bpe`), or one of those JSON files.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use lushan_tokenizer::{BpeTrainer, TOKENIZER_FILE, Tokenizer, TrainOptions, utf8_text};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Text → token ids (space-separated, or one per line with --lines).
    Encode(EncodeArgs),
    /// Token ids → the exact bytes they stand for.
    Decode(DecodeArgs),
    /// Learn a byte-level BPE vocabulary from text files (GPT-2 pre-tokenization).
    Train(TrainArgs),
    /// Print what a tokenizer is: kind, vocabulary size, special tokens.
    Info(InfoArgs),
    /// Write a BPE tokenizer as Hugging Face files (+ lushan-tokenizer.json) that transformers loads.
    Export(ExportArgs),
}

#[derive(clap::Args)]
pub struct EncodeArgs {
    /// `gpt2`, a tokenizer directory, or a tokenizer JSON file.
    #[arg(long, default_value = "gpt2")]
    tokenizer: String,
    /// Turn special-token text such as `<|endoftext|>` into its id (by default it is ordinary text, as in
    /// tiktoken's encode_ordinary, so a document cannot forge a boundary).
    #[arg(long)]
    allow_special: bool,
    /// One id per line instead of space-separated.
    #[arg(long)]
    lines: bool,
    /// One token per line: its id, a tab, and its text (quoted and escaped, so spaces and newlines show; bytes
    /// that are not a whole UTF-8 character as \xNN).
    #[arg(long, conflicts_with = "lines")]
    show_tokens: bool,
    /// Threads for BPE encoding (the ids do not depend on it); default: all cores.
    #[arg(long)]
    threads: Option<usize>,
    /// UTF-8 text to encode; standard input when absent or `-`.
    file: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct DecodeArgs {
    /// `gpt2`, a tokenizer directory, or a tokenizer JSON file.
    #[arg(long, default_value = "gpt2")]
    tokenizer: String,
    /// Ids separated by whitespace; standard input when absent or `-`.
    file: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Text files to learn from.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Total ids: 256 bytes + merges + `<|endoftext|>`.
    #[arg(long, default_value_t = 8192)]
    vocab_size: usize,
    /// Never merge a pair seen fewer times than this.
    #[arg(long, default_value_t = 2)]
    min_frequency: u64,
    /// Directory for vocab.json, merges.txt, tokenizer.json, tokenizer_config.json and lushan-tokenizer.json.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct InfoArgs {
    /// `gpt2`, a tokenizer directory, or a tokenizer JSON file.
    #[arg(long, default_value = "gpt2")]
    tokenizer: String,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// `gpt2`, a tokenizer directory, or a tokenizer JSON file.
    #[arg(long, default_value = "gpt2")]
    tokenizer: String,
    /// Directory to write vocab.json, merges.txt, tokenizer.json, tokenizer_config.json and
    /// lushan-tokenizer.json into.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Encode(args) => encode(args),
        Command::Decode(args) => decode(args),
        Command::Train(args) => train(args),
        Command::Info(args) => info(args),
        Command::Export(args) => export(args),
    }
}

fn load(spec: &str) -> Result<Tokenizer> {
    // The tokenizer crate names the file or spec in its errors: no context that repeats it.
    Ok(Tokenizer::load(spec)?)
}

/// The bytes of FILE, or of standard input for none or `-`; and a name for messages.
fn read_input(file: Option<&Path>) -> Result<(Vec<u8>, String)> {
    match file {
        Some(path) if path != Path::new("-") => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Ok((bytes, path.display().to_string()))
        }
        _ => {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes).context("reading standard input")?;
            Ok((bytes, "standard input".to_owned()))
        }
    }
}

fn encode(args: EncodeArgs) -> Result<ExitCode> {
    let tokenizer = load(&args.tokenizer)?;
    let (bytes, name) = read_input(args.file.as_deref())?;
    let text = utf8_text(&bytes).with_context(|| format!("encoding {name}"))?;
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let ids = match (&tokenizer, args.allow_special) {
        (Tokenizer::Bpe(bpe), false) => bpe.encode_parallel(text, threads),
        (Tokenizer::Bpe(bpe), true) => bpe.encode_with_special_parallel(text, threads),
        (other, false) => other.encode(text)?,
        (other, true) => other.encode_with_special(text)?,
    };
    if args.show_tokens {
        let mut out = String::with_capacity(ids.len() * 12);
        for &id in &ids {
            let bytes = tokenizer.decode_bytes(&[id]).with_context(|| format!("decoding token {id}"))?;
            out.push_str(&format!("{id}\t{}\n", quoted_token(&bytes)));
        }
        return write_stdout(out.as_bytes());
    }
    let separator = if args.lines { '\n' } else { ' ' };
    let mut out = String::with_capacity(ids.len() * 6);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(separator);
        }
        out.push_str(&id.to_string());
    }
    if !ids.is_empty() {
        out.push('\n');
    }
    write_stdout(out.as_bytes())
}

fn decode(args: DecodeArgs) -> Result<ExitCode> {
    let tokenizer = load(&args.tokenizer)?;
    let (bytes, name) = read_input(args.file.as_deref())?;
    let text = utf8_text(&bytes).with_context(|| format!("reading ids from {name}"))?;
    let mut ids = Vec::new();
    for (index, item) in text.split_ascii_whitespace().enumerate() {
        match item.parse::<u32>() {
            Ok(id) => ids.push(id),
            Err(_) => {
                bail!("{name}: item {index} is {item:?}, not a token id (expected whitespace-separated integers)")
            }
        }
    }
    let decoded = tokenizer.decode_bytes(&ids).with_context(|| format!("decoding {name}"))?;
    write_stdout(&decoded)
}

/// A token's text in double quotes with Rust's escapes (`\n`, `\"`, …), and any bytes that are not a whole
/// UTF-8 character (a byte-level token can hold part of one) as `\xNN`.
fn quoted_token(bytes: &[u8]) -> String {
    let mut quoted = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        quoted.extend(chunk.valid().chars().flat_map(char::escape_debug));
        for byte in chunk.invalid() {
            quoted.push_str(&format!("\\x{byte:02x}"));
        }
    }
    quoted.push('"');
    quoted
}

/// Writes everything to standard output; a closed pipe (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("writing to standard output"),
    }
}

fn train(args: TrainArgs) -> Result<ExitCode> {
    let start = Instant::now();
    let mut trainer = BpeTrainer::new();
    let mut texts = Vec::with_capacity(args.files.len());
    for path in &args.files {
        // Task records (JSONL / CSV) contribute their texts, not their JSON syntax.
        let text = if path.extension().is_some_and(|e| e == "jsonl" || e == "csv") {
            lushan_train::trainer::task_file_texts(path)?
        } else {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            utf8_text(&bytes).with_context(|| format!("reading {}", path.display()))?.to_owned()
        };
        trainer.add_text(&text);
        texts.push(text);
    }
    let options =
        TrainOptions { vocab_size: args.vocab_size, min_frequency: args.min_frequency, ..TrainOptions::new(0) };
    let (bpe, report) = trainer.train(&options).context("training the tokenizer")?;
    let seconds = start.elapsed().as_secs_f64();
    let tokenizer = Tokenizer::Bpe(bpe);
    let written = write_files(&tokenizer, &args.out)?;

    let tokens: usize = texts.iter().map(|t| tokenizer.encode(t).map_or(0, |ids| ids.len())).sum();
    println!(
        "trained {} on {} file(s): {} bytes, {} pieces ({} distinct) in {seconds:.2} s",
        tokenizer.describe(),
        args.files.len(),
        report.corpus_bytes,
        report.pieces,
        report.distinct_pieces
    );
    println!(
        "vocabulary: {} ids = 256 bytes + {} merges + <|endoftext|> (requested {})",
        report.vocab_size, report.merges, report.requested_vocab_size
    );
    if report.stopped_early {
        println!(
            "stopped early: no pair of tokens occurs {} or more times any more (lower --min-frequency or add text)",
            args.min_frequency
        );
    }
    if tokens > 0 {
        println!(
            "the corpus encodes to {tokens} tokens ({:.2} bytes per token)",
            report.corpus_bytes as f64 / tokens as f64
        );
    }
    for path in &written {
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Hugging Face files and lushan-tokenizer.json; returns the paths written.
fn write_files(tokenizer: &Tokenizer, out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = tokenizer.write_hf_files(out).with_context(|| format!("writing {}", out.display()))?;
    let own = out.join(TOKENIZER_FILE);
    std::fs::write(&own, tokenizer.to_json()).with_context(|| format!("writing {}", own.display()))?;
    written.push(own);
    Ok(written)
}

fn export(args: ExportArgs) -> Result<ExitCode> {
    let tokenizer = load(&args.tokenizer)?;
    for path in write_files(&tokenizer, &args.out)? {
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn info(args: InfoArgs) -> Result<ExitCode> {
    let tokenizer = load(&args.tokenizer)?;
    println!("{}", tokenizer.describe());
    println!("vocabulary size: {}", tokenizer.vocab_size());
    if let Tokenizer::Bpe(bpe) = &tokenizer {
        println!("merges: {}", bpe.merges().len());
        for (text, id) in bpe.special_tokens() {
            println!("special token {id}: {text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::quoted_token;

    #[test]
    fn token_text_shows_spaces_newlines_quotes_and_partial_characters() {
        assert_eq!(quoted_token(b" the"), r#"" the""#);
        assert_eq!(quoted_token(b"\n"), r#""\n""#);
        assert_eq!(quoted_token(b"\"hi\""), r#""\"hi\"""#);
        // The first two bytes of "好" (e5 a5 bd): not a whole character.
        assert_eq!(quoted_token(&[0xe5, 0xa5]), r#""\xe5\xa5""#);
        assert_eq!(quoted_token("好".as_bytes()), "\"好\"");
    }
}
