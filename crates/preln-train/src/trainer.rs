//! The training loop, shared by every task (translation, masked-language modelling): batches in
//! a seeded order, gradient accumulation, clipping, scheduled updates, bf16 autocast, metrics,
//! validation every epoch (and every `train.valid_every` updates), checkpoints, exact resume and
//! divergence diagnosis. A [`Task`] supplies the model, the batches, the loss and validation.
//!
//! Exact resume rests on three facts: the data order of an epoch is a function of the seed and
//! the epoch; dropout masks (and MLM masks) are drawn from seeds derived from (seed, step, batch);
//! model and optimizer state are saved bit for bit. A resumed run therefore logs the same losses
//! as an uninterrupted one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use preln_analysis::grad_norms;
use preln_data::synthetic::SplitMix64;
use preln_model::checkpoint::parameters;
use preln_model::LossSums;
use serde_json::{json, Value};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::config::{Precision, TrainSection};
use crate::metrics::Metrics;
use crate::optim::{clip_grads, total_grad_norm, Optimizer, OptimizerConfig};
use crate::rundir::RunLock;
pub use crate::rundir::{best_checkpoint, checkpoint_dir, last_checkpoint, prepare_run_dir};
use crate::schedule::Schedule;
use crate::state::{self, TrainState};
use crate::TrainError;

pub use crate::translation::{model_config, updates_per_epoch, Translation};

/// How to run, beyond the config.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue from `RUN_DIR/checkpoints/last.safetensors`.
    pub resume: bool,
    /// Stop (without saving) once this many updates are done, as if the process were killed.
    pub stop_at_step: Option<u64>,
}

/// What a finished (or stopped) run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    pub state: TrainState,
    pub last_valid_loss: Option<f64>,
    pub run_dir: PathBuf,
}

/// Validation results: loss and NLL per predicted token, and task-specific metrics (BLEU).
#[derive(Clone, Debug, Default)]
pub struct Validation {
    pub loss: f64,
    pub nll: f64,
    pub extra: Vec<(String, Value)>,
}

/// What the loop trains.
pub trait Task {
    type Batch;
    /// The training batches (example indices), fixed for the run; an epoch visits them in a
    /// seeded order.
    fn batches(&self) -> &[Vec<usize>];
    /// The batch of examples `idx`; `seed` draws what the batch itself randomizes (MLM masks).
    fn batch(&self, idx: &[usize], seed: u64) -> Self::Batch;
    /// The tokens whose loss the batch counts.
    fn tokens(&self, batch: &Self::Batch) -> i64;
    /// Training-mode forward: summed losses (fp32) and, with `hidden`, `E ||x||^2 / d` after
    /// every layer, by stack, as JSON.
    fn loss(&self, batch: &Self::Batch, hidden: bool) -> Result<(LossSums, Option<Value>), TrainError>;
    /// Validation, without dropout or autograd.
    fn validate(&self) -> Result<Validation, TrainError>;
    fn var_store(&self) -> &VarStore;
    fn var_store_mut(&mut self) -> &mut VarStore;
}

/// The device of `train.device`, checked against `train.precision`.
pub fn resolve_device(t: &TrainSection) -> Result<Device, TrainError> {
    let device = match t.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" if tch::Cuda::is_available() => Device::Cuda(0),
        "cuda" => return Err(TrainError::Config("train.device = cuda but libtorch sees no CUDA device".into())),
        _ => Device::cuda_if_available(),
    };
    check_precision(t.precision, device)?;
    Ok(device)
}

/// Refuses bf16 on a CPU without fast bf16 matrix products (where libtorch emulates them tens
/// of times slower than fp32), naming the missing CPU features, before anything runs.
pub fn check_precision(precision: Precision, device: Device) -> Result<(), TrainError> {
    if !precision.is_bf16() || device != Device::Cpu {
        return Ok(());
    }
    match preln_ops::caps::cpu_bf16() {
        preln_ops::caps::PathState::On => Ok(()),
        preln_ops::caps::PathState::Unsupported(why) | preln_ops::caps::PathState::Off(why) => {
            Err(TrainError::Config(format!(
                "train.precision = \"bf16\" on the CPU: {why} ({}); bf16 would run tens of times slower than fp32 \
                 here. Use train.precision = \"fp32\" (or train.device = \"cuda\")",
                preln_ops::caps::cpu_info().model
            )))
        }
    }
}

