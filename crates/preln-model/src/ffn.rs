//! The position-wise feed-forward sublayer: `Act(x W1 + b1) W2 + b2`.

use tch::nn;
use tch::Tensor;

use crate::config::{Activation, LayerConfig};
use crate::init::{linear, scale_weight};
use crate::linear::apply;

#[derive(Debug)]
pub struct FeedForward {
    fc1: nn::Linear,
    fc2: nn::Linear,
    activation: Activation,
    dropout: f64,
}

impl FeedForward {
    /// `fc1` is the paper's W1 (`[ffn, d]`), `fc2` its W2 (`[d, ffn]`); both weights start
    /// multiplied by `gain` (DeepNorm's beta).
    pub fn new(p: nn::Path, cfg: &LayerConfig, gain: f64) -> Self {
        let fc1 = linear(&p / "fc1", cfg.d_model, cfg.ffn_dim, cfg.init);
        let fc2 = linear(&p / "fc2", cfg.ffn_dim, cfg.d_model, cfg.init);
        scale_weight(&fc1, gain);
        scale_weight(&fc2, gain);
        FeedForward { fc1, fc2, activation: cfg.activation, dropout: cfg.activation_dropout }
    }

    /// # Shapes
    /// `[B, T, d]` -> `[B, T, d]`
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = apply(&self.fc1, x);
        let h = match self.activation {
            Activation::Relu => h.relu(),
            Activation::Gelu => h.gelu("none"),
        };
        apply(&self.fc2, &preln_ops::dropout(&h, self.dropout, train))
    }
}
