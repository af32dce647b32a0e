//! Learning-rate schedules as pure functions of the update number (and, for step decay, the
//! epoch). No state to save: a resumed run recomputes the same rates.
//!
//! `step` counts updates from 1. A warmup of `w` steps ramps linearly, `lr_max * step / w`, for
//! `step <= w`; `w = 0` means no ramp, and no division by zero anywhere.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum Schedule {
    /// Warmup, then `lr_max * sqrt(max(w, 1) / step)` (PAPER.md; fairseq `inverse_sqrt`).
    /// With `w` 0 or 1 this is the paper's "no warmup": `lr_max / sqrt(step)`.
    InverseSqrt { warmup: u64 },
    /// Warmup, then `lr_max`.
    Constant {
        #[serde(default)]
        warmup: u64,
    },
    /// Warmup, then `lr_max * gamma^k` where `k` counts the entries of `epochs` that are
    /// `<=` the current epoch (1-based): the paper's Pre-LN recipe is `epochs = [8]`, `gamma = 0.1`.
    StepDecay {
        #[serde(default)]
        warmup: u64,
        epochs: Vec<u64>,
        #[serde(default = "default_gamma")]
        gamma: f64,
    },
    /// Warmup, then linear decay from `lr_max` to 0 at `total_steps` (BERT).
    LinearDecay {
        #[serde(default)]
        warmup: u64,
        total_steps: u64,
    },
}

fn default_gamma() -> f64 {
    0.1
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::InverseSqrt { warmup: 4000 }
    }
}

impl Schedule {
    pub fn warmup(&self) -> u64 {
        match self {
            Schedule::InverseSqrt { warmup }
            | Schedule::Constant { warmup }
            | Schedule::StepDecay { warmup, .. }
            | Schedule::LinearDecay { warmup, .. } => *warmup,
        }
    }

    /// The learning rate of update `step` (1-based) in `epoch` (1-based).
    pub fn lr_at(&self, lr_max: f64, step: u64, epoch: u64) -> f64 {
        let step = step.max(1);
        let warmup = self.warmup();
        if step <= warmup {
            return lr_max * step as f64 / warmup as f64;
        }
        match self {
            Schedule::InverseSqrt { warmup } => lr_max * ((*warmup).max(1) as f64 / step as f64).sqrt(),
            Schedule::Constant { .. } => lr_max,
            Schedule::StepDecay { epochs, gamma, .. } => {
                lr_max * gamma.powi(epochs.iter().filter(|&&e| e <= epoch).count() as i32)
            }
            Schedule::LinearDecay { warmup, total_steps } => {
                let span = total_steps.saturating_sub(*warmup).max(1) as f64;
                let done = (step - warmup) as f64;
                lr_max * (1.0 - done / span).max(0.0)
            }
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        match self {
            Schedule::StepDecay { gamma, .. } if !(*gamma > 0.0) => {
                Err(format!("schedule.gamma must be > 0, got {gamma}"))
            }
            Schedule::LinearDecay { warmup, total_steps } if total_steps <= warmup => {
                Err(format!("schedule.total_steps ({total_steps}) must exceed schedule.warmup ({warmup})"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LR: f64 = 1e-3;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-15 + 1e-12 * b.abs()
    }

    #[test]
    fn inverse_sqrt_with_warmup() {
        let s = Schedule::InverseSqrt { warmup: 4000 };
        assert!(close(s.lr_at(LR, 1, 1), LR / 4000.0));
        assert!(close(s.lr_at(LR, 2000, 1), LR / 2.0));
        assert!(close(s.lr_at(LR, 4000, 1), LR));
        assert!(close(s.lr_at(LR, 16000, 1), LR / 2.0));
    }

    #[test]
    fn warmup_zero_and_one_are_no_warmup() {
        for w in [0, 1] {
            let s = Schedule::InverseSqrt { warmup: w };
            assert!(close(s.lr_at(LR, 1, 1), LR), "warmup {w}");
            assert!(close(s.lr_at(LR, 4, 1), LR / 2.0), "warmup {w}");
            assert!(s.lr_at(LR, 0, 1).is_finite());
        }
        for s in [
            Schedule::Constant { warmup: 0 },
            Schedule::StepDecay { warmup: 0, epochs: vec![2], gamma: 0.1 },
            Schedule::LinearDecay { warmup: 0, total_steps: 10 },
        ] {
            assert!(
                close(s.lr_at(LR, 1, 1), if matches!(s, Schedule::LinearDecay { .. }) { LR * 0.9 } else { LR }),
                "{s:?}"
            );
        }
    }

    #[test]
    fn step_decay_at_epoch_boundaries() {
        let s = Schedule::StepDecay { warmup: 0, epochs: vec![8, 12], gamma: 0.1 };
        assert!(close(s.lr_at(5e-4, 100, 7), 5e-4));
        assert!(close(s.lr_at(5e-4, 100, 8), 5e-5));
        assert!(close(s.lr_at(5e-4, 100, 12), 5e-6));
    }

    #[test]
    fn linear_decay_reaches_zero() {
        let s = Schedule::LinearDecay { warmup: 10, total_steps: 110 };
        assert!(close(s.lr_at(LR, 5, 1), LR / 2.0));
        assert!(close(s.lr_at(LR, 10, 1), LR));
        assert!(close(s.lr_at(LR, 60, 1), LR / 2.0));
        assert_eq!(s.lr_at(LR, 110, 1), 0.0);
        assert_eq!(s.lr_at(LR, 500, 1), 0.0);
        assert!(Schedule::LinearDecay { warmup: 10, total_steps: 10 }.validate().is_err());
    }

    #[test]
    fn constant_after_warmup() {
        let s = Schedule::Constant { warmup: 4 };
        let lrs: Vec<f64> = (1..=6).map(|t| s.lr_at(LR, t, 1)).collect();
        assert_eq!(lrs, vec![LR / 4.0, LR / 2.0, 3.0 * LR / 4.0, LR, LR, LR]);
    }

    #[test]
    fn parses_from_toml() {
        let s: Schedule = toml::from_str("kind = \"step_decay\"\nepochs = [8]").unwrap();
        assert_eq!(s, Schedule::StepDecay { warmup: 0, epochs: vec![8], gamma: 0.1 });
        let e = toml::from_str::<Schedule>("kind = \"inverse_sqrt\"\nwarmup = 1\nwarmpu = 3").unwrap_err();
        assert!(e.to_string().contains("warmpu"), "{e}");
    }
}
