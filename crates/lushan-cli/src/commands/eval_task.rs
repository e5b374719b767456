//! `lushan eval` on task records (JSONL, or CSV for classification):
//! - a classifier: accuracy, macro-F1, per-class precision / recall / F1 and the confusion matrix (text, and
//!   a PNG with `--png`);
//! - a language model on SFT records: the masked loss on the completions / assistant replies (what
//!   `--task sft` trains) and, with `--generate`, greedy answers scored by exact match and chrF against the
//!   references (the last assistant turn, or the completion).

use crate::confusion_plot::render_confusion_png;
use anyhow::{Context, Result};
use lushan_model::checkpoint::atomic_write;
use lushan_model::classify::classify_batch;
use lushan_model::{Activations, Generator, Gpt, Mode, Sampling};
use lushan_tokenizer::Tokenizer;
use lushan_tokenizer::chat::{self, Message, Role};
use lushan_train::task_metrics::{ClassificationReport, chrf, exact_match};
use lushan_train::tasks::{SftData, SftRecord, read_labeled, read_sft};
use serde_json::json;
use std::path::Path;

/// What `--generate` and `--png` ask for.
pub struct TaskEvalOptions<'a> {
    pub generate: bool,
    pub max_new_tokens: usize,
    pub limit: Option<usize>,
    pub png: Option<&'a Path>,
    pub json: bool,
    pub batch_size: usize,
}

/// Whether `path` holds task records rather than text or shards.
pub fn is_task_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "jsonl" || e == "csv")
}

pub fn run(model: &Gpt, tokenizer: &Tokenizer, data: &Path, options: &TaskEvalOptions<'_>) -> Result<()> {
    if model.config.num_labels() > 0 {
        classification(model, tokenizer, data, options)
    } else {
        sft(model, tokenizer, data, options)
    }
}

fn classification(model: &Gpt, tokenizer: &Tokenizer, data: &Path, options: &TaskEvalOptions<'_>) -> Result<()> {
    let labels: Vec<String> = match &model.config.head {
        lushan_model::Head::Classifier { labels, .. } => labels.clone(),
        lushan_model::Head::LanguageModel => anyhow::bail!("the model is not a classifier"),
    };
    let file = read_labeled(data)?;
    let mut records = file.records;
    if let Some(limit) = options.limit {
        records.truncate(limit);
    }
    let mut sequences = Vec::with_capacity(records.len());
    let mut gold = Vec::with_capacity(records.len());
    for r in &records {
        let index = labels.iter().position(|l| *l == r.value.label).with_context(|| {
            format!(
                "{}:{}: label `{}` is not one of the classifier's labels {labels:?}",
                data.display(),
                r.line,
                r.value.label
            )
        })?;
        gold.push(index as u32);
        let ids =
            tokenizer.encode(&r.value.text).with_context(|| format!("{}:{}: field `text`", data.display(), r.line))?;
        anyhow::ensure!(!ids.is_empty(), "{}:{}: field `text` has no tokens", data.display(), r.line);
        sequences.push(ids);
    }
    let classified = classify_batch(model, &sequences)?;
    let predicted: Vec<u32> =
        classified.probabilities.iter().map(|p| lushan_model::sampling::argmax(p) as u32).collect();
    let report = ClassificationReport::from_predictions(&labels, &gold, &predicted);
    // Mean cross-entropy of the gold labels, the loss training reports.
    let loss =
        classified.probabilities.iter().zip(&gold).map(|(p, &g)| -(p[g as usize].max(1e-30) as f64).ln()).sum::<f64>()
            / gold.len().max(1) as f64;
    if let Some(png) = options.png {
        let title = format!("{} on {}", "confusion matrix", data.display());
        let bytes = render_confusion_png(&report, &title)?;
        atomic_write(png, &bytes).with_context(|| format!("writing {}", png.display()))?;
    }
    if options.json {
        println!("{}", json!({"texts": gold.len(), "truncated": classified.truncated, "loss": loss, "report": report}));
    } else {
        println!(
            "{} texts ({} longer than the context, their end cut); loss {loss:.4}",
            gold.len(),
            classified.truncated
        );
        println!("{report}");
        if let Some(png) = options.png {
            println!("confusion matrix picture: {}", png.display());
        }
    }
    Ok(())
}