/// Refuses, before anything is allocated, a model whose training cannot fit in this machine's
/// memory (on the CPU; a GPU's own memory is left to CUDA's allocator to report).
pub fn check_memory(what: &str, need: &preln_model::memory::Need, device: Device) -> Result<(), TrainError> {
    if device != Device::Cpu {
        return Ok(());
    }
    match preln_model::memory::host_available_bytes() {
        Some(available) => Ok(preln_model::memory::check_fits(what, need, available)?),
        None => Ok(()),
    }
}

/// A seed for libtorch's generator from (run seed, update, batch within the update).
fn dropout_seed(seed: u64, step: u64, micro: usize) -> u64 {
    let mut rng = SplitMix64::new(seed ^ step.wrapping_mul(0x9E37_79B9) ^ ((micro as u64) << 48));
    rng.next_u64() >> 1
}

/// The seed of what batch `micro` of update `step` draws for itself (MLM masks).
fn data_seed(seed: u64, step: u64, micro: usize) -> u64 {
    dropout_seed(seed ^ 0xDA7A_5EED_0000_0000, step, micro)
}

/// The order in which epoch `epoch` visits the fixed token batches.
fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ epoch);
    for i in (1..n).rev() {
        order.swap(i, rng.range(0, i));
    }
    order
}

/// `encoder.layers.3.ffn.fc2.weight` -> `encoder.layers.3`; `embed_tokens.weight` -> `embed_tokens`.
pub fn param_group(path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    match parts.iter().position(|p| *p == "layers") {
        Some(i) if i + 1 < parts.len() => parts[..i + 2].join("."),
        _ => parts[..parts.len().saturating_sub(1).max(1)].join("."),
    }
}

/// Per-group gradient norms (root of the summed squares of the group's parameter norms).
pub fn group_norms(norms: &[(String, f64)]) -> Vec<(String, f64)> {
    let mut groups: Vec<(String, f64)> = Vec::new();
    for (path, n) in norms {
        let g = param_group(path);
        match groups.iter_mut().find(|(name, _)| *name == g) {
            Some((_, sq)) => *sq += n * n,
            None => groups.push((g, n * n)),
        }
    }
    groups.into_iter().map(|(g, sq)| (g, sq.sqrt())).collect()
}

/// The parts of a config the loop itself reads.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub optimizer: OptimizerConfig,
    pub schedule: Schedule,
    pub train: TrainSection,
    /// The resolved config, written to `RUN/config.toml`.
    pub toml: String,
}

/// Makes sure `best.safetensors` holds the best model `state` records. A run killed between
/// saving `last` (which records a new best) and publishing `best` left `best` older or absent:
/// `last` is then that best model, and becomes `best`.
fn repair_best(run_dir: &Path, state: &TrainState) -> Result<(), TrainError> {
    let Some(want) = state.best_step else { return Ok(()) };
    let best = best_checkpoint(run_dir);
    match state::read_state(&best) {
        Ok(b) if b.step == want => Ok(()),
        found if state.step == want => {
            let what = match found {
                Ok(b) => format!("holds update {}", b.step),
                Err(e) => format!("is unreadable ({e})"),
            };
            eprintln!(
                "repairing {}: it {what} but the best validation loss was at update {want}, which {} holds",
                best.display(),
                last_checkpoint(run_dir).display()
            );
            preln_model::fsio::publish_copy(&last_checkpoint(run_dir), &best)?;
            Ok(())
        }
        Ok(b) => Err(TrainError::Checkpoint(format!(
            "{}: holds update {} but the run's best model was update {want}, which no checkpoint holds any more",
            best.display(),
            b.step
        ))),
        Err(e) => Err(TrainError::Checkpoint(format!(
            "{}: the run's best model (update {want}) is lost ({e}); no other checkpoint holds it",
            best.display()
        ))),
    }
}

pub struct Trainer<T: Task> {
    cfg: LoopConfig,
    run_dir: PathBuf,
    device: Device,
    task: T,
    opt: Optimizer,
    params: Vec<(String, Tensor)>,
    state: TrainState,
    /// Held while the trainer lives: no second process trains in this folder.
    _lock: RunLock,
}

