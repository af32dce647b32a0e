//! The training loop, shared by every task (translation, masked-language modelling,
//! fine-tuning): batches in a seeded order, gradient accumulation, clipping, scheduled updates,
//! bf16 autocast, metrics, validation every epoch (and every `train.valid_every` updates),
//! checkpoints, exact resume, divergence diagnosis and a clean stop on a signal. A [`Task`]
//! supplies the model, the batches, the loss and validation; a [`Reporter`] hears progress.
//!
//! Exact resume rests on three facts: the data order of an epoch is a function of the seed and
//! the epoch; dropout masks (and MLM masks) are drawn from seeds derived from (seed, step, batch)
//! ([`crate::seeds`]); model, optimizer and the epoch's loss sums are saved bit for bit. A resumed
//! run therefore logs the same losses as an uninterrupted one.
//!
//! Data-parallel ([`Trainer::with_group`], [`crate::dist`]): each rank computes its share of an
//! update's micro-batches and the gradients are summed, so `world` ranks train as one process
//! with `update_freq * world`; rank 0 alone writes metrics and checkpoints.

use std::path::{Path, PathBuf};
use std::time::Instant;

use preln_model::checkpoint::parameters;
use preln_model::diagnostics::{grad_norms, group_norms};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::config::TrainSection;
use crate::dist::{tensors_digest, DataParallel};
pub use crate::launch::Launch;
use crate::metrics::{DiagRecord, DivergedRecord, InterruptedRecord, Metrics, Record, TrainRecord, ValidRecord};
use crate::optim::{clip_grads, total_grad_norm, Optimizer, OptimizerConfig};
use crate::report::{Reporter, Silent};
use crate::rundir::RunLock;
pub use crate::rundir::{best_checkpoint, last_checkpoint};
use crate::schedule::Schedule;
use crate::seeds::{data_seed, dropout_seed, epoch_order};
use crate::state::{self, TrainState};
use crate::task::{HiddenNorms, Task};
use crate::{Divergence, TrainError};

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

/// The parts of a config the loop itself reads.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub optimizer: OptimizerConfig,
    pub schedule: Schedule,
    pub train: TrainSection,
    /// The resolved config, written to `RUN/config.toml`.
    pub toml: String,
}

/// What one update computed before stepping.
struct Accumulated {
    tokens: i64,
    loss: f64,
    nll: f64,
    grad_norm: f64,
    hidden: Option<HiddenNorms>,
}

/// How an epoch's loop ended.
enum EpochEnd {
    /// Every batch was visited: validate and go on.
    Finished,
    /// `train.max_updates` was reached.
    Done,
    /// `stop_at_step` was reached (tests): stop without saving.
    Stopped,
}

/// Tokens, updates and time since the last `train` line, for its tokens/s.
struct Window {
    tokens: i64,
    updates: u64,
    start: Instant,
}

impl Window {
    fn new() -> Window {
        Window { tokens: 0, updates: 0, start: Instant::now() }
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
    last_valid: Option<f64>,
    reporter: Box<dyn Reporter>,
    notes: Vec<String>,
    /// The data-parallel group this process is a rank of.
    group: Option<DataParallel>,
    /// Held by rank 0 while the trainer lives: no second process trains in this folder.
    _lock: Option<RunLock>,
}

impl<T: Task> Trainer<T> {
    /// Wraps `task` (whose model is freshly initialized); resuming, rank 0 restores model and
    /// optimizer from the last checkpoint and repairs what a kill may have left behind (the best
    /// checkpoint, `last.json`). Call [`Launch::prepare_run_dir`] before building the task and
    /// pass its lock.
    pub fn with_task(
        mut task: T,
        cfg: LoopConfig,
        run_dir: &Path,
        launch: Launch,
        lock: Option<RunLock>,
    ) -> Result<Trainer<T>, TrainError> {
        let device = task.var_store().device();
        let params = parameters(task.var_store());
        let mut opt =
            Optimizer::new(cfg.optimizer.clone(), params.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect());
        let mut notes = Vec::new();
        let root = launch.rank == 0;
        let state = if launch.resume && root {
            let last = last_checkpoint(run_dir);
            let mut state = state::load(&last, task.var_store_mut(), &mut opt)?;
            state::write_state_json(&last, &state)?;
            notes.extend(state::repair_best(&last, &best_checkpoint(run_dir), &state)?);
            state.extend_limits(&cfg.train, task.batches().len());
            state
        } else {
            TrainState { epoch: 1, ..Default::default() }
        };
        if root {
            preln_model::checkpoint::write_file_atomic(&run_dir.join("config.toml"), cfg.toml.as_bytes())?;
        }
        let reporter: Box<dyn Reporter> = Box::new(Silent);
        Ok(Trainer {
            cfg,
            run_dir: run_dir.into(),
            device,
            task,
            opt,
            params,
            state,
            last_valid: None,
            reporter,
            notes,
            group: None,
            _lock: lock,
        })
    }

