//! Token embeddings and fixed sinusoidal positions (fairseq conventions).

use tch::{Device, Kind, Tensor};

/// Sinusoidal position table, fairseq layout: sines in the first half, cosines in the second,
/// with frequencies `10000^(-i / (d/2 - 1))`.
///
/// Computed in fp64, returned in `kind`.
///
/// # Shapes
/// -> `[len, d]` for positions `start..start + len`
pub fn sinusoidal(start: i64, len: i64, d: i64, (kind, device): (Kind, Device)) -> Tensor {
    let half = d / 2;
    let step = (10_000f64).ln() / (half - 1).max(1) as f64;
    let freqs = (Tensor::arange(half, (Kind::Double, device)) * -step).exp();
    let pos = Tensor::arange_start(start, start + len, (Kind::Double, device));
    let args = pos.unsqueeze(1) * freqs.unsqueeze(0);
    Tensor::cat(&[args.sin(), args.cos()], 1).to_kind(kind)
}

/// Looks up rows of `weight`; the gradient never reaches row `pad_id`.
///
/// # Shapes
/// weight: `[V, d]`; tokens: `[B, T]` -> `[B, T, d]`
pub fn lookup(weight: &Tensor, tokens: &Tensor, pad_id: i64) -> Tensor {
    Tensor::embedding(weight, tokens, pad_id, false, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoid_starts_at_sin0_cos0() {
        let t = sinusoidal(0, 3, 8, (Kind::Float, Device::Cpu));
        assert_eq!(t.size(), vec![3, 8]);
        let row0 = Vec::<f32>::try_from(t.get(0)).unwrap();
        assert_eq!(row0, vec![0., 0., 0., 0., 1., 1., 1., 1.]);
        // Position 1, first frequency is 1: sin(1), cos(1).
        let row1 = Vec::<f32>::try_from(t.get(1)).unwrap();
        assert!((row1[0] - 1f32.sin()).abs() < 1e-6);
        assert!((row1[4] - 1f32.cos()).abs() < 1e-6);
        // Last frequency is 1/10000.
        assert!((row1[3] - (1e-4f32).sin()).abs() < 1e-9);
    }
}