impl<T: Task> Trainer<T> {
    /// Wraps `task` (whose model is freshly initialized); with `resume`, restores model and
    /// optimizer from the last checkpoint and repairs what a kill may have left behind (the best
    /// checkpoint, `last.json`). Call [`prepare_run_dir`] before building the task and pass its
    /// lock.
    pub fn with_task(
        mut task: T,
        cfg: LoopConfig,
        run_dir: &Path,
        resume: bool,
        lock: RunLock,
    ) -> Result<Trainer<T>, TrainError> {
        let device = task.var_store().device();
        let params = parameters(task.var_store());
        let mut opt =
            Optimizer::new(cfg.optimizer.clone(), params.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect());
        let last = last_checkpoint(run_dir);
        let mut state = if resume {
            let state = state::load(&last, task.var_store_mut(), &mut opt)?;
            state::write_state_json(&last, &state)?;
            repair_best(run_dir, &state)?;
            state
        } else {
            TrainState { epoch: 1, ..Default::default() }
        };
        preln_model::checkpoint::write_file_atomic(&run_dir.join("config.toml"), cfg.toml.as_bytes())?;
        let t = &cfg.train;
        let n_batches = task.batches().len();
        if state.done && state.epoch <= t.max_epochs && (t.max_updates == 0 || state.step < t.max_updates) {
            // A finished run resumed with larger limits: continue where it stopped.
            state.done = false;
            if state.batch_in_epoch >= n_batches {
                if state.epoch == t.max_epochs {
                    state.done = true;
                } else {
                    state.epoch += 1;
                    state.batch_in_epoch = 0;
                    state.epoch_loss_sum = 0.0;
                    state.epoch_tokens = 0;
                }
            }
        }
        Ok(Trainer { cfg, run_dir: run_dir.into(), device, task, opt, params, state, _lock: lock })
    }

    pub fn state(&self) -> &TrainState {
        &self.state
    }

    pub fn task(&self) -> &T {
        &self.task
    }

    pub fn task_mut(&mut self) -> &mut T {
        &mut self.task
    }

    pub fn var_store(&self) -> &VarStore {
        self.task.var_store()
    }

    fn save_last(&self) -> Result<(), TrainError> {
        state::save(&last_checkpoint(&self.run_dir), self.task.var_store(), &self.opt, &self.state)
    }

    /// Validates, writes the `valid` line, saves `last` (and `best` when it improved).
    fn validate(&mut self, metrics: &mut Metrics, train_loss: f64, at_epoch_end: bool) -> Result<f64, TrainError> {
        let v = self.task.validate()?;
        let improved = self.state.best_valid_loss.is_none_or(|b| v.loss < b);
        if improved {
            self.state.best_valid_loss = Some(v.loss);
            self.state.best_epoch = Some(self.state.epoch);
            self.state.best_step = Some(self.state.step);
        }
        let mut line = json!({
            "kind": "valid", "step": self.state.step, "epoch": self.state.epoch, "loss": v.loss, "nll": v.nll,
            "ppl": v.nll.exp(), "train_loss": train_loss, "wall_s": self.state.wall_s, "epoch_end": at_epoch_end,
        });
        for (k, x) in &v.extra {
            line[k] = x.clone();
        }
        metrics.write(&line)?;
        let extra: String = v
            .extra
            .iter()
            .filter_map(|(k, x)| {
                x.as_f64().map(|f| match k.as_str() {
                    "bleu" => format!(", valid BLEU {f:.2}"),
                    _ => format!(", valid {} {f:.4}", k.replace('_', " ")),
                })
            })
            .collect();
        eprintln!(
            "{} {}: train loss {train_loss:.4}, valid loss {:.4}, valid nll {:.4} (ppl {:.2}){extra}, {} updates, {:.0} s{}",
            if at_epoch_end { "epoch" } else { "update" },
            if at_epoch_end { self.state.epoch } else { self.state.step },
            v.loss,
            v.nll,
            v.nll.exp(),
            self.state.step,
            self.state.wall_s,
            if improved { ", best so far" } else { "" }
        );
        if at_epoch_end {
            if self.state.epoch >= self.cfg.train.max_epochs {
                self.state.done = true;
            }
            if !self.state.done {
                self.state.epoch += 1;
                self.state.batch_in_epoch = 0;
                self.state.epoch_loss_sum = 0.0;
                self.state.epoch_tokens = 0;
            }
        }
        self.save_last()?;
        if improved {
            preln_model::fsio::publish_copy(&last_checkpoint(&self.run_dir), &best_checkpoint(&self.run_dir))?;
        }
        Ok(v.loss)
    }

    /// The token-weighted training loss of the epoch so far.
    fn epoch_train_loss(&self) -> f64 {
        self.state.epoch_loss_sum / self.state.epoch_tokens.max(1) as f64
    }

