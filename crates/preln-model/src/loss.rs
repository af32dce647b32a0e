//! Label-smoothed cross-entropy over non-ignored tokens, as fairseq's
//! `label_smoothed_cross_entropy` defines it.
//!
//! For a token with log-probabilities `lp` over `V` classes and target `y`:
//!
//! ```text
//! nll    = -lp[y]
//! smooth = -sum_v lp[v]
//! loss   = (1 - eps - eps / (V - 1)) * nll + eps / (V - 1) * smooth
//! ```
//!
//! i.e. the target gets `1 - eps` and every other class `eps / (V - 1)`. Sums run over tokens
//! whose target is not `ignore_index` (the padding id for translation).

use tch::{Kind, Tensor};

/// Sums over the counted tokens of a batch.
pub struct LossSums {
    /// Scalar: label-smoothed loss, summed.
    pub loss: Tensor,
    /// Scalar: negative log-likelihood of the targets, summed.
    pub nll: Tensor,
    /// Scalar int64: the number of counted tokens.
    pub tokens: Tensor,
}

impl LossSums {
    /// The loss per counted token (0 when nothing is counted).
    pub fn mean_loss(&self) -> Tensor {
        &self.loss / self.tokens.clamp_min(1).to_kind(self.loss.kind())
    }

    pub fn mean_nll(&self) -> Tensor {
        &self.nll / self.tokens.clamp_min(1).to_kind(self.nll.kind())
    }
}

/// # Shapes
/// logits: `[..., V]`; target: `[...]` -> scalar sums
///
/// fp32 and bf16 logits on the CPU go through one fused kernel ([`preln_ops::smoothed_ce`]:
/// fp32 statistics, no log-probability tensor); other devices and fp64 through libtorch ops.
pub fn label_smoothed_nll(logits: &Tensor, target: &Tensor, epsilon: f64, ignore_index: i64) -> LossSums {
    if logits.device() == tch::Device::Cpu && matches!(logits.kind(), Kind::Float | Kind::BFloat16) {
        // An error (a target outside the vocabulary, say) falls through to the libtorch ops,
        // which report it with the op and shapes.
        if let Ok((loss, nll)) = preln_ops::smoothed_ce(logits, target, epsilon, ignore_index) {
            return LossSums { loss, nll, tokens: target.ne(ignore_index).sum(Kind::Int64) };
        }
    }
    reference(logits, target, epsilon, ignore_index)
}

