//! The data a run trains on: a corpus tokenized into shards (the `lm` task) or a task file's examples
//! (`classify`, `sft`), loaded the same way by every rank.

use crate::config::TrainConfig;
use crate::data::{Shard, TRAIN_SHARD, VAL_SHARD, load_tokenizer, prepare_streaming, prepare_with};
use crate::error::{Result, TrainError};
use crate::tasks::{SftRecord, Task, TaskData, TaskDataOptions};
use lushan_tokenizer::Tokenizer;
use std::path::PathBuf;

/// The data a run trains on: token shards (the `lm` task) or tokenized task examples (`classify`, `sft`).
#[derive(Debug)]
pub struct TrainData {
    pub tokenizer: Tokenizer,
    pub source: DataSource,
}

#[derive(Debug)]
pub enum DataSource {
    Shards { train: Shard, val: Shard },
    Task(TaskData),
}

impl TrainData {
    /// Opens the data `config.data` names: a directory made by `lushan prepare`, or text (a file or a
    /// directory of text files, or JSON Lines whose records' texts are the corpus) that is tokenized into
    /// `out_dir/data` first; for `classify` / `sft`, JSONL (or CSV) task records.
    pub fn load(config: &TrainConfig) -> Result<Self> {
        Self::load_for(config, None)
    }

    /// Like [`TrainData::load`], for a model that already has a tokenizer (fine-tuning): text is tokenized
    /// with it, and prepared shards must have been made with it.
    pub fn load_for(config: &TrainConfig, tokenizer: Option<&Tokenizer>) -> Result<Self> {
        if config.task != Task::Lm {
            return Self::load_task(config, tokenizer, None);
        }
        let dir = if config.data.join(TRAIN_SHARD).is_file() {
            config.data.clone()
        } else {
            let dir = config.out_dir.join("data");
            let corpus = corpus_of(config)?;
            let inputs = std::slice::from_ref(&corpus);
            match tokenizer {
                Some(t) => prepare_with(Some(t), inputs, &dir, config.val_fraction)?,
                None if config.tokenizer == "char" => prepare_with(None, inputs, &dir, config.val_fraction)?,
                None => {
                    let t = Tokenizer::load(&config.tokenizer)
                        .map_err(|source| TrainError::Tokenizer { path: PathBuf::from(&config.tokenizer), source })?;
                    prepare_streaming(&t, inputs, &dir, config.val_fraction, &mut |_, _| {})?
                }
            };
            dir
        };
        let tokenizer = match tokenizer {
            Some(t) => t.clone(),
            None => load_tokenizer(&dir)?,
        };
        let train = Shard::open_for(&dir.join(TRAIN_SHARD), &tokenizer)?;
        let val = Shard::open_for(&dir.join(VAL_SHARD), &tokenizer)?;
        Ok(Self { tokenizer, source: DataSource::Shards { train, val } })
    }

    /// Task records tokenized with the model's tokenizer (or, from scratch, with `config.tokenizer`; `char`
    /// builds a character vocabulary from the records' texts). `labels`: the head being fine-tuned.
    pub fn load_task(config: &TrainConfig, tokenizer: Option<&Tokenizer>, labels: Option<Vec<String>>) -> Result<Self> {
        let tokenizer = match tokenizer {
            Some(t) => t.clone(),
            None if config.tokenizer == "char" => {
                let mut text = task_file_texts(&config.data)?;
                if let Some(val) = config.val_data_path() {
                    text.push_str(&task_file_texts(val)?);
                }
                // The chat template's own characters (role labels, newline), which records need not contain.
                text.push_str("System: User: Assistant:\n");
                lushan_tokenizer::CharTokenizer::from_text(&text)
                    .map_err(|source| TrainError::Tokenizer { path: config.data.clone(), source })?
                    .into()
            }
            None => Tokenizer::load(&config.tokenizer)
                .map_err(|source| TrainError::Tokenizer { path: PathBuf::from(&config.tokenizer), source })?,
        };
        let options = TaskDataOptions {
            task: config.task,
            data: config.data.clone(),
            val_data: config.val_data_path().map(PathBuf::from),
            val_fraction: config.val_fraction,
            seed: config.seed,
            max_len: config.block_size,
            labels,
        };
        let task = TaskData::load(&options, &tokenizer)?;
        Ok(Self { tokenizer, source: DataSource::Task(task) })
    }

    /// One line saying what the data is.
    pub fn summary(&self) -> String {
        match &self.source {
            DataSource::Shards { train, val } => {
                format!("{} train / {} val tokens, tokenizer {}", train.len(), val.len(), self.tokenizer.describe())
            }
            DataSource::Task(TaskData::Classify { train, val }) => format!(
                "{} train / {} val texts, labels {:?} (train counts {:?}), tokenizer {}; {} train and {} val \
                 texts longer than the context were truncated (their end was cut)",
                train.examples.len(),
                val.examples.len(),
                train.labels,
                train.label_counts(),
                self.tokenizer.describe(),
                train.truncated,
                val.truncated
            ),
            DataSource::Task(TaskData::Sft { train, val }) => format!(
                "{} train / {} val examples ({} trained tokens in train), tokenizer {}; truncated to the context: \
                 {} train, {} val; dropped (nothing left to train): {} train, {} val",
                train.examples.len(),
                val.examples.len(),
                train.trained_tokens(),
                self.tokenizer.describe(),
                train.truncated,
                val.truncated,
                train.dropped,
                val.dropped
            ),
        }
    }

    /// A description of the data that a resumed run must match.
    pub(crate) fn description(&self) -> String {
        match &self.source {
            DataSource::Shards { .. } => self.tokenizer.describe(),
            DataSource::Task(task) => format!("{} task, {}", task.task().as_str(), self.tokenizer.describe()),
        }
    }
}

/// The text corpus of an `lm` run: `config.data` itself, or — for a `.jsonl` file — the texts of its records
/// (`text`, `prompt` + `completion`, or the messages' contents) written to `out_dir/data/corpus.txt`.
fn corpus_of(config: &TrainConfig) -> Result<PathBuf> {
    if config.data.extension().is_none_or(|e| e != "jsonl") {
        return Ok(config.data.clone());
    }
    let text = task_file_texts(&config.data)?;
    let dir = config.out_dir.join("data");
    std::fs::create_dir_all(&dir).map_err(|source| TrainError::Io { path: dir.clone(), source })?;
    let path = dir.join("corpus.txt");
    lushan_model::checkpoint::atomic_write(&path, text.as_bytes())
        .map_err(|source| TrainError::Io { path: path.clone(), source })?;
    Ok(path)
}

/// Every text of a JSONL (or CSV) task file, one record after another, separated by blank lines: the
/// unlabelled corpus a task's data holds (pre-training, tokenizer training).
pub fn task_file_texts(path: &std::path::Path) -> Result<String> {
    let mut out = String::new();
    if crate::tasks::records::is_csv(path) {
        for r in crate::tasks::read_labeled(path)?.records {
            out.push_str(&r.value.text);
            out.push_str("\n\n");
        }
        return Ok(out);
    }
    for r in crate::tasks::read_sft(path)?.records {
        match r.value {
            SftRecord::Text(text) => out.push_str(&text),
            SftRecord::PromptCompletion { prompt, completion } => {
                out.push_str(&prompt);
                out.push_str(&completion);
            }
            // Conversations as the chat template renders them (turns ended by a newline), so a model
            // pre-trained on them has seen the template's words.
            SftRecord::Messages(messages) => out.push_str(&lushan_tokenizer::chat::render_chat(&messages, false, "\n")),
        }
        out.push_str("\n\n");
    }
    Ok(out)
}
