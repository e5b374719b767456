//! Data: corpora → token shards on disk → batches in memory.
//!
//! - [`prepare`] turns text files into a tokenizer file plus `train.bin` / `val.bin`.
//! - [`shard`] defines the shard format and memory-maps shards with full validation.
//! - [`loader`] draws training batches (resumable from one `u64`) and fixed evaluation windows.
//! - Files are replaced crash-safely with `lushan_model::checkpoint::atomic_write_with`.

pub mod loader;
pub mod prepare;
pub mod shard;
pub mod stream_prepare;

pub use loader::{Loader, SequentialWindows, Window, eval_batches, sequential_windows};
pub use prepare::{
    Corpus, PrepareReport, encode_file_with, load_tokenizer, prepare_char, prepare_with, read_corpus, save_tokenizer,
    split_point,
};
pub use shard::{SHARD_MAGIC, SHARD_VERSION, Shard, TRAIN_SHARD, VAL_SHARD, token_width, write_shard};
pub use stream_prepare::prepare_streaming;
