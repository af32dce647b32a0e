//! The training engine: optimizers, learning-rate schedules, checkpoints with exact resume,
//! metrics as JSON lines, divergence diagnosis. It knows the model only through its forward
//! pass and parameter paths.

pub mod optim;
pub mod schedule;

pub use optim::{Optimizer, OptimizerConfig};
pub use schedule::Schedule;
