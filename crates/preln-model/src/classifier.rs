//! BERT's sentence-pair classification head (Devlin et al.): the pooler, a `d x d` layer with
//! tanh on the `<s>` state, then dropout and a linear classifier. Parameters `pooler.*` and
//! `classifier.*`.

use tch::nn;
use tch::Tensor;

use crate::config::WeightInit;
use crate::init::linear;
use crate::linear::apply;

pub struct PairClassifier {
    pooler: nn::Linear,
    classifier: nn::Linear,
    dropout: f64,
}

impl PairClassifier {
    pub fn new(p: &nn::Path, d_model: i64, classes: i64, init: WeightInit, dropout: f64) -> PairClassifier {
        PairClassifier {
            pooler: linear(p / "pooler", d_model, d_model, init),
            classifier: linear(p / "classifier", d_model, classes, init),
            dropout,
        }
    }

    /// Class logits from the `<s>` hidden states.
    ///
    /// # Shapes
    /// cls: `[B, d]` -> `[B, classes]`
    pub fn forward(&self, cls: &Tensor, train: bool) -> Tensor {
        let pooled = preln_ops::dropout(&apply(&self.pooler, cls).tanh(), self.dropout, train);
        apply(&self.classifier, &pooled)
    }
}
