//! Parameter creation with the paper's initializations (Xavier for translation, N(0, 0.02) for BERT).

use tch::nn::{self, Init};

use crate::config::WeightInit;

/// A linear layer `y = x W^T + b` with `W: [d_out, d_in]` and zero bias.
pub fn linear(p: nn::Path, d_in: i64, d_out: i64, init: WeightInit) -> nn::Linear {
    let ws_init = match init {
        WeightInit::Xavier => {
            let bound = (6.0 / (d_in + d_out) as f64).sqrt();
            Init::Uniform { lo: -bound, up: bound }
        }
        WeightInit::Normal { std } => Init::Randn { mean: 0.0, stdev: std },
    };
    nn::linear(p, d_in, d_out, nn::LinearConfig { ws_init, bs_init: Some(Init::Const(0.0)), bias: true })
}

/// Multiplies a linear layer's weight by `gain` in place (DeepNorm's beta); 1 leaves it alone.
pub fn scale_weight(l: &nn::Linear, gain: f64) {
    if gain != 1.0 {
        tch::no_grad(|| {
            let _ = l.ws.shallow_clone().g_mul_scalar_(gain);
        });
    }
}

/// A LayerNorm over the last dimension, gain 1 and bias 0.
pub fn layer_norm(p: nn::Path, d: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![d], nn::LayerNormConfig { eps, ..Default::default() })
}

/// An embedding matrix `[n, d]` drawn from N(0, std^2), with row `pad` (if any) set to zero.
pub fn embedding_weight(p: &nn::Path, name: &str, n: i64, d: i64, std: f64, pad: Option<i64>) -> tch::Tensor {
    let w = p.var(name, &[n, d], Init::Randn { mean: 0.0, stdev: std });
    if let Some(pad) = pad {
        tch::no_grad(|| {
            let _ = w.get(pad).zero_();
        });
    }
    w
}

/// The embedding std a weight-init scheme implies for width `d`.
pub fn embedding_std(init: WeightInit, d: i64) -> f64 {
    match init {
        WeightInit::Xavier => (d as f64).powf(-0.5),
        WeightInit::Normal { std } => std,
    }
}

/// Runs `build` right after seeding libtorch's global generator, holding a process-wide lock so
/// that no other seeded initialization interleaves with it: the same seed gives the same
/// parameters even when several threads build models.
pub fn seeded<T>(seed: u64, build: impl FnOnce() -> T) -> T {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed as i64);
    build()
}