    /// Saves the update just finished and logs why the run stops.
    fn interrupted(&mut self, metrics: &mut Metrics, signal: i32) -> TrainError {
        let checkpoint = last_checkpoint(&self.run_dir);
        if let Err(e) = self.save_last() {
            return e;
        }
        let line = json!({
            "kind": "interrupted", "step": self.state.step, "epoch": self.state.epoch,
            "signal": crate::interrupt::signal_name(signal), "wall_s": self.state.wall_s,
        });
        if let Err(e) = metrics.write(&line) {
            return e;
        }
        TrainError::Interrupted { signal, step: self.state.step, checkpoint }
    }

    fn diverged(&mut self, metrics: &mut Metrics, loss: f64, norm: f64) -> TrainError {
        let norms = grad_norms(self.task.var_store());
        let worst = norms
            .iter()
            .max_by(|a, b| {
                let key = |v: f64| if v.is_finite() { v } else { f64::INFINITY };
                key(a.1).total_cmp(&key(b.1))
            })
            .cloned()
            .unwrap_or_default();
        let non_finite: Vec<&str> =
            norms.iter().filter(|(_, v)| !v.is_finite()).map(|(n, _)| n.as_str()).take(5).collect();
        let last = last_checkpoint(&self.run_dir);
        let kept = match state::read_state(&last) {
            Ok(s) => format!("the last good checkpoint is {} (step {})", last.display(), s.step),
            Err(_) => "no checkpoint had been written yet".to_string(),
        };
        let msg = format!(
            "training diverged at step {} (epoch {}): loss {loss}, gradient norm {norm}; largest gradient: {} ({}){}; {kept}",
            self.state.step + 1,
            self.state.epoch,
            worst.0,
            worst.1,
            if non_finite.is_empty() { String::new() } else { format!("; non-finite gradients in {}", non_finite.join(", ")) },
        );
        let _ = metrics.write(&json!({
            "kind": "diverged", "step": self.state.step + 1, "epoch": self.state.epoch, "loss": loss,
            "grad_norm": norm, "largest_grad": worst.0, "largest_grad_norm": worst.1,
        }));
        TrainError::Diverged(msg)
    }

