//! `lushan classify`: label texts with a classifier checkpoint (`lushan train --task classify`).
//!
//! Texts come from the arguments, from `--file` (one text per line, or JSONL records with a `text` field), or
//! from stdin in the same formats. Each gets one JSONL line on stdout:
//! `{"text": …, "label": …, "probabilities": {"ham": 0.01, "spam": 0.99}}`; `--top K` prints the K most likely
//! labels and the text as tab-separated plain text instead.

use crate::model_dir;
use anyhow::{Context, Result, bail};
use lushan_model::{Head, classify_batch};
use serde_json::{Map, Value, json};
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Texts classified (and printed) together; output starts before a long file is done.
const CHUNK: usize = 256;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory of a classifier (config.json with id2label + model.safetensors + tokenizer file).
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter directory (PEFT's files) to merge into the model first.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Texts to label; without them (and without --file) texts are read from stdin, one per line.
    texts: Vec<String>,
    /// A file of texts: one per line, or JSONL records with a `text` field (chosen by a first line starting
    /// with `{`).
    #[arg(long, conflicts_with = "texts")]
    file: Option<PathBuf>,
    /// Print the K most likely labels with their probabilities and the text, tab-separated, instead of JSONL.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    top: Option<u32>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (model, tokenizer) = model_dir::load_with(&args.model, args.adapter.as_deref())?;
    let labels = match &model.config.head {
        Head::Classifier { labels, .. } => labels.clone(),
        Head::LanguageModel => bail!(
            "{} is a language model (GPT2LMHeadModel); `lushan classify` needs a classifier checkpoint: fine-tune \
             one with `lushan train --task classify`",
            args.model.display()
        ),
    };
    let (texts, source) = if !args.texts.is_empty() {
        let texts = args.texts.iter().enumerate().map(|(i, t)| (format!("argument {}", i + 1), t.clone())).collect();
        (texts, "the arguments".to_string())
    } else if let Some(path) = &args.file {
        let content = std::fs::read_to_string(path).with_context(|| format!("reading --file {}", path.display()))?;
        (read_texts(&content).with_context(|| format!("--file {}", path.display()))?, path.display().to_string())
    } else {
        let mut content = String::new();
        std::io::stdin().read_to_string(&mut content).context("reading texts from stdin")?;
        (read_texts(&content).context("stdin")?, "stdin".to_string())
    };
    if texts.is_empty() {
        bail!("no texts to classify in {source}: give them as arguments, with --file, or one per line on stdin");
    }
    let block = model.config.block_size;
    let mut truncated = 0;
    let mut out = BufWriter::new(std::io::stdout().lock());
    for chunk in texts.chunks(CHUNK) {
        let mut sequences = Vec::with_capacity(chunk.len());
        for (place, text) in chunk {
            let ids = tokenizer.encode(text).with_context(|| format!("encoding {place} of {source}"))?;
            if ids.is_empty() {
                bail!("{place} of {source} is empty: there is nothing to classify");
            }
            sequences.push(ids);
        }
        let classified = classify_batch(&model, &sequences)?;
        truncated += classified.truncated;
        for ((_, text), probs) in chunk.iter().zip(&classified.probabilities) {
            writeln!(out, "{}", format_line(text, &labels, probs, args.top))?;
        }
        out.flush()?;
    }
    if truncated > 0 {
        eprintln!(
            "note: {truncated} text{} longer than the model's context of {block} tokens; classified by the first \
             {block} (as training does)",
            if truncated == 1 { " was" } else { "s were" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Texts of a file or stdin, each with where it came from (`line N`): JSONL records with a `text` field when
/// the first non-blank line starts with `{`, otherwise one text per line. Blank lines are skipped.
fn read_texts(content: &str) -> Result<Vec<(String, String)>> {
    let lines = content.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let jsonl = content.lines().find(|l| !l.trim().is_empty()).is_some_and(|l| l.trim_start().starts_with('{'));
    lines
        .map(|(i, line)| {
            let place = format!("line {}", i + 1);
            if !jsonl {
                return Ok((place, line.trim_end_matches('\r').to_string()));
            }
            let record: Value =
                serde_json::from_str(line).with_context(|| format!("{place} is not a JSON record (JSONL input)"))?;
            match record.get("text") {
                Some(Value::String(text)) => Ok((place, text.clone())),
                _ => bail!("{place}: a JSONL record needs a string field `text`"),
            }
        })
        .collect()
}

/// One output line: the JSONL record, or with `top` the K most likely labels and the text, tab-separated.
fn format_line(text: &str, labels: &[String], probs: &[f32], top: Option<u32>) -> String {
    let mut order: Vec<usize> = (0..probs.len().min(labels.len())).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let best = order.first().map_or("", |&i| labels[i].as_str());
    match top {
        Some(k) => {
            let ranked = order.iter().take(k as usize).map(|&i| format!("{}\t{:.4}", labels[i], probs[i]));
            let mut fields: Vec<String> = ranked.collect();
            fields.push(text.replace(['\t', '\n'], " "));
            fields.join("\t")
        }
        None => {
            let probabilities: Map<String, Value> =
                labels.iter().zip(probs).map(|(l, &p)| (l.clone(), json!(p))).collect();
            json!({"text": text, "label": best, "probabilities": probabilities}).to_string()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn inputs_are_lines_or_jsonl_records() {
        let plain = read_texts("free money\n\n  \nsee you\r\n").unwrap();
        assert_eq!(plain, [("line 1".into(), "free money".into()), ("line 4".into(), "see you".into())]);
        let records = read_texts("{\"text\": \"a\", \"label\": \"ham\"}\n\n{\"text\": \"b\"}\n").unwrap();
        assert_eq!(records, [("line 1".into(), "a".into()), ("line 3".into(), "b".into())]);
        let e = format!("{:#}", read_texts("{\"text\": \"a\"}\n{\"body\": 1}\n").unwrap_err());
        assert!(e.contains("line 2") && e.contains("`text`"), "{e}");
        let e = format!("{:#}", read_texts("{\"text\": \"a\"}\nplain\n").unwrap_err());
        assert!(e.contains("line 2 is not a JSON record"), "{e}");
    }

    #[test]
    fn lines_are_jsonl_or_ranked_plain_text() {
        let labels = ["ham".to_string(), "spam".to_string()];
        let line = format_line("win\tnow", &labels, &[0.25, 0.75], None);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["text"], "win\tnow");
        assert_eq!(v["label"], "spam");
        assert_eq!(v["probabilities"], json!({"ham": 0.25, "spam": 0.75}));
        assert_eq!(format_line("win\tnow", &labels, &[0.25, 0.75], Some(1)), "spam\t0.7500\twin now");
        assert_eq!(format_line("x", &labels, &[0.5, 0.5], Some(5)), "ham\t0.5000\tspam\t0.5000\tx");
    }
}
