//! The training engine: optimizers, learning-rate schedules, checkpoints with exact resume,
//! metrics as JSON lines, divergence diagnosis.

pub mod bench;
pub mod compare;
pub mod config;
pub mod device;
pub mod dist;
pub mod interrupt;
pub mod launch;
pub mod metrics;
pub mod optim;
pub mod report;
pub mod rundir;
pub mod schedule;
pub mod seeds;
pub mod state;
pub mod task;
pub mod tasks;
pub mod tensorboard;
pub mod trainer;

pub use tasks::{finetune, mlm, translation};

pub use config::TrainConfig;
pub use optim::{Optimizer, OptimizerConfig};
pub use schedule::Schedule;
pub use trainer::{RunOptions, Summary, Trainer};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Diverged(Box<Divergence>),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A benchmark or reference process that failed or said something unreadable.
    #[error("{0}")]
    Process(String),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("{} is in use by {holder}, which trains there now (a second process would mix their checkpoints and metrics); wait for it to finish or stop it", dir.display())]
    Busy { dir: std::path::PathBuf, holder: String },
    #[error("stopped by {}: update {step} is saved in {}; continue with --resume", crate::interrupt::signal_name(*signal), checkpoint.display())]
    Interrupted { signal: i32, step: u64, checkpoint: std::path::PathBuf },
    /// A collective of data-parallel training that failed, or ranks that disagree.
    #[error("data-parallel: {0}")]
    Dist(String),
    #[error("{0}: {1}")]
    Io(std::path::PathBuf, std::io::Error),
    #[error(transparent)]
    Model(#[from] preln_model::ModelError),
    #[error(transparent)]
    Data(#[from] preln_data::DataError),
    #[error("validation BLEU: {0}")]
    Bleu(#[from] preln_eval::bleu::BleuError),
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

/// Why a run stopped with a non-finite loss or gradient.
#[derive(Debug)]
pub struct Divergence {
    /// What the metrics file records.
    pub record: metrics::DivergedRecord,
    /// The first parameters with a non-finite gradient.
    pub non_finite: Vec<String>,
    /// The last good checkpoint and its update, if one had been written.
    pub kept: Option<(std::path::PathBuf, u64)>,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.record;
        write!(
            f,
            "training diverged at step {} (epoch {}): loss {}, gradient norm {}; largest gradient: {} ({})",
            r.step, r.epoch, r.loss, r.grad_norm, r.largest_grad, r.largest_grad_norm
        )?;
        if !self.non_finite.is_empty() {
            write!(f, "; non-finite gradients in {}", self.non_finite.join(", "))?;
        }
        match &self.kept {
            Some((path, step)) => write!(f, "; the last good checkpoint is {} (step {step})", path.display()),
            None => write!(f, "; no checkpoint had been written yet"),
        }
    }
}