fn sft(model: &Gpt, tokenizer: &Tokenizer, data: &Path, options: &TaskEvalOptions<'_>) -> Result<()> {
    let mut file = read_sft(data)?;
    if let Some(limit) = options.limit {
        file.records.truncate(limit);
    }
    let examples = SftData::build(&file, tokenizer, model.config.block_size)?;
    let eot = chat::end_of_turn(tokenizer)?;
    // Masked loss: the mean over trained tokens of every example, in length-sorted batches.
    let batches = examples.eval_batches(options.batch_size.max(1), eot)?;
    let max_t = batches.iter().map(|b| b.t).max().unwrap_or(1);
    let max_b = batches.iter().map(|b| b.b).max().unwrap_or(1);
    let mut acts = Activations::new(&model.config, max_b, max_t)?;
    let (mut nats, mut counted) = (0.0f64, 0usize);
    for batch in &batches {
        acts.reshape(batch.b, batch.t)?;
        let n = batch.targets.iter().filter(|&&t| t != u32::MAX).count();
        let loss = model.forward(&mut acts, &batch.inputs, Some(&batch.targets), Mode::Eval)?.unwrap_or(0.0);
        nats += loss as f64 * n as f64;
        counted += n;
    }
    let loss = nats / counted.max(1) as f64;
    let mut result = json!({"examples": examples.examples.len(), "trained_tokens": counted, "masked_loss": loss,
        "perplexity": loss.exp(), "truncated": examples.truncated, "dropped": examples.dropped});
    if !options.json {
        println!(
            "{} examples, {counted} answer tokens ({} truncated to the context, {} dropped)",
            examples.examples.len(),
            examples.truncated,
            examples.dropped
        );
        println!("masked loss on the answers: {loss:.4} nats/token (perplexity {:.3})", loss.exp());
    }
    if options.generate {
        let (mut hypotheses, mut references, mut exact) = (Vec::new(), Vec::new(), 0usize);
        for record in &file.records {
            let Some((prompt, reference)) = prompt_and_reference(tokenizer, &record.value)? else { continue };
            let mut generator =
                Generator::new(model, &prompt, Sampling::greedy(), 0, options.max_new_tokens)?.with_stop_tokens(&[eot]);
            let mut out = Vec::new();
            while let Some(tok) = generator.next_token()? {
                if tok != eot {
                    out.push(tok);
                }
            }
            let answer = tokenizer.decode(&out)?;
            exact += usize::from(exact_match(&answer, &reference));
            hypotheses.push(answer.trim().to_string());
            references.push(reference.trim().to_string());
        }
        let n = hypotheses.len().max(1);
        let em = exact as f64 / n as f64;
        let chrf = chrf(&hypotheses, &references);
        result["generated"] = json!(hypotheses.len());
        result["exact_match"] = json!(em);
        result["chrf"] = json!(chrf);
        if !options.json {
            println!("greedy answers: {} — exact match {:.2} %, chrF {chrf:.2}", hypotheses.len(), 100.0 * em);
            for (h, r) in hypotheses.iter().zip(&references).take(3) {
                println!("  reference: {r}\n  generated: {h}");
            }
        }
    }
    if options.json {
        println!("{result}");
    }
    Ok(())
}

/// The prompt ids a record asks the model to continue and the answer it teaches: the completion of a
/// prompt/completion pair, or the last assistant turn of a conversation (the turns before it are the
/// prompt, rendered by the chat template with its generation prompt). Plain texts have no answer.
fn prompt_and_reference(tokenizer: &Tokenizer, record: &SftRecord) -> Result<Option<(Vec<u32>, String)>> {
    match record {
        SftRecord::Text(_) => Ok(None),
        SftRecord::PromptCompletion { prompt, completion } => Ok(Some((tokenizer.encode(prompt)?, completion.clone()))),
        SftRecord::Messages(messages) => {
            let Some(last) = messages.iter().rposition(|m| m.role == Role::Assistant) else { return Ok(None) };
            let history: Vec<Message> = messages[..last].to_vec();
            let ids = chat::encode_chat(tokenizer, &history, true)?.ids;
            Ok(Some((ids, messages[last].content.clone())))
        }
    }
}
