//! The normalization a slot holds: LayerNorm (gain and bias) or RMSNorm (gain only).

use tch::nn::{self, Init};
use tch::Tensor;

use crate::placement::NormKind;

/// A norm over the last dimension; gain starts at 1, bias at 0.
#[derive(Debug)]
pub struct Norm {
    kind: NormKind,
    weight: Tensor,
    /// LayerNorm only.
    bias: Option<Tensor>,
    d: i64,
    eps: f64,
}

impl Norm {
    /// Variables `{p}.weight` and, for LayerNorm, `{p}.bias`.
    pub fn new(p: nn::Path, kind: NormKind, d: i64, eps: f64) -> Self {
        let weight = p.var("weight", &[d], Init::Const(1.0));
        let bias = match kind {
            NormKind::LayerNorm => Some(p.var("bias", &[d], Init::Const(0.0))),
            NormKind::RmsNorm => None,
        };
        Norm { kind, weight, bias, d, eps }
    }

    /// # Shapes
    /// `[..., d]` -> `[..., d]`
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self.kind {
            NormKind::LayerNorm => x.layer_norm([self.d], Some(&self.weight), self.bias.as_ref(), self.eps, true),
            NormKind::RmsNorm => x.rms_norm([self.d], Some(&self.weight), self.eps),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    #[test]
    fn rms_norm_of_a_3_vector() {
        // x = [1, 2, 3]: mean square 14/3, so RMSNorm(x) = x / sqrt(14/3 + eps).
        let vs = VarStore::new(Device::Cpu);
        let n = Norm::new(vs.root() / "n", NormKind::RmsNorm, 3, 1e-6);
        let y = Vec::<f32>::try_from(n.forward(&Tensor::from_slice(&[1f32, 2.0, 3.0]))).unwrap();
        let s = (14.0f64 / 3.0 + 1e-6).sqrt();
        for (got, x) in y.iter().zip([1.0, 2.0, 3.0]) {
            assert!((*got as f64 - x / s).abs() < 1e-6, "{got} vs {}", x / s);
        }
        assert_eq!(vs.variables().len(), 1, "RMSNorm has a gain and no bias");
    }

    #[test]
    fn layer_norm_of_a_3_vector() {
        // x = [1, 2, 3]: mean 2, biased variance 2/3, so LN(x) = (x - 2) / sqrt(2/3 + eps).
        let vs = VarStore::new(Device::Cpu);
        let n = Norm::new(vs.root() / "n", NormKind::LayerNorm, 3, 1e-5);
        let y = Vec::<f32>::try_from(n.forward(&Tensor::from_slice(&[1f32, 2.0, 3.0]))).unwrap();
        let s = (2.0f64 / 3.0 + 1e-5).sqrt();
        for (got, want) in y.iter().zip([-1.0 / s, 0.0, 1.0 / s]) {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}
