//! The residual block around every sublayer: the norm slots and the merge its placement chose.

use std::sync::{Arc, Mutex};

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use crate::config::LayerConfig;
use crate::norm::Norm;
use crate::placement::{LayerSlots, Merge};

/// How the skip path meets the branch, with the variables that takes.
#[derive(Debug)]
enum Skip {
    Add,
    /// `alpha x + F`
    Scaled(f64),
    /// `omega * x + F`; `omega: [d]`.
    Learned {
        omega: Tensor,
        profile: AdminProfile,
    },
    /// `x + a F`; `a: [1]`.
    Gated {
        a: Tensor,
    },
}

/// `x + Dropout(F(x))` with the norms of its [`LayerSlots`] filled in.
#[derive(Debug)]
pub struct Residual {
    before_branch: Option<Norm>,
    after_branch: Option<Norm>,
    after_add: Option<Norm>,
    skip: Skip,
    /// The layer's input joins this block's add (B2T, on a layer's last block).
    layer_skip: bool,
    dropout: f64,
}

/// What a residual block produced.
pub struct ResidualOut {
    /// The block's output (after the norm when one sits after the add).
    pub out: Tensor,
    /// The residual sum before any norm after the add: `x5` of Post-LN and `x_{l+1}` of
    /// Pre-LN in PAPER.md, Table 1.
    pub sum: Tensor,
}

impl Residual {
    /// The block of sublayer `name` of the layer at `p`. Variables: `{p}.{name}_norm` (the norm
    /// before the branch, or else after the add), `{p}.{name}_out_norm` (after the branch),
    /// `{p}.{name}_residual.omega` (Admin) and `{p}.{name}_residual.alpha` (ReZero). `last`: the
    /// layer's last block, where a B2T layer's input joins.
    pub fn new(
        p: &nn::Path,
        name: &str,
        cfg: &LayerConfig,
        slots: &LayerSlots,
        last: bool,
        profile: &AdminProfile,
    ) -> Self {
        let s = slots.sublayer;
        let norm =
            |suffix: &str| Norm::new(p / format!("{name}_{suffix}"), cfg.options.norm, cfg.d_model, cfg.layer_norm_eps);
        let residual = p / format!("{name}_residual");
        let skip = match s.merge {
            Merge::Add => Skip::Add,
            Merge::ScaleSkip(alpha) => Skip::Scaled(alpha),
            Merge::LearnedSkip => Skip::Learned {
                omega: residual.var("omega", &[cfg.d_model], Init::Const(1.0)),
                profile: profile.clone(),
            },
            Merge::GateBranch => Skip::Gated { a: residual.var("alpha", &[1], Init::Const(0.0)) },
        };
        Residual {
            before_branch: s.before_branch.then(|| norm("norm")),
            after_branch: s.after_branch.then(|| norm("out_norm")),
            after_add: s.after_add.then(|| norm(if s.before_branch { "add_norm" } else { "norm" })),
            skip,
            layer_skip: last && slots.layer_skip,
            dropout: cfg.dropout,
        }
    }

    /// `y = N3(skip(x) + Dropout(N2(F(N1(x)))))` with the slots left empty skipped.
    ///
    /// # Shapes
    /// x: `[B, T, d]`; `branch` maps `[B, T, d]` to `[B, T, d]`.
    pub fn forward(&self, x: &Tensor, train: bool, branch: impl FnOnce(&Tensor) -> Tensor) -> ResidualOut {
        self.run(x, None, train, branch)
    }

    /// As [`Self::forward`] for a layer's last block: `layer_input` joins the add where the
    /// placement connects it (B2T) and is ignored otherwise.
    pub fn forward_last(
        &self,
        x: &Tensor,
        layer_input: &Tensor,
        train: bool,
        branch: impl FnOnce(&Tensor) -> Tensor,
    ) -> ResidualOut {
        self.run(x, self.layer_skip.then_some(layer_input), train, branch)
    }

    fn run(
        &self,
        x: &Tensor,
        layer_input: Option<&Tensor>,
        train: bool,
        branch: impl FnOnce(&Tensor) -> Tensor,
    ) -> ResidualOut {
        let f = match &self.before_branch {
            Some(n) => branch(&n.forward(x)),
            None => branch(x),
        };
        let f = match &self.after_branch {
            Some(n) => n.forward(&f),
            None => f,
        };
        let sum = match &self.skip {
            Skip::Add => preln_ops::residual_dropout(x, &f, self.dropout, train),
            Skip::Scaled(alpha) => preln_ops::residual_dropout(&(x * *alpha), &f, self.dropout, train),
            Skip::Learned { omega, profile } => {
                profile.visit(omega, x, &f);
                preln_ops::residual_dropout(&(x * omega), &f, self.dropout, train)
            }
            Skip::Gated { a } => preln_ops::residual_dropout(x, &(f * a), self.dropout, train),
        };
        let sum = match layer_input {
            Some(input) => sum + input,
            None => sum,
        };
        let out = match &self.after_add {
            Some(n) => n.forward(&sum),
            None => sum.shallow_clone(),
        };
        ResidualOut { out, sum }
    }
}