    /// Makes this trainer rank `group.rank()` of a data-parallel run: checks that every rank
    /// resolved the same config and batches, then takes rank 0's position, model and optimizer
    /// state (the one place where ranks start from the same numbers, fresh or resumed).
    pub fn with_group(mut self, group: DataParallel) -> Result<Self, TrainError> {
        let agreed = format!("{}\nbatches: {:?}", self.cfg.toml, self.task.batches());
        group.check_same(agreed.as_bytes(), "the check of the resolved config and the training batches")?;
        let json = serde_json::to_vec(&self.state).expect("state serializes");
        let json = group.broadcast_bytes(&json, 0, "the broadcast of rank 0's training position")?;
        self.state = serde_json::from_slice(&json)
            .map_err(|e| TrainError::Dist(format!("rank 0's training position is unreadable: {e}")))?;
        self.opt.set_steps_taken(self.state.step);
        let mut tensors: Vec<Tensor> = self.params.iter().map(|(_, p)| p.shallow_clone()).collect();
        tensors.extend(self.opt.state_tensors().into_iter().map(|(_, t)| t));
        group.broadcast_tensors(&tensors, "the broadcast of rank 0's model and optimizer state")?;
        self.group = Some(group);
        Ok(self)
    }

    /// Whether this process writes the run's files: alone, or rank 0 of a group.
    pub fn is_root(&self) -> bool {
        self.group.as_ref().is_none_or(|g| g.rank() == 0)
    }

