//! The training crate's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    // ---- data: corpora, shards, loader (owned by the data module) ----
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // ---- training: config, loop, resume (owned by the trainer) ----
    #[error(transparent)]
    Model(#[from] lushan_model::ModelError),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
