//! The contract between the training loop and what it trains.

use std::collections::BTreeMap;

use preln_model::LossSums;
use tch::nn::VarStore;

use crate::TrainError;

/// `E ||x||^2 / d` after the embedding and every layer, by stack (`encoder`, `decoder`).
pub type HiddenNorms = BTreeMap<String, Vec<f64>>;

/// Validation results: loss and NLL per predicted token, and task metrics (`bleu`,
/// `accuracy`, ...; `None` where not computed).
#[derive(Clone, Debug, Default)]
pub struct Validation {
    pub loss: f64,
    pub nll: f64,
    pub extra: Vec<(String, Option<f64>)>,
}

/// What the loop trains.
pub trait Task {
    type Batch;
    /// The training batches (example indices), fixed for the run; an epoch visits them in a
    /// seeded order.
    fn batches(&self) -> &[Vec<usize>];
    /// The batch of examples `idx`; `seed` draws what the batch itself randomizes (MLM masks).
    fn batch(&self, idx: &[usize], seed: u64) -> Self::Batch;
    /// The tokens whose loss the batch counts.
    fn tokens(&self, batch: &Self::Batch) -> i64;
    /// Training-mode forward: summed losses (fp32) and, with `hidden`, the hidden-state norms.
    fn loss(&self, batch: &Self::Batch, hidden: bool) -> Result<(LossSums, Option<HiddenNorms>), TrainError>;
    /// Validation, without dropout or autograd.
    fn validate(&self) -> Result<Validation, TrainError>;
    fn var_store(&self) -> &VarStore;
    fn var_store_mut(&mut self) -> &mut VarStore;
}
