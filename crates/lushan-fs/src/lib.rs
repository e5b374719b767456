//! Files lushan writes and reads in model, adapter, tokenizer, data and resume directories.
//!
//! Writing is crash-safe ([`atomic_write`], [`replace_dir`]): a reader — or the next run after a kill or a
//! power cut — sees either the old file (directory) or the complete new one, never half of one, and the
//! temporary files a killed writer leaves have one naming scheme that [`remove_stale_temp_files`] knows.
//!
//! Reading refuses anything that is not a regular file before opening it ([`open_regular`]): opening a
//! named pipe blocks until a writer appears, so a `model.safetensors` that is a FIFO would hang forever.
#![forbid(unsafe_code)]

mod read;
mod write;

pub use read::{NotRegularFile, check_regular_file, open_regular, read_regular, read_to_string_regular};
pub use write::{PathError, atomic_write, atomic_write_with, remove_stale_temp_files, replace_dir};
