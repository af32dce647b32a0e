//! The residual wrapper around every sublayer, with its norm in the slot the placement chose.

use tch::nn::{self, Module};
use tch::Tensor;

use crate::config::LayerConfig;
use crate::init::layer_norm;
use crate::placement::NormPosition;

/// `x + Dropout(F(x))` with one LayerNorm before the branch or after the add.
#[derive(Debug)]
pub struct Residual {
    norm: Option<(NormPosition, nn::LayerNorm)>,
    dropout: f64,
}

/// What a residual block produced.
pub struct ResidualOut {
    /// The block's output (after the norm when it sits after the add).
    pub out: Tensor,
    /// The residual sum `x + Dropout(F(.))` before any norm after the add: `x5` of Post-LN
    /// and `x_{l+1}` of Pre-LN in PAPER.md, Table 1.
    pub sum: Tensor,
}

impl Residual {
    /// The norm, if any, is the variable `{p}` (e.g. `encoder.layers.0.self_attn_norm`).
    pub fn new(p: nn::Path, cfg: &LayerConfig) -> Self {
        let norm = cfg.placement.slots().sublayer_norm.map(|pos| (pos, layer_norm(p, cfg.d_model, cfg.layer_norm_eps)));
        Residual { norm, dropout: cfg.dropout }
    }

    /// # Shapes
    /// x: `[B, T, d]`; `branch` maps `[B, T, d]` to `[B, T, d]`.
    pub fn forward(&self, x: &Tensor, train: bool, branch: impl FnOnce(&Tensor) -> Tensor) -> ResidualOut {
        let branch_out = match &self.norm {
            Some((NormPosition::BeforeBranch, ln)) => branch(&ln.forward(x)),
            _ => branch(x),
        };
        let sum = preln_ops::residual_dropout(x, &branch_out, self.dropout, train);
        let out = match &self.norm {
            Some((NormPosition::AfterResidual, ln)) => ln.forward(&sum),
            _ => sum.shallow_clone(),
        };
        ResidualOut { out, sum }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Seq2SeqConfig;
    use crate::placement::NormPlacement;
    use tch::{nn::VarStore, Device, Tensor};

    #[test]
    fn layer_norm_of_a_3_vector() {
        // x = [1, 2, 3]: mean 2, biased variance 2/3, so LN(x) = (x - 2) / sqrt(2/3 + eps).
        let vs = VarStore::new(Device::Cpu);
        let ln = layer_norm(vs.root() / "ln", 3, 1e-5);
        let y = Vec::<f32>::try_from(ln.forward(&Tensor::from_slice(&[1f32, 2.0, 3.0]))).unwrap();
        let s = (2.0f64 / 3.0 + 1e-5).sqrt();
        for (got, want) in y.iter().zip([-1.0 / s, 0.0, 1.0 / s]) {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn each_placement_puts_its_norm_where_the_paper_does() {
        // Branch F(h) = 2h on x = [1, 2, 3]; LN(v) normalizes v.
        let x = Tensor::from_slice(&[1f32, 2.0, 3.0]).view([1, 1, 3]);
        let ln = |v: &Tensor| v.layer_norm([3], None::<Tensor>, None::<Tensor>, 1e-5, false);
        for placement in NormPlacement::ALL {
            let cfg = Seq2SeqConfig { placement, d_model: 3, heads: 1, ..Default::default() }.layer();
            let vs = VarStore::new(Device::Cpu);
            let r = Residual::new(vs.root() / "n", &cfg).forward(&x, false, |h| h * 2.0);
            let (want_out, want_sum) = match placement {
                NormPlacement::Post => (ln(&(&x * 3.0)), &x * 3.0),
                NormPlacement::Pre => (&x + ln(&x) * 2.0, &x + ln(&x) * 2.0),
            };
            assert!(r.out.allclose(&want_out, 1e-6, 1e-6, false), "{placement}");
            assert!(r.sum.allclose(&want_sum, 1e-6, 1e-6, false), "{placement}");
        }
    }
}