    /// Trains until `max_epochs` / `max_updates` (or `stop_at_step`), validating every epoch and
    /// every `train.valid_every` updates.
    pub fn run(&mut self, opts: &RunOptions) -> Result<Summary, TrainError> {
        let t = self.cfg.train.clone();
        let bf16 = t.precision.is_bf16();
        let mut metrics = Metrics::open(&self.run_dir.join("metrics.jsonl"), opts.resume.then_some(self.state.step))?;
        let mut last_valid = None;
        let started = Instant::now();
        let wall_before = self.state.wall_s;
        let (mut window_tokens, mut window_start) = (0i64, Instant::now());
        let n_batches = self.task.batches().len();
        while self.state.epoch <= t.max_epochs && !self.state.done {
            let order = epoch_order(n_batches, t.seed, self.state.epoch);
            let bar = ProgressBar::new(order.len() as u64);
            bar.set_style(
                ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(self.state.epoch.to_string());
            bar.set_position(self.state.batch_in_epoch as u64);
            while self.state.batch_in_epoch < order.len() {
                if opts.stop_at_step.is_some_and(|s| self.state.step >= s) {
                    bar.abandon();
                    return Ok(Summary {
                        state: self.state.clone(),
                        last_valid_loss: last_valid,
                        run_dir: self.run_dir.clone(),
                    });
                }
                let group: Vec<usize> = order
                    [self.state.batch_in_epoch..(self.state.batch_in_epoch + t.update_freq).min(order.len())]
                    .to_vec();
                let step = self.state.step + 1;
                let batches: Vec<T::Batch> = group
                    .iter()
                    .enumerate()
                    .map(|(k, &g)| self.task.batch(&self.task.batches()[g], data_seed(t.seed, step, k)))
                    .collect();
                let tokens: i64 = batches.iter().map(|b| self.task.tokens(b)).sum();
                let diag_now = t.diag_every > 0 && step % t.diag_every == 0;
                let mut loss_sum = Tensor::zeros([], (Kind::Float, self.device));
                let mut nll_sum = Tensor::zeros([], (Kind::Float, self.device));
                let mut hidden = None;
                for (k, b) in batches.iter().enumerate() {
                    tch::manual_seed(dropout_seed(t.seed, step, k) as i64);
                    let want_hidden = diag_now && k + 1 == batches.len();
                    let (s, h) = preln_ops::autocast_bf16(self.device, bf16, || self.task.loss(b, want_hidden))??;
                    (&s.loss / tokens.max(1) as f64).backward();
                    loss_sum += s.loss.detach();
                    nll_sum += s.nll.detach();
                    if h.is_some() {
                        hidden = h;
                    }
                }
                let norm_t = total_grad_norm(&self.params);
                let denom = tokens.max(1) as f64;
                let host = Vec::<f64>::try_from(
                    Tensor::stack(&[loss_sum / denom, nll_sum / denom, norm_t.to_kind(Kind::Float)], 0)
                        .to_kind(Kind::Double)
                        .to_device(Device::Cpu),
                )?;
                let (loss, nll, norm) = (host[0], host[1], host[2]);
                if !loss.is_finite() || !norm.is_finite() {
                    bar.abandon();
                    return Err(self.diverged(&mut metrics, loss, norm));
                }
                if diag_now {
                    let groups = group_norms(&grad_norms(self.task.var_store()));
                    metrics.write(&json!({
                        "kind": "diag", "step": step, "epoch": self.state.epoch,
                        "grad_norm_groups": groups.into_iter().map(|(g, n)| (g, json!(n))).collect::<serde_json::Map<_, _>>(),
                        "hidden_sq_norm_over_d": hidden.unwrap_or(Value::Null),
                    }))?;
                }
                if t.clip_norm > 0.0 {
                    clip_grads(&self.params, norm, t.clip_norm);
                }
                let lr = self.cfg.schedule.lr_at(t.lr, step, self.state.epoch);
                self.opt.step(lr)?;
                self.opt.zero_grad()?;
                self.state.step = step;
                self.state.batch_in_epoch += group.len();
                self.state.epoch_loss_sum += loss * tokens as f64;
                self.state.epoch_tokens += tokens;
                window_tokens += tokens;
                if step % t.log_every == 0 {
                    let tps = window_tokens as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
                    metrics.write(&json!({
                        "kind": "train", "step": step, "epoch": self.state.epoch, "lr": lr,
                        "loss": loss, "nll": nll, "grad_norm": norm, "tokens": tokens, "tokens_per_s": tps,
                    }))?;
                    bar.set_message(format!("loss {loss:.3} lr {lr:.2e} {:.0} tok/s", tps));
                    window_tokens = 0;
                    window_start = Instant::now();
                }
                bar.set_position(self.state.batch_in_epoch as u64);
                self.state.wall_s = wall_before + started.elapsed().as_secs_f64();
                if t.max_updates > 0 && step >= t.max_updates {
                    self.state.done = true;
                    break;
                }
                let end_of_epoch = self.state.batch_in_epoch >= order.len();
                if t.valid_every > 0 && step % t.valid_every == 0 && !end_of_epoch {
                    bar.suspend(|| -> Result<(), TrainError> {
                        last_valid = Some(self.validate(&mut metrics, self.epoch_train_loss(), false)?);
                        Ok(())
                    })?;
                } else if t.save_every > 0 && step % t.save_every == 0 {
                    self.save_last()?;
                }
                if let Some(signal) = crate::interrupt::requested() {
                    bar.abandon();
                    return Err(self.interrupted(&mut metrics, signal));
                }
            }
            bar.finish_and_clear();
            last_valid = Some(self.validate(&mut metrics, self.epoch_train_loss(), true)?);
        }
        Ok(Summary { state: self.state.clone(), last_valid_loss: last_valid, run_dir: self.run_dir.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_layer() {
        assert_eq!(param_group("encoder.layers.3.ffn.fc2.weight"), "encoder.layers.3");
        assert_eq!(param_group("embed_tokens.weight"), "embed_tokens");
        assert_eq!(param_group("decoder.final_norm.bias"), "decoder.final_norm");
        let g = group_norms(&[
            ("encoder.layers.0.a.weight".into(), 3.0),
            ("encoder.layers.0.b.bias".into(), 4.0),
            ("embed_tokens.weight".into(), 1.0),
        ]);
        assert_eq!(g, vec![("encoder.layers.0".to_string(), 5.0), ("embed_tokens".to_string(), 1.0)]);
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(50, 1, 3);
        assert_eq!(a, epoch_order(50, 1, 3));
        assert_ne!(a, epoch_order(50, 1, 4));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
    }
}
