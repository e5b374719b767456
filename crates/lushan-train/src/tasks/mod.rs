//! Task data for fine-tuning: sequence classification and supervised fine-tuning (SFT) on instructions and
//! conversations.
//!
//! - [`records`] reads JSON Lines (and CSV for classification) with errors naming file, line and field.
//! - [`classify`] turns `{"text", "label"}` records into token ids and label indices.
//! - [`sft`] turns `{"text"}`, `{"prompt", "completion"}` and `{"messages"}` records into token ids and a
//!   loss mask (only completions and assistant replies are trained).
//! - [`batches`] pads batches to their own longest example and groups training batches by length.
//!
//! [`TaskData::load`] is the entry point: training file, optional validation file (otherwise a seeded split
//! of the training records), tokenizer, context length.

pub mod batches;
pub mod classify;
pub mod records;
pub mod sft;

pub use batches::{
    GROUP_CHUNK_BATCHES, PaddingStats, TaskBatch, TaskLoader, TaskLoaderState, classify_batch, eval_order,
    padding_stats, sft_batch,
};
pub use classify::{ClassifyData, ClassifyExample, Split, label_list};
pub use records::{LabeledText, Located, MAX_LINE_BYTES, RecordFile, SftRecord, read_labeled, read_sft};
pub use sft::{SftData, SftExample};

use std::path::PathBuf;

use lushan_kernels::rng::Rng;
use lushan_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// What a training run learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Next-token prediction on token shards (pre-training, plain fine-tuning).
    #[default]
    Lm,
    /// Sequence classification: one label per text.
    Classify,
    /// Supervised fine-tuning: next-token loss on completions and assistant replies only.
    Sft,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Lm => "lm",
            Task::Classify => "classify",
            Task::Sft => "sft",
        }
    }
}

/// Stream index mixed into the seed for the train/validation split, so the split never shares draws with
/// the batch order even when both are given the same seed.
const SPLIT_STREAM: u64 = 0x0073_706c_6974; // "split"

/// Where the task data comes from and how it is cut.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskDataOptions {
    pub task: Task,
    /// Training records: JSON Lines, or CSV with `text,label` columns for classification.
    pub data: PathBuf,
    /// Validation records; without them `val_fraction` of the training records are held out.
    pub val_data: Option<PathBuf>,
    /// Share of the records held out when there is no `val_data`, in `[0, 1)`; 0 holds out nothing.
    pub val_fraction: f64,
    pub seed: u64,
    /// The model's context length: classification keeps this many tokens, SFT `max_len + 1`.
    pub max_len: usize,
    /// Classification labels of the checkpoint being fine-tuned (its head's rows), if it has a head to keep.
    pub labels: Option<Vec<String>>,
}

/// Tokenized training and validation examples of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskData {
    Classify { train: ClassifyData, val: ClassifyData },
    Sft { train: SftData, val: SftData },
}

impl TaskData {
    /// Reads, splits and tokenizes the data of `options.task`.
    pub fn load(options: &TaskDataOptions, tok: &Tokenizer) -> Result<TaskData> {
        match options.task {
            Task::Lm => Err(TrainError::InvalidSetting {
                name: "task".to_owned(),
                reason: "the lm task reads token shards (`lushan prepare`), not task records".to_owned(),
            }),
            Task::Classify => {
                let (train, val) = train_and_val(options, read_labeled)?;
                let labels = label_list(&train, options.labels.as_deref())?;
                let val = ClassifyData::build(&val, &labels, Split::Validation, tok, options.max_len)?;
                let train = ClassifyData::build(&train, &labels, Split::Train, tok, options.max_len)?;
                Ok(TaskData::Classify { train, val })
            }
            Task::Sft => {
                let (train, val) = train_and_val(options, read_sft)?;
                let val =
                    if val.records.is_empty() { empty_sft() } else { SftData::build(&val, tok, options.max_len)? };
                let train = SftData::build(&train, tok, options.max_len)?;
                Ok(TaskData::Sft { train, val })
            }
        }
    }

