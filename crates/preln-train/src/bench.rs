//! Timing of full training steps (forward, label-smoothed loss, backward, Adam update) on a
//! fixed batch, for `preln bench train`: the trainer's step, in fp32 or under bf16 autocast, and
//! data-parallel with the gradient all-reduce between backward and update.

use std::time::Instant;

use preln_data::Batch;
use preln_model::checkpoint::parameters;
use preln_model::init::seeded;
use preln_model::{label_smoothed_nll, Seq2Seq, Seq2SeqConfig};
use tch::nn::VarStore;
use tch::Device;

use crate::device::Precision;
use crate::dist::DataParallel;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::TrainError;

/// Seconds per step, and of it in the gradient all-reduce.
#[derive(Clone, Debug, Default)]
pub struct StepTimes {
    pub step_s: Vec<f64>,
    pub allreduce_s: Vec<f64>,
}

/// Times `steps` steps after `warmup` untimed ones; with `group`, each rank steps on its own
/// copy of the batch and the gradients are summed across ranks before the update.
#[allow(clippy::too_many_arguments)]
pub fn time_steps(
    model_cfg: &Seq2SeqConfig,
    optimizer: &OptimizerConfig,
    batch: &Batch,
    label_smoothing: f64,
    warmup: usize,
    steps: usize,
    precision: Precision,
    device: Device,
    group: Option<&DataParallel>,
) -> Result<StepTimes, TrainError> {
    crate::device::check_precision(precision, device)?;
    let vs = VarStore::new(device);
    let model = seeded(0, || Seq2Seq::new(&vs.root(), model_cfg))?;
    let params = parameters(&vs);
    let mut opt =
        Optimizer::new(optimizer.clone(), params.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect());
    let (src, prev, target) =
        (batch.src.to_device(device), batch.prev.to_device(device), batch.target.to_device(device));
    let mut times = StepTimes::default();
    let mut profile = None;
    for step in 0..warmup + steps {
        if step == warmup {
            // `PRELN_PROFILE=trace.json`: libtorch's operator trace of the timed steps.
            if let Ok(path) = std::env::var("PRELN_PROFILE") {
                profile = Some(
                    preln_ops::Profile::start(std::path::Path::new(&path))
                        .map_err(|e| TrainError::Config(e.to_string()))?,
                );
            }
        }
        sync(device);
        let t0 = Instant::now();
        let loss = preln_ops::autocast_bf16(device, precision.is_bf16(), || {
            let (_, dec) = model.forward(&src, &prev, true);
            label_smoothed_nll(&dec.logits, &target, label_smoothing, model_cfg.pad_id).mean_loss()
        })?;
        loss.backward();
        let mut allreduce = 0.0;
        if let Some(g) = group {
            sync(device);
            let t = Instant::now();
            g.reduce_gradients(&params, &[], &format!("the gradient all-reduce of step {step}"))?;
            allreduce = t.elapsed().as_secs_f64();
        }
        opt.step(5e-4)?;
        opt.zero_grad()?;
        sync(device);
        if step >= warmup {
            times.step_s.push(t0.elapsed().as_secs_f64());
            times.allreduce_s.push(allreduce);
        }
    }
    drop(profile);
    Ok(times)
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The median of `xs` (NaN when empty).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// This process's peak resident memory in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
