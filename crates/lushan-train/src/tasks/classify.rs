//! Sequence classification data: `{"text", "label"}` records → token ids and label indices.

use std::collections::{BTreeSet, HashMap, HashSet};

use lushan_tokenizer::Tokenizer;
use rayon::prelude::*;

use super::batches::{TaskBatch, classify_batch, eval_order};
use super::records::{LabeledText, RecordFile};
use crate::error::{Result, TrainError};

/// One text, tokenized and truncated, and the index of its label in [`ClassifyData::labels`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassifyExample {
    pub ids: Vec<u32>,
    pub label: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassifyData {
    /// Label names; an example's `label` indexes this list, and so does the classifier head's output.
    pub labels: Vec<String>,
    pub examples: Vec<ClassifyExample>,
    /// How many texts were longer than `max_len` tokens and lost their end.
    pub truncated: usize,
}

/// Which side of the train/validation split a file is; it decides what an unknown label means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
}

/// The label list of a classifier trained on `train`.
///
/// Without `given`, the sorted distinct training labels, so the order (and the head's rows) does not depend
/// on the order of the file (spam data gives `["ham", "spam"]`). With `given` — the labels of a checkpoint
/// being fine-tuned — that list is kept, and a training label missing from it is an error: the head has no
/// row for it (`--reset-head` starts a new head instead).
pub fn label_list(train: &RecordFile<LabeledText>, given: Option<&[String]>) -> Result<Vec<String>> {
    let distinct: BTreeSet<&str> = train.records.iter().map(|r| r.value.label.as_str()).collect();
    let mut iter = distinct.iter();
    if let (Some(only), None) = (iter.next(), iter.next()) {
        return Err(TrainError::SingleClass { path: train.path.clone(), label: (*only).to_owned() });
    }
    let Some(given) = given else {
        return Ok(distinct.into_iter().map(str::to_owned).collect());
    };
    check_labels(given)?;
    let known: HashSet<&str> = given.iter().map(String::as_str).collect();
    if let Some(record) = train.records.iter().find(|r| !known.contains(r.value.label.as_str())) {
        return Err(TrainError::LabelNotInHead {
            path: train.path.clone(),
            line: record.line,
            label: record.value.label.clone(),
            known: given.to_vec(),
        });
    }
    Ok(given.to_vec())
}

/// A label list from outside (a checkpoint's `id2label`) must name at least two distinct, non-empty labels.
fn check_labels(labels: &[String]) -> Result<()> {
    let invalid = |reason| Err(TrainError::InvalidLabels { labels: labels.to_vec(), reason });
    if labels.len() < 2 {
        return invalid("a classifier needs at least two labels");
    }
    if u32::try_from(labels.len()).is_err() {
        return invalid("more labels than a u32 can index");
    }
    if labels.iter().any(|l| l.trim().is_empty()) {
        return invalid("a label is empty");
    }
    if labels.iter().collect::<HashSet<_>>().len() != labels.len() {
        return invalid("a label appears twice");
    }
    Ok(())
}

impl ClassifyData {
    /// Tokenizes `file`'s texts, keeping the first `max_len` tokens of longer ones (Hugging Face's default
    /// right-side truncation), and maps labels to their index in `labels` (from [`label_list`]).
    pub fn build(
        file: &RecordFile<LabeledText>,
        labels: &[String],
        split: Split,
        tok: &Tokenizer,
        max_len: usize,
    ) -> Result<ClassifyData> {
        check_labels(labels)?;
        if max_len == 0 {
            return Err(TrainError::DataArgument {
                name: "max_len",
                value: "0".to_owned(),
                expected: "at least one token per example".to_owned(),
            });
        }
        // `check_labels` proved the count fits a u32.
        let index: HashMap<&str, u32> = labels.iter().zip(0u32..).map(|(l, i)| (l.as_str(), i)).collect();
        let encoded: Vec<_> = file.records.par_iter().map(|r| tok.encode(&r.value.text)).collect();
        let mut examples = Vec::with_capacity(file.records.len());
        let mut truncated = 0;
        for (record, ids) in file.records.iter().zip(encoded) {
            let Some(&label) = index.get(record.value.label.as_str()) else {
                let (path, line, label, known) =
                    (file.path.clone(), record.line, record.value.label.clone(), labels.to_vec());
                return Err(match split {
                    Split::Train => TrainError::LabelNotInHead { path, line, label, known },
                    Split::Validation => TrainError::UnseenValLabel { path, line, label, known },
                });
            };
            let mut ids = ids.map_err(|source| TrainError::TaskTokenize {
                path: file.path.clone(),
                line: record.line,
                field: "text".to_owned(),
                source,
            })?;
            if ids.len() > max_len {
                ids.truncate(max_len);
                truncated += 1;
            }
            examples.push(ClassifyExample { ids, label });
        }
        Ok(ClassifyData { labels: labels.to_vec(), examples, truncated })
    }

    /// Tokens per example (the batch loader groups by these).
    pub fn lengths(&self) -> Vec<usize> {
        self.examples.iter().map(|e| e.ids.len()).collect()
    }

    /// The batch of the examples at `indices`, padded with `pad_id` to the longest of them.
    pub fn batch(&self, indices: &[usize], pad_id: u32) -> Result<TaskBatch> {
        classify_batch(&self.examples, indices, pad_id)
    }

    /// Every example exactly once, in batches of at most `batch_size` grouped by length.
    pub fn eval_batches(&self, batch_size: usize, pad_id: u32) -> Result<Vec<TaskBatch>> {
        eval_order(&self.lengths(), batch_size)?.iter().map(|indices| self.batch(indices, pad_id)).collect()
    }

    /// How many examples carry each label, in label order (for the report a run prints).
    pub fn label_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.labels.len()];
        for example in &self.examples {
            if let Some(count) = counts.get_mut(example.label as usize) {
                *count += 1;
            }
        }
        counts
    }
}