    pub fn task(&self) -> Task {
        match self {
            TaskData::Classify { .. } => Task::Classify,
            TaskData::Sft { .. } => Task::Sft,
        }
    }

    /// Lengths of the training examples, for [`TaskLoader::new`].
    pub fn train_lengths(&self) -> Vec<usize> {
        match self {
            TaskData::Classify { train, .. } => train.lengths(),
            TaskData::Sft { train, .. } => train.lengths(),
        }
    }

    /// Tokens in the longest example of either split: the longest sequence a batch can hold.
    pub fn longest_example(&self) -> usize {
        let (train, val) = match self {
            TaskData::Classify { train, val } => (train.lengths(), val.lengths()),
            TaskData::Sft { train, val } => (train.lengths(), val.lengths()),
        };
        train.into_iter().chain(val).max().unwrap_or(0)
    }

    /// The training batch of the examples at `indices` (from [`TaskLoader::next_indices`]).
    pub fn train_batch(&self, indices: &[usize], pad_id: u32) -> Result<TaskBatch> {
        match self {
            TaskData::Classify { train, .. } => train.batch(indices, pad_id),
            TaskData::Sft { train, .. } => train.batch(indices, pad_id),
        }
    }

    /// Every validation example once, in batches of at most `batch_size`.
    pub fn val_batches(&self, batch_size: usize, pad_id: u32) -> Result<Vec<TaskBatch>> {
        match self {
            TaskData::Classify { val, .. } => val.eval_batches(batch_size, pad_id),
            TaskData::Sft { val, .. } => val.eval_batches(batch_size, pad_id),
        }
    }

    pub fn val_len(&self) -> usize {
        match self {
            TaskData::Classify { val, .. } => val.examples.len(),
            TaskData::Sft { val, .. } => val.examples.len(),
        }
    }
}

fn empty_sft() -> SftData {
    SftData { examples: Vec::new(), truncated: 0, dropped: 0 }
}

/// Reads the training file and the validation file, or splits the training records when there is none.
fn train_and_val<T>(
    options: &TaskDataOptions,
    read: impl Fn(&std::path::Path) -> Result<RecordFile<T>>,
) -> Result<(RecordFile<T>, RecordFile<T>)> {
    let train = read(&options.data)?;
    match &options.val_data {
        Some(path) => Ok((train, read(path)?)),
        None => split_records(train, options.val_fraction, options.seed),
    }
}

/// Holds out `round(n · val_fraction)` records (at least one when `val_fraction > 0`) chosen by a seeded
/// shuffle; both parts keep file order so errors and examples read in the order of the file.
pub fn split_records<T>(file: RecordFile<T>, val_fraction: f64, seed: u64) -> Result<(RecordFile<T>, RecordFile<T>)> {
    let n = file.records.len();
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(TrainError::DataArgument {
            name: "val_fraction",
            value: val_fraction.to_string(),
            expected: "a number in [0, 1)".to_owned(),
        });
    }
    // f64 holds every record count below 2^53 exactly; the product is in [0, n).
    let mut n_val = (n as f64 * val_fraction).round() as usize;
    if val_fraction > 0.0 {
        n_val = n_val.max(1);
    }
    if n_val >= n {
        return Err(TrainError::TaskSplitEmpty { split: "training", records: n, val_fraction });
    }
    let mut rng = Rng::derive(seed, SPLIT_STREAM);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let mut is_val = vec![false; n];
    for &i in &order[..n_val] {
        is_val[i] = true;
    }
    let (mut train, mut val) = (Vec::with_capacity(n - n_val), Vec::with_capacity(n_val));
    for (record, held_out) in file.records.into_iter().zip(is_val) {
        if held_out { val.push(record) } else { train.push(record) }
    }
    Ok((RecordFile { path: file.path.clone(), records: train }, RecordFile { path: file.path, records: val }))
}
