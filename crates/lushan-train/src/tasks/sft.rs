//! Supervised fine-tuning data: records → token ids and a per-token loss mask.
//!
//! | record | ids | trained |
//! |---|---|---|
//! | `{"text"}` | text ++ [END-OF-TURN] | every token |
//! | `{"prompt", "completion"}` | prompt ++ completion ++ [END-OF-TURN] | completion and END-OF-TURN |
//! | `{"messages"}` | the chat template ([`lushan_tokenizer::chat`]) | each assistant reply and its END-OF-TURN |
//!
//! END-OF-TURN is [`lushan_tokenizer::chat::end_of_turn`], the token that stops generation, so a model
//! learns to end its answers where serving will stop them.

use lushan_tokenizer::Tokenizer;
use lushan_tokenizer::chat::{self, ChatTokens};
use rayon::prelude::*;

use super::batches::{TaskBatch, eval_order, sft_batch};
use super::records::{Located, RecordFile, SftRecord};
use crate::error::{Result, TrainError};

/// One sequence and which of its tokens the loss is taken on (`trained[i]` for `ids[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftExample {
    pub ids: Vec<u32>,
    pub trained: Vec<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftData {
    pub examples: Vec<SftExample>,
    /// How many sequences were longer than `max_len + 1` tokens and lost their end.
    pub truncated: usize,
    /// How many records were left with no trained target after truncation and were skipped.
    pub dropped: usize,
}

/// Encodes one record (see the module docs); `eot` is the END-OF-TURN id.
pub fn encode_record(
    file: &RecordFile<SftRecord>,
    record: &Located<SftRecord>,
    tok: &Tokenizer,
    eot: u32,
) -> Result<ChatTokens> {
    let tokenize_error = |field: &str, source| TrainError::TaskTokenize {
        path: file.path.clone(),
        line: record.line,
        field: field.to_owned(),
        source,
    };
    let encode = |field: &str, text: &str| tok.encode(text).map_err(|source| tokenize_error(field, source));
    match &record.value {
        SftRecord::Text(text) => {
            let mut ids = encode("text", text)?;
            ids.push(eot);
            Ok(ChatTokens { trained: vec![true; ids.len()], ids })
        }
        SftRecord::PromptCompletion { prompt, completion } => {
            let mut ids = encode("prompt", prompt)?;
            let prompt_len = ids.len();
            ids.extend(encode("completion", completion)?);
            ids.push(eot);
            let mut trained = vec![false; prompt_len];
            trained.resize(ids.len(), true);
            Ok(ChatTokens { ids, trained })
        }
        SftRecord::Messages(messages) => {
            let chat_error = |source| TrainError::TaskChat {
                path: file.path.clone(),
                line: record.line,
                field: "messages".to_owned(),
                source,
            };
            chat::validate_for_training(messages).map_err(chat_error)?;
            chat::encode_chat(tok, messages, false).map_err(chat_error)
        }
    }
}

impl SftData {
    /// Encodes every record of `file`, keeps the first `max_len + 1` tokens of longer sequences (the
    /// model sees `max_len` inputs, each predicting the next token) and drops those left with no trained
    /// target. All records dropped is an error: there would be nothing to learn or measure.
    pub fn build(file: &RecordFile<SftRecord>, tok: &Tokenizer, max_len: usize) -> Result<SftData> {
        let window = max_len.checked_add(1).filter(|_| max_len > 0).ok_or_else(|| TrainError::DataArgument {
            name: "max_len",
            value: max_len.to_string(),
            expected: "at least 1 and below usize::MAX".to_owned(),
        })?;
        let eot = chat::end_of_turn(tok)
            .map_err(|e| TrainError::InvalidSetting { name: "tokenizer".to_owned(), reason: e.to_string() })?;
        let encoded: Vec<Result<ChatTokens>> =
            file.records.par_iter().map(|record| encode_record(file, record, tok, eot)).collect();
        let (mut examples, mut truncated, mut dropped) = (Vec::with_capacity(encoded.len()), 0, 0);
        for tokens in encoded {
            let ChatTokens { mut ids, mut trained } = tokens?;
            if ids.len() > window {
                ids.truncate(window);
                trained.truncate(window);
                truncated += 1;
            }
            // Position 0 is never a target (nothing precedes it), so a trained token must come after it.
            if !trained.iter().skip(1).any(|&t| t) {
                dropped += 1;
                continue;
            }
            examples.push(SftExample { ids, trained });
        }
        if examples.is_empty() {
            return Err(TrainError::TaskAllDropped { path: file.path.clone(), dropped, max_len });
        }
        Ok(SftData { examples, truncated, dropped })
    }

    /// Input tokens per example (`ids.len() - 1`: the last token is only ever a target).
    pub fn lengths(&self) -> Vec<usize> {
        self.examples.iter().map(|e| e.ids.len().saturating_sub(1)).collect()
    }

    /// The batch of the examples at `indices`, padded to the longest of them; `pad_id` fills padded
    /// inputs (their targets are ignored, so any valid id will do).
    pub fn batch(&self, indices: &[usize], pad_id: u32) -> Result<TaskBatch> {
        sft_batch(&self.examples, indices, pad_id)
    }

    /// Every example exactly once, in batches of at most `batch_size` grouped by length.
    pub fn eval_batches(&self, batch_size: usize, pad_id: u32) -> Result<Vec<TaskBatch>> {
        eval_order(&self.lengths(), batch_size)?.iter().map(|indices| self.batch(indices, pad_id)).collect()
    }

    /// Tokens that carry a loss, over all examples.
    pub fn trained_tokens(&self) -> usize {
        self.examples.iter().map(|e| e.trained.iter().skip(1).filter(|&&t| t).count()).sum()
    }
}