/// Admin's profiling pass (Liu et al. 2020; Transformer-Clinic): while it runs, each learned
/// skip of a stack in turn takes omega_i and hands on
/// `omega_{i+1}^2 = Var[omega_i x_i] + Var[F_i(x_i)]`, starting from `omega_1 = 1`.
/// Variances are over every element of the batch, in fp64. One per stack, shared by its blocks.
#[derive(Clone, Debug, Default)]
pub struct AdminProfile(Arc<Mutex<Option<f64>>>);

impl AdminProfile {
    /// Starts a pass: the next block takes omega = 1.
    pub fn start(&self) {
        *self.lock() = Some(1.0);
    }

    /// Ends a pass; blocks keep the omega they took.
    pub fn stop(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<f64>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// During a pass: sets `omega` and computes the next block's omega^2.
    fn visit(&self, omega: &Tensor, x: &Tensor, f: &Tensor) {
        let mut next = self.lock();
        let Some(omega_sq) = *next else { return };
        let w = omega_sq.sqrt();
        tch::no_grad(|| {
            let _ = omega.shallow_clone().fill_(w);
        });
        let var = |t: &Tensor| t.to_kind(Kind::Double).var(false).double_value(&[]);
        *next = Some(w * w * var(x) + var(f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Seq2SeqConfig;
    use crate::placement::{NormPlacement, StackRole};
    use tch::{nn::VarStore, Device, Tensor};

    /// Table 1 and its relatives worked out by hand for a branch F(h) = 2h on x = [1, 2, 3]
    /// (LN(v) normalizes v; gains 1, biases 0; ReZero's gate and Admin's omega at their init).
    #[test]
    fn each_placement_puts_its_norms_where_its_paper_does() {
        let x = Tensor::from_slice(&[1f32, 2.0, 3.0]).view([1, 1, 3]);
        let ln = |v: &Tensor| v.layer_norm([3], None::<Tensor>, None::<Tensor>, 1e-5, false);
        let input = Tensor::from_slice(&[0.5f32, -1.0, 0.25]).view([1, 1, 3]);
        for placement in NormPlacement::ALL {
            let cfg = Seq2SeqConfig { placement, d_model: 3, heads: 1, ..Default::default() }.layer();
            let role = StackRole::Single { layers: 1 };
            let slots = placement.layer_slots(&cfg.options, role, 0);
            let vs = VarStore::new(Device::Cpu);
            let r = Residual::new(&vs.root(), "n", &cfg, &slots, true, &AdminProfile::default());
            let got = r.forward_last(&x, &input, false, |h| h * 2.0);
            let alpha = 2f64.powf(0.25);
            let (want_out, want_sum) = match placement {
                NormPlacement::Post | NormPlacement::Admin => (ln(&(&x * 3.0)), &x * 3.0),
                NormPlacement::Pre => (&x + ln(&x) * 2.0, &x + ln(&x) * 2.0),
                NormPlacement::Sandwich | NormPlacement::Peri => (&x + ln(&(ln(&x) * 2.0)), &x + ln(&(ln(&x) * 2.0))),
                NormPlacement::DeepNorm => (ln(&(&x * (alpha + 2.0))), &x * (alpha + 2.0)),
                NormPlacement::ReZero => (x.shallow_clone(), x.shallow_clone()),
                NormPlacement::B2t => (ln(&(&x * 3.0 + &input)), &x * 3.0 + &input),
                // One layer, fraction 0.25: no Post-LN layer.
                NormPlacement::Mix => (&x + ln(&x) * 2.0, &x + ln(&x) * 2.0),
            };
            assert!(got.out.allclose(&want_out, 1e-5, 1e-6, false), "{placement}: {:?}", got.out);
            assert!(got.sum.allclose(&want_sum, 1e-5, 1e-6, false), "{placement}");
            // Only a layer's last block of a B2T layer takes the layer input.
            let inner = r.forward(&x, false, |h| h * 2.0);
            if placement == NormPlacement::B2t {
                assert!(inner.sum.allclose(&(&x * 3.0), 1e-6, 1e-6, false));
            }
        }
    }

    #[test]
    fn admin_profiling_sets_omega_from_the_variances_before_it() {
        let cfg = Seq2SeqConfig { placement: NormPlacement::Admin, d_model: 4, heads: 1, ..Default::default() }.layer();
        let slots = NormPlacement::Admin.layer_slots(&cfg.options, StackRole::Single { layers: 2 }, 0);
        let vs = VarStore::new(Device::Cpu);
        let profile = AdminProfile::default();
        let a = Residual::new(&vs.root(), "a", &cfg, &slots, false, &profile);
        let b = Residual::new(&vs.root(), "b", &cfg, &slots, true, &profile);
        let x = Tensor::from_slice(&[1f32, -1.0, 2.0, 0.0]).view([1, 1, 4]);
        profile.start();
        let h = a.forward(&x, false, |h| h * 3.0).out;
        b.forward(&h, false, |h| h * 3.0);
        profile.stop();
        // omega_1 = 1; omega_2^2 = Var[x] + Var[3x] = 10 Var[x], Var[x] = 1.25 (biased).
        let vars = vs.variables();
        assert_eq!(vars["a_residual.omega"].double_value(&[0]), 1.0);
        let omega2 = vars["b_residual.omega"].double_value(&[2]);
        assert!((omega2 - 12.5f64.sqrt()).abs() < 1e-5, "{omega2}");
        // Outside a pass nothing changes.
        b.forward(&x, false, |h| h * 0.0);
        assert_eq!(vars["b_residual.omega"].double_value(&[2]), omega2);
    }
}
