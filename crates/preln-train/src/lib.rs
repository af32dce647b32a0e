//! The training engine: optimizers, learning-rate schedules, checkpoints with exact resume,
//! metrics as JSON lines, divergence diagnosis.

pub mod bench;
pub mod config;
pub mod finetune;
pub mod interrupt;
pub mod metrics;
pub mod mlm;
pub mod optim;
pub mod rundir;
pub mod schedule;
pub mod state;
pub mod trainer;
pub mod translation;

pub use config::TrainConfig;
pub use optim::{Optimizer, OptimizerConfig};
pub use schedule::Schedule;
pub use trainer::{RunOptions, Summary, Trainer};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Diverged(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("{} is in use by {holder}, which trains there now (a second process would mix their checkpoints and metrics); wait for it to finish or stop it", dir.display())]
    Busy { dir: std::path::PathBuf, holder: String },
    #[error("stopped by {}: update {step} is saved in {}; continue with --resume", crate::interrupt::signal_name(*signal), checkpoint.display())]
    Interrupted { signal: i32, step: u64, checkpoint: std::path::PathBuf },
    #[error("{0}: {1}")]
    Io(std::path::PathBuf, std::io::Error),
    #[error(transparent)]
    Model(#[from] preln_model::ModelError),
    #[error(transparent)]
    Op(#[from] preln_ops::OpError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl From<config::ConfigError> for TrainError {
    fn from(e: config::ConfigError) -> Self {
        TrainError::Config(e.to_string())
    }
}
