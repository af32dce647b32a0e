//! Diagnostics at initialization: per-parameter gradient norms and per-layer hidden-state
//! norms (Figure 3, Lemma 2), and the depth scan of Theorem 1, with their reports and plots.

pub mod depth_study;
pub mod doc;
pub mod heatmap;
pub mod init_study;
pub mod plot;
pub mod probe;
pub mod report;
pub mod studies;

pub use preln_eval::stats;
pub use preln_model::diagnostics::{grad_norms, sq_norms_over_d};
pub use probe::{probe, Probe};
pub use stats::{LineFit, Stat};
