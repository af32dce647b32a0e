//! The model crate's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model config: `{key}` {reason}")]
    InvalidConfig { key: &'static str, reason: String },
    /// A model whose training cannot fit in the memory there is.
    #[error("{0}")]
    TooLarge(String),
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    /// A model that a foreign format cannot hold, or a checkpoint that does not match it.
    #[error("export: {0}")]
    Export(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
}

pub type Result<T> = std::result::Result<T, ModelError>;