/// The same loss by libtorch ops (log_softmax, gather, sums).
pub fn reference(logits: &Tensor, target: &Tensor, epsilon: f64, ignore_index: i64) -> LossSums {
    let v = *logits.size().last().expect("logits need a class dimension");
    // Statistics in fp32 at least, whatever the logits' precision.
    let kind = if logits.kind() == Kind::Double { Kind::Double } else { Kind::Float };
    let lprobs = logits.log_softmax(-1, kind).view([-1, v]);
    let target = target.reshape([-1]);
    let keep = target.ne(ignore_index);
    let safe_target = target.where_scalarother(&keep, 0).unsqueeze(1);
    let nll = -lprobs.gather(1, &safe_target, false).squeeze_dim(1);
    let smooth = -lprobs.sum_dim_intlist(-1, false, kind);
    let zero = Tensor::zeros([], (kind, logits.device()));
    let nll = nll.where_self(&keep, &zero).sum(kind);
    let smooth = smooth.where_self(&keep, &zero).sum(kind);
    let eps_i = if v > 1 { epsilon / (v - 1) as f64 } else { 0.0 };
    let loss = &nll * (1.0 - epsilon - eps_i) + smooth * eps_i;
    LossSums { loss, nll, tokens: keep.sum(Kind::Int64) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    #[test]
    fn hand_computed_three_classes() {
        // Uniform logits over 3 classes: lp = ln(1/3) everywhere.
        let logits = Tensor::zeros([1, 3], (Kind::Float, tch::Device::Cpu));
        let target = Tensor::from_slice(&[2i64]);
        let s = label_smoothed_nll(&logits, &target, 0.1, -100);
        let l3 = 3f64.ln();
        assert!((f(&s.nll) - l3).abs() < 1e-6);
        // eps_i = 0.05: (1 - 0.1 - 0.05) * ln3 + 0.05 * 3 ln3 = ln3
        assert!((f(&s.loss) - l3).abs() < 1e-6);
        assert_eq!(s.tokens.int64_value(&[]), 1);
    }

    #[test]
    fn hand_computed_peaked() {
        // logits [ln 2, 0]: p = [2/3, 1/3]; target 0; eps 0.2, V = 2, eps_i = 0.2.
        let logits = Tensor::from_slice(&[2f32.ln(), 0.0]).view([1, 2]);
        let target = Tensor::from_slice(&[0i64]);
        let s = label_smoothed_nll(&logits, &target, 0.2, -100);
        let (lp0, lp1) = ((2.0f64 / 3.0).ln(), (1.0f64 / 3.0).ln());
        let expected = (1.0 - 0.2 - 0.2) * -lp0 + 0.2 * -(lp0 + lp1);
        assert!((f(&s.loss) - expected).abs() < 1e-6, "{} vs {expected}", f(&s.loss));
        // Which equals 0.8 * -lp0 + 0.2 * -lp1, the cross-entropy with the smoothed target.
        assert!((expected - (0.8 * -lp0 + 0.2 * -lp1)).abs() < 1e-12);
    }

    #[test]
    fn ignored_tokens_do_not_count() {
        let logits = Tensor::from_slice(&[1f32, 2.0, 3.0, 9.0, 9.0, 9.0]).view([2, 3]);
        let target = Tensor::from_slice(&[1i64, 0]);
        let with_pad = label_smoothed_nll(&logits, &target, 0.1, 0);
        let alone = label_smoothed_nll(&logits.narrow(0, 0, 1), &target.narrow(0, 0, 1), 0.1, 0);
        assert_eq!(with_pad.tokens.int64_value(&[]), 1);
        assert!((f(&with_pad.loss) - f(&alone.loss)).abs() < 1e-7);
        assert!((f(&with_pad.mean_nll()) - f(&alone.nll)).abs() < 1e-7);
    }

    /// The fused CPU kernel against the libtorch-op formula in fp64: both sums and the logits'
    /// gradient, with ignored targets, several smoothing values and large logit ranges; bf16
    /// logits within bf16 accuracy.
    #[test]
    fn fused_kernel_matches_the_reference_formula() {
        tch::manual_seed(5);
        let target = Tensor::from_slice(&[3i64, 0, 7, 0, 12, 5, 1, 30]).view([2, 4]);
        for (eps, scale) in [(0.0, 1.0), (0.1, 1.0), (0.1, 30.0), (0.3, 5.0)] {
            for kind in [Kind::Float, Kind::BFloat16] {
                let x = (Tensor::randn([2, 4, 31], (Kind::Double, tch::Device::Cpu)) * scale).to_kind(kind);
                let xf = x.detach().set_requires_grad(true);
                let xr = x.to_kind(Kind::Double).set_requires_grad(true);
                let up = (1.7, 0.4);
                let fused = label_smoothed_nll(&xf, &target, eps, 0);
                assert_eq!(f(&fused.tokens), 6.0);
                (&fused.loss * up.0 + &fused.nll * up.1).backward();
                let r = reference(&xr, &target, eps, 0);
                (&r.loss * up.0 + &r.nll * up.1).backward();
                let tol = if kind == Kind::Float { 1e-5 } else { 2e-2 };
                for (a, b, what) in [(&fused.loss, &r.loss, "loss"), (&fused.nll, &r.nll, "nll")] {
                    let rel = (f(a) - f(b)).abs() / f(b).abs().max(1.0);
                    assert!(rel < tol, "eps {eps} scale {scale} {kind:?}: {what} {} vs {}", f(a), f(b));
                }
                let gerr = (xf.grad().to_kind(Kind::Double) - xr.grad()).abs().max().double_value(&[]);
                assert!(gerr < tol, "eps {eps} scale {scale} {kind:?}: gradient off by {gerr}");
                assert_eq!(xf.grad().kind(), kind);
            }
        }
    }

    #[test]
    fn fused_kernel_names_an_out_of_range_target() {
        let x = Tensor::zeros([2, 5], (Kind::Float, tch::Device::Cpu));
        let t = Tensor::from_slice(&[1i64, 9]);
        let e = preln_ops::smoothed_ce(&x, &t, 0.1, 0).unwrap_err();
        assert!(e.0.contains("target 9 outside [0, 5)"), "{e}");
    }
}
