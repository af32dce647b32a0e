//! The data crate's error type: every variant names the file (and line) it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}:{line}: invalid UTF-8")]
    InvalidUtf8 { path: PathBuf, line: usize },
    #[error(
        "{src} has {src_lines} lines but {tgt} has {tgt_lines}: parallel files must have one line per sentence pair"
    )]
    LineCountMismatch { src: PathBuf, src_lines: usize, tgt: PathBuf, tgt_lines: usize },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

pub type Result<T> = std::result::Result<T, DataError>;

pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DataError {
    let path = path.into();
    move |error| DataError::Io { path, error }
}