    /// Reports progress to `reporter` (the default says nothing).
    pub fn with_reporter(mut self, reporter: Box<dyn Reporter>) -> Self {
        self.reporter = reporter;
        for n in std::mem::take(&mut self.notes) {
            self.reporter.note(&n);
        }
        self
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

    /// Trains until `max_epochs` / `max_updates` (or `stop_at_step`), validating every epoch and
    /// every `train.valid_every` updates; stops cleanly on SIGINT / SIGTERM
    /// ([`crate::interrupt`]).
    pub fn run(&mut self, opts: &RunOptions) -> Result<Summary, TrainError> {
        let path = self.run_dir.join("metrics.jsonl");
        let mut metrics = match self.is_root() {
            true => Metrics::open(&path, opts.resume.then_some(self.state.step))?,
            false => Metrics::discard(),
        };
        if self.cfg.train.tensorboard {
            let dir = self.run_dir.join(crate::tensorboard::TB_DIR);
            metrics = metrics.with_tensorboard(&dir, &self.cfg.toml)?;
        }
        let clock = (Instant::now(), self.state.wall_s);
        let mut window = Window::new();
        while self.state.epoch <= self.cfg.train.max_epochs && !self.state.done {
            let order = epoch_order(self.task.batches().len(), self.cfg.train.seed, self.state.epoch);
            self.reporter.epoch_started(self.state.epoch, order.len(), self.state.batch_in_epoch);
            let end = self.run_epoch(&order, &mut metrics, &mut window, clock, opts);
            self.reporter.epoch_ended(matches!(end, Ok(EpochEnd::Finished | EpochEnd::Done)));
            match end? {
                EpochEnd::Stopped => break,
                EpochEnd::Finished | EpochEnd::Done => self.validate(&mut metrics, true)?,
            }
        }
        Ok(Summary { state: self.state.clone(), last_valid_loss: self.last_valid, run_dir: self.run_dir.clone() })
    }

    /// The updates of one epoch, from where the run stands.
    fn run_epoch(
        &mut self,
        order: &[usize],
        metrics: &mut Metrics,
        window: &mut Window,
        (started, wall_before): (Instant, f64),
        opts: &RunOptions,
    ) -> Result<EpochEnd, TrainError> {
        let t = self.cfg.train.clone();
        while self.state.batch_in_epoch < order.len() {
            if opts.stop_at_step.is_some_and(|s| self.state.step >= s) {
                return Ok(EpochEnd::Stopped);
            }
            let world = self.group.as_ref().map_or(1, DataParallel::world);
            let end = (self.state.batch_in_epoch + t.update_freq * world).min(order.len());
            let group = &order[self.state.batch_in_epoch..end];
            let step = self.state.step + 1;
            let diag_now = t.diag_every > 0 && step % t.diag_every == 0;
            let acc = self.accumulate(group, step, diag_now)?;
            if !acc.loss.is_finite() || !acc.grad_norm.is_finite() {
                return Err(self.diverged(metrics, acc.loss, acc.grad_norm));
            }
            if diag_now {
                self.diagnose(metrics, step, acc.hidden.clone())?;
            }
            let lr = self.clip_and_step(acc.grad_norm, step)?;
            self.state.step = step;
            self.state.batch_in_epoch += group.len();
            self.state.epoch_loss_sum += acc.loss * acc.tokens as f64;
            self.state.epoch_tokens += acc.tokens;
            let logged = self.log(metrics, window, &acc, lr)?;
            self.reporter.updated(self.state.batch_in_epoch, logged.as_ref());
            self.state.wall_s = wall_before + started.elapsed().as_secs_f64();
            if t.max_updates > 0 && step >= t.max_updates {
                self.state.done = true;
                return Ok(EpochEnd::Done);
            }
            let end_of_epoch = self.state.batch_in_epoch >= order.len();
            if t.valid_every > 0 && step % t.valid_every == 0 && !end_of_epoch {
                self.validate(metrics, false)?;
            } else if t.save_every > 0 && step % t.save_every == 0 {
                self.save_last()?;
            }
            if let Some(signal) = self.stop_requested()? {
                return Err(self.interrupted(metrics, signal));
            }
        }
        Ok(EpochEnd::Finished)
    }

    /// Forward and backward over this process's batches of update `step` (all of `group`, or a
    /// rank's share), gradients summed over the group; the loss and global gradient norm read
    /// back in one transfer. The hidden-state norms come from the group's last batch.
    fn accumulate(&mut self, group: &[usize], step: u64, diag_now: bool) -> Result<Accumulated, TrainError> {
        let t = &self.cfg.train;
        let mine = match &self.group {
            Some(g) => g.share(group.len(), t.update_freq),
            None => 0..group.len(),
        };
        // A micro-batch's seeds follow its index `k` in the update's group, whichever rank runs it.
        let batches: Vec<(usize, T::Batch)> = mine
            .clone()
            .map(|k| (k, self.task.batch(&self.task.batches()[group[k]], data_seed(t.seed, step, k))))
            .collect();
        let local_tokens: i64 = batches.iter().map(|(_, b)| self.task.tokens(b)).sum();
        let tokens = match &self.group {
            Some(g) => g.sum(&[local_tokens as f64], &format!("the token count of update {step}"))?[0] as i64,
            None => local_tokens,
        };
        let mut loss_sum = Tensor::zeros([], (Kind::Float, self.device));
        let mut nll_sum = Tensor::zeros([], (Kind::Float, self.device));
        let mut hidden = None;
        let want_hidden_at = diag_now.then(|| group.len() - 1);
        for (k, b) in &batches {
            tch::manual_seed(dropout_seed(t.seed, step, *k) as i64);
            let want_hidden = want_hidden_at == Some(*k);
            let (s, h) =
                preln_ops::autocast_bf16(self.device, t.precision.is_bf16(), || self.task.loss(b, want_hidden))??;
            (&s.loss / tokens.max(1) as f64).backward();
            loss_sum += s.loss.detach();
            nll_sum += s.nll.detach();
            if h.is_some() {
                hidden = h;
            }
        }
        if let Some(g) = &self.group {
            let local = Vec::<f32>::try_from(Tensor::stack(&[&loss_sum, &nll_sum], 0).to_device(Device::Cpu))?;
            let sums =
                g.reduce_gradients(&self.params, &local, &format!("the gradient all-reduce of update {step}"))?;
            loss_sum = Tensor::from(sums[0]).to_device(self.device);
            nll_sum = Tensor::from(sums[1]).to_device(self.device);
            if diag_now {
                let owner = g.owner(group.len() - 1, t.update_freq);
                let json = serde_json::to_vec(&hidden).expect("norms serialize");
                let json = g.broadcast_bytes(&json, owner, &format!("the hidden-state norms of update {step}"))?;
                hidden = serde_json::from_slice(&json)
                    .map_err(|e| TrainError::Dist(format!("rank {owner}'s hidden-state norms are unreadable: {e}")))?;
            }
        }
        let norm = total_grad_norm(&self.params);
        let denom = tokens.max(1) as f64;
        let host = Vec::<f64>::try_from(
            Tensor::stack(&[loss_sum / denom, nll_sum / denom, norm.to_kind(Kind::Float)], 0)
                .to_kind(Kind::Double)
                .to_device(Device::Cpu),
        )?;
        Ok(Accumulated { tokens, loss: host[0], nll: host[1], grad_norm: host[2], hidden })
    }

    /// The `diag` record: the gradient norm of every layer, the hidden-state norms.
    fn diagnose(&mut self, metrics: &mut Metrics, step: u64, hidden: Option<HiddenNorms>) -> Result<(), TrainError> {
        let groups = group_norms(&grad_norms(self.task.var_store()));
        metrics.write(&Record::Diag(DiagRecord {
            step,
            epoch: self.state.epoch,
            grad_norm_groups: groups.into_iter().collect(),
            hidden_sq_norm_over_d: hidden,
        }))
    }

    /// Clips the gradients (when `train.clip_norm` > 0), takes the optimizer step at the
    /// scheduled learning rate and clears the gradients; returns that rate.
    fn clip_and_step(&mut self, grad_norm: f64, step: u64) -> Result<f64, TrainError> {
        let t = &self.cfg.train;
        if t.clip_norm > 0.0 {
            clip_grads(&self.params, grad_norm, t.clip_norm);
        }
        let lr = self.cfg.schedule.lr_at(t.lr, step, self.state.epoch);
        self.opt.step(lr)?;
        self.opt.zero_grad()?;
        Ok(lr)
    }

    /// The `train` record, every `train.log_every` updates.
    fn log(
        &mut self,
        metrics: &mut Metrics,
        window: &mut Window,
        acc: &Accumulated,
        lr: f64,
    ) -> Result<Option<TrainRecord>, TrainError> {
        window.tokens += acc.tokens;
        window.updates += 1;
        if self.state.step % self.cfg.train.log_every != 0 {
            return Ok(None);
        }
        let allreduce_ms =
            self.group.as_ref().map(|g| g.take_comm_time().as_secs_f64() * 1e3 / window.updates.max(1) as f64);
        let record = TrainRecord {
            step: self.state.step,
            epoch: self.state.epoch,
            lr,
            loss: acc.loss,
            nll: acc.nll,
            grad_norm: acc.grad_norm,
            tokens: acc.tokens,
            tokens_per_s: window.tokens as f64 / window.start.elapsed().as_secs_f64().max(1e-9),
            allreduce_ms,
        };
        metrics.write(&Record::Train(record.clone()))?;
        *window = Window::new();
        Ok(Some(record))
    }

    /// Saves the `last` checkpoint (rank 0 only).
    fn save_last(&self) -> Result<(), TrainError> {
        if !self.is_root() {
            return Ok(());
        }
        state::save(&last_checkpoint(&self.run_dir), self.task.var_store(), &self.opt, &self.state)
    }

    /// Validates, writes the `valid` record, moves to the next epoch at an epoch's end, saves
    /// `last` (and publishes it as `best` when it improved).
    fn validate(&mut self, metrics: &mut Metrics, at_epoch_end: bool) -> Result<(), TrainError> {
        let v = self.task.validate()?;
        let improved = self.state.best_valid_loss.is_none_or(|b| v.loss < b);
        if improved {
            self.state.best_valid_loss = Some(v.loss);
            self.state.best_epoch = Some(self.state.epoch);
            self.state.best_step = Some(self.state.step);
        }
        let record = ValidRecord {
            step: self.state.step,
            epoch: self.state.epoch,
            loss: v.loss,
            nll: v.nll,
            ppl: v.nll.exp(),
            train_loss: self.state.epoch_loss_sum / self.state.epoch_tokens.max(1) as f64,
            wall_s: self.state.wall_s,
            epoch_end: at_epoch_end,
            extra: v.extra.into_iter().collect(),
        };
        metrics.write(&Record::Valid(record.clone()))?;
        self.reporter.validated(&record, improved);
        if at_epoch_end {
            self.state.next_epoch(self.cfg.train.max_epochs);
        }
        self.save_last()?;
        if improved && self.is_root() {
            preln_model::fsio::publish_copy(&last_checkpoint(&self.run_dir), &best_checkpoint(&self.run_dir))?;
        }
        self.last_valid = Some(v.loss);
        self.check_ranks_agree()
    }

    /// Data-parallel: checks that every rank holds rank 0's parameters, bit for bit.
    fn check_ranks_agree(&mut self) -> Result<(), TrainError> {
        let Some(g) = &self.group else { return Ok(()) };
        let what = format!("the check of the parameters after update {}", self.state.step);
        g.check_same(&tensors_digest(&self.params), &what)?;
        let note = format!("all {} ranks hold identical parameters after update {}", g.world(), self.state.step);
        self.reporter.note(&note);
        Ok(())
    }

    /// The signal that stops the run after this update: this process's, or, data-parallel,
    /// one any rank received (all ranks stop at the same update).
    fn stop_requested(&self) -> Result<Option<i32>, TrainError> {
        let mine = crate::interrupt::requested();
        let Some(g) = &self.group else { return Ok(mine) };
        let what = format!("the stop vote after update {}", self.state.step);
        let sums = g.sum(&[f64::from(u8::from(mine.is_some())), f64::from(mine.unwrap_or(0))], &what)?;
        let (ranks, signals) = (sums[0], sums[1]);
        Ok(mine.or((ranks > 0.0).then(|| (signals / ranks).round() as i32)))
    }

    /// Saves the update just finished and logs why the run stops.
    fn interrupted(&mut self, metrics: &mut Metrics, signal: i32) -> TrainError {
        let record = Record::Interrupted(InterruptedRecord {
            step: self.state.step,
            epoch: self.state.epoch,
            signal: crate::interrupt::signal_name(signal),
            wall_s: self.state.wall_s,
        });
        match self.save_last().and_then(|()| metrics.write(&record)) {
            Ok(()) => {
                TrainError::Interrupted { signal, step: self.state.step, checkpoint: last_checkpoint(&self.run_dir) }
            }
            Err(e) => e,
        }
    }

    /// Explains a non-finite loss or gradient: which parameters, and what is kept.
    fn diverged(&mut self, metrics: &mut Metrics, loss: f64, norm: f64) -> TrainError {
        let norms = grad_norms(self.task.var_store());
        let key = |v: f64| if v.is_finite() { v } else { f64::INFINITY };
        let worst = norms.iter().max_by(|a, b| key(a.1).total_cmp(&key(b.1))).cloned().unwrap_or_default();
        let last = last_checkpoint(&self.run_dir);
        let record = DivergedRecord {
            step: self.state.step + 1,
            epoch: self.state.epoch,
            loss,
            grad_norm: norm,
            largest_grad: worst.0,
            largest_grad_norm: worst.1,
        };
        let _ = metrics.write(&Record::Diverged(record.clone()));
        TrainError::Diverged(Box::new(Divergence {
            record,
            non_finite: norms.iter().filter(|(_, v)| !v.is_finite()).map(|(n, _)| n.clone()).take(5).collect(),
            kept: state::read_state(&last).ok().map(|s| (last, s.step)),
        }))
    }
}
