//! The translation training loop: token batches in a seeded order, gradient accumulation,
//! clipping, scheduled updates, metrics, per-epoch validation, checkpoints, exact resume and
//! divergence diagnosis.
//!
//! Exact resume rests on three facts: the data order of an epoch is a function of the seed and
//! the epoch; dropout masks are drawn after reseeding libtorch from (seed, step, batch); model
//! and optimizer state are saved bit for bit. A resumed run therefore logs the same losses as an
//! uninterrupted one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use preln_analysis::{grad_norms, sq_norms_over_d};
use preln_data::synthetic::SplitMix64;
use preln_data::{token_batches, Batch, Bpe, Pairs, Specials};
use preln_eval::{beam_search, corpus_bleu, BleuOptions, SearchConfig};
use preln_model::checkpoint::parameters;
use preln_model::init::seeded;
use preln_model::stack::StackOut;
use preln_model::{label_smoothed_nll, Seq2Seq, Seq2SeqConfig};
use serde_json::json;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::config::TrainConfig;
use crate::metrics::Metrics;
use crate::optim::{clip_grads, total_grad_norm, Optimizer};
use crate::state::{self, TrainState};
use crate::TrainError;

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

pub fn checkpoint_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

pub fn last_checkpoint(run_dir: &Path) -> PathBuf {
    checkpoint_dir(run_dir).join("last.safetensors")
}

pub fn best_checkpoint(run_dir: &Path) -> PathBuf {
    checkpoint_dir(run_dir).join("best.safetensors")
}

pub fn resolve_device(name: &str) -> Result<Device, TrainError> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        "cuda" => Err(TrainError::Config("train.device = cuda but libtorch sees no CUDA device".into())),
        _ => Ok(Device::cuda_if_available()),
    }
}

/// The model config a data set implies: its vocabulary, pad id 0.
pub fn model_config(cfg: &TrainConfig, vocab_size: usize) -> Seq2SeqConfig {
    Seq2SeqConfig { vocab_size: vocab_size as i64, pad_id: Specials::DEFAULT.pad, ..cfg.model.clone() }
}

/// A seed for libtorch's generator from (run seed, update, batch within the update).
fn dropout_seed(seed: u64, step: u64, micro: usize) -> u64 {
    let mut rng = SplitMix64::new(seed ^ step.wrapping_mul(0x9E37_79B9) ^ ((micro as u64) << 48));
    rng.next_u64() >> 1
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

fn lengths(pairs: &Pairs) -> Vec<(usize, usize)> {
    pairs.iter().map(|(s, t)| (s.len() + 1, t.len() + 1)).collect()
}

/// Updates in one epoch of `pairs` with the batching of `cfg` (token batches, `update_freq`).
pub fn updates_per_epoch(pairs: &Pairs, cfg: &TrainConfig) -> u64 {
    token_batches(&lengths(pairs), cfg.train.max_tokens).len().div_ceil(cfg.train.update_freq) as u64
}

fn make_batch(pairs: &Pairs, idx: &[usize], device: Device) -> Batch {
    let chunk: Vec<_> = idx.iter().map(|&i| pairs[i].clone()).collect();
    Batch::from_pairs(&chunk, Specials::DEFAULT, device)
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

/// `E ||x||^2 / d` over real tokens after each layer of a stack.
fn layer_sq_norms(stack: &StackOut, keep: &Tensor) -> Vec<f64> {
    sq_norms_over_d(&stack.layer_sums.iter().collect::<Vec<_>>(), keep)
}

pub struct Trainer {
    cfg: TrainConfig,
    run_dir: PathBuf,
    device: Device,
    vs: VarStore,
    model: Seq2Seq,
    opt: Optimizer,
    params: Vec<(String, Tensor)>,
    train: Pairs,
    valid: Pairs,
    batches: Vec<Vec<usize>>,
    state: TrainState,
    /// Turns ids back into text for validation BLEU.
    tokenizer: Option<Bpe>,
}

impl Trainer {
    /// Builds the model and optimizer; with `resume`, restores them from the last checkpoint.
    pub fn new(
        cfg: &TrainConfig,
        train: Pairs,
        valid: Pairs,
        vocab_size: usize,
        run_dir: &Path,
        resume: bool,
    ) -> Result<Trainer, TrainError> {
        cfg.validate()?;
        if train.is_empty() {
            return Err(TrainError::Config("the training split is empty".into()));
        }
        let device = resolve_device(&cfg.train.device)?;
        let last = last_checkpoint(run_dir);
        if resume && !last.exists() {
            return Err(TrainError::Config(format!("--resume: no checkpoint at {}", last.display())));
        }
        if !resume && last.exists() {
            return Err(TrainError::Config(format!(
                "{} already holds a run (pass --resume to continue it, or choose another --out)",
                run_dir.display()
            )));
        }
        std::fs::create_dir_all(checkpoint_dir(run_dir)).map_err(|e| TrainError::Io(run_dir.into(), e))?;
        let mcfg = model_config(cfg, vocab_size);
        let mut vs = VarStore::new(device);
        let model = seeded(cfg.train.seed, || Seq2Seq::new(&vs.root(), &mcfg))?;
        let params = parameters(&vs);
        let mut opt =
            Optimizer::new(cfg.optimizer.clone(), params.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect());
        let state =
            if resume { state::load(&last, &mut vs, &mut opt)? } else { TrainState { epoch: 1, ..Default::default() } };
        let resolved = TrainConfig { model: mcfg, ..cfg.clone() };
        let cfg_path = run_dir.join("config.toml");
        preln_model::checkpoint::write_file_atomic(&cfg_path, resolved.to_toml().as_bytes())?;
        let batches = token_batches(&lengths(&train), cfg.train.max_tokens);
        let mut state = state;
        let t = &cfg.train;
        if state.done && state.epoch <= t.max_epochs && (t.max_updates == 0 || state.step < t.max_updates) {
            // A finished run resumed with larger limits: continue where it stopped.
            state.done = false;
            if state.batch_in_epoch >= batches.len() {
                if state.epoch == t.max_epochs {
                    state.done = true;
                } else {
                    state.epoch += 1;
                    state.batch_in_epoch = 0;
                }
            }
        }
        Ok(Trainer {
            tokenizer: None,
            cfg: resolved,
            run_dir: run_dir.into(),
            device,
            vs,
            model,
            opt,
            params,
            train,
            valid,
            batches,
            state,
        })
    }

    /// Enables validation BLEU (`train.valid_bleu_beam > 0`): hypotheses and references are
    /// detokenized with `tokenizer` and scored as sacreBLEU would.
    pub fn with_tokenizer(mut self, tokenizer: Bpe) -> Self {
        self.tokenizer = Some(tokenizer);
        self
    }

    /// Corpus BLEU of the model's translations of `pairs` (None when not configured).
    pub fn bleu(&self, pairs: &Pairs) -> Result<Option<f64>, TrainError> {
        let (Some(bpe), beam) = (&self.tokenizer, self.cfg.train.valid_bleu_beam) else { return Ok(None) };
        if beam == 0 || pairs.is_empty() {
            return Ok(None);
        }
        let search = SearchConfig { beam, lenpen: self.cfg.train.valid_bleu_lenpen, ..Default::default() };
        let text = |ids: &[i64]| -> Result<String, TrainError> {
            let ids: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
            bpe.decode(&ids).map_err(|e| TrainError::Checkpoint(format!("detokenizing: {e}")))
        };
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.sort_by_key(|&i| (pairs[i].0.len(), i));
        let mut hyps = vec![String::new(); pairs.len()];
        for chunk in order.chunks(64) {
            let batch = make_batch(pairs, chunk, self.device);
            for (&i, h) in chunk.iter().zip(beam_search(&self.model, &batch.src, &search)) {
                hyps[i] = text(&h.tokens)?;
            }
        }
        let refs = pairs.iter().map(|(_, t)| text(t)).collect::<Result<Vec<_>, _>>()?;
        let b =
            corpus_bleu(&hyps, &[refs], BleuOptions::default()).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
        Ok(Some(b.score))
    }

    pub fn state(&self) -> &TrainState {
        &self.state
    }

    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    fn save_last(&self) -> Result<(), TrainError> {
        state::save(&last_checkpoint(&self.run_dir), &self.vs, &self.opt, &self.state)
    }

    /// Validation loss and NLL (nats per target token) over a split, without dropout or autograd.
    pub fn evaluate(&self, pairs: &Pairs) -> (f64, f64) {
        tch::no_grad(|| {
            let (mut loss, mut nll, mut tokens) = (0.0, 0.0, 0i64);
            for idx in token_batches(&lengths(pairs), self.cfg.train.max_tokens) {
                let b = make_batch(pairs, &idx, self.device);
                let (_, dec) = self.model.forward(&b.src, &b.prev, false);
                let s =
                    label_smoothed_nll(&dec.logits, &b.target, self.cfg.train.label_smoothing, self.cfg.model.pad_id);
                loss += s.loss.double_value(&[]);
                nll += s.nll.double_value(&[]);
                tokens += b.target_tokens;
            }
            let n = tokens.max(1) as f64;
            (loss / n, nll / n)
        })
    }

    fn diverged(&mut self, metrics: &mut Metrics, loss: f64, norm: f64) -> TrainError {
        let norms = grad_norms(&self.vs);
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

    /// Trains until `max_epochs` / `max_updates` (or `stop_at_step`), validating every epoch.
    pub fn run(&mut self, opts: &RunOptions) -> Result<Summary, TrainError> {
        let t = self.cfg.train.clone();
        let mut metrics = Metrics::open(&self.run_dir.join("metrics.jsonl"), opts.resume.then_some(self.state.step))?;
        let pad = self.cfg.model.pad_id;
        let mut last_valid = None;
        let started = Instant::now();
        let wall_before = self.state.wall_s;
        let (mut window_tokens, mut window_start) = (0i64, Instant::now());
        while self.state.epoch <= t.max_epochs && !self.state.done {
            let order = epoch_order(self.batches.len(), t.seed, self.state.epoch);
            let bar = ProgressBar::new(order.len() as u64);
            bar.set_style(
                ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(self.state.epoch.to_string());
            bar.set_position(self.state.batch_in_epoch as u64);
            let (mut epoch_loss, mut epoch_tokens) = (0.0, 0i64);
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
                let batches: Vec<Batch> =
                    group.iter().map(|&g| make_batch(&self.train, &self.batches[g], self.device)).collect();
                let tokens: i64 = batches.iter().map(|b| b.target_tokens).sum();
                let diag_now = t.diag_every > 0 && (self.state.step + 1) % t.diag_every == 0;
                let mut loss_sum = Tensor::zeros([], (Kind::Float, self.device));
                let mut nll_sum = Tensor::zeros([], (Kind::Float, self.device));
                let mut hidden = None;
                for (k, b) in batches.iter().enumerate() {
                    tch::manual_seed(dropout_seed(t.seed, self.state.step + 1, k) as i64);
                    let (enc, dec, s) = preln_ops::autocast_bf16(self.device, t.precision.is_bf16(), || {
                        let (enc, dec) = self.model.forward(&b.src, &b.prev, true);
                        // The loss in fp32 whatever the forward's precision.
                        let s = label_smoothed_nll(&dec.logits.to_kind(Kind::Float), &b.target, t.label_smoothing, pad);
                        (enc, dec, s)
                    });
                    (&s.loss / tokens as f64).backward();
                    loss_sum += s.loss.detach();
                    nll_sum += s.nll.detach();
                    if diag_now && k + 1 == batches.len() {
                        hidden = Some((
                            layer_sq_norms(&enc.stack, &b.src.ne(pad)),
                            layer_sq_norms(&dec.stack, &b.prev.ne(pad)),
                        ));
                    }
                }
                let norm_t = total_grad_norm(&self.params);
                let host = Vec::<f64>::try_from(
                    Tensor::stack(&[loss_sum / tokens as f64, nll_sum / tokens as f64, norm_t.to_kind(Kind::Float)], 0)
                        .to_kind(Kind::Double)
                        .to_device(Device::Cpu),
                )
                .expect("three scalars");
                let (loss, nll, norm) = (host[0], host[1], host[2]);
                if !loss.is_finite() || !norm.is_finite() {
                    bar.abandon();
                    return Err(self.diverged(&mut metrics, loss, norm));
                }
                if diag_now {
                    let groups = group_norms(&grad_norms(&self.vs));
                    let (enc_h, dec_h) = hidden.unwrap_or_default();
                    metrics.write(&json!({
                        "kind": "diag", "step": self.state.step + 1, "epoch": self.state.epoch,
                        "grad_norm_groups": groups.into_iter().map(|(g, n)| (g, json!(n))).collect::<serde_json::Map<_, _>>(),
                        "hidden_sq_norm_over_d": {"encoder": enc_h, "decoder": dec_h},
                    }))?;
                }
                if t.clip_norm > 0.0 {
                    clip_grads(&self.params, norm, t.clip_norm);
                }
                let lr = self.cfg.schedule.lr_at(t.lr, self.state.step + 1, self.state.epoch);
                self.opt.step(lr);
                self.opt.zero_grad();
                self.state.step += 1;
                self.state.batch_in_epoch += group.len();
                epoch_loss += loss * tokens as f64;
                epoch_tokens += tokens;
                window_tokens += tokens;
                if self.state.step % t.log_every == 0 {
                    let tps = window_tokens as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
                    metrics.write(&json!({
                        "kind": "train", "step": self.state.step, "epoch": self.state.epoch, "lr": lr,
                        "loss": loss, "nll": nll, "grad_norm": norm, "tokens": tokens, "tokens_per_s": tps,
                    }))?;
                    bar.set_message(format!("loss {loss:.3} lr {lr:.2e} {:.0} tok/s", tps));
                    window_tokens = 0;
                    window_start = Instant::now();
                }
                bar.set_position(self.state.batch_in_epoch as u64);
                self.state.wall_s = wall_before + started.elapsed().as_secs_f64();
                if t.max_updates > 0 && self.state.step >= t.max_updates {
                    self.state.done = true;
                    break;
                }
                if t.save_every > 0 && self.state.step % t.save_every == 0 {
                    self.save_last()?;
                }
            }
            bar.finish_and_clear();
            let epoch_secs = self.state.wall_s;
            let (vloss, vnll) = self.evaluate(&self.valid);
            let vbleu = self.bleu(&self.valid)?;
            last_valid = Some(vloss);
            let improved = self.state.best_valid_loss.is_none_or(|b| vloss < b);
            if improved {
                self.state.best_valid_loss = Some(vloss);
                self.state.best_epoch = Some(self.state.epoch);
            }
            metrics.write(&json!({
                "kind": "valid", "step": self.state.step, "epoch": self.state.epoch, "loss": vloss, "nll": vnll,
                "ppl": vnll.exp(), "bleu": vbleu, "train_loss": epoch_loss / epoch_tokens.max(1) as f64, "wall_s": epoch_secs,
            }))?;
            eprintln!(
                "epoch {}: train loss {:.4}, valid loss {vloss:.4}, valid nll {vnll:.4} (ppl {:.2}){}, {} updates, {:.0} s{}",
                self.state.epoch,
                epoch_loss / epoch_tokens.max(1) as f64,
                vnll.exp(),
                vbleu.map(|b| format!(", valid BLEU {b:.2}")).unwrap_or_default(),
                self.state.step,
                self.state.wall_s,
                if improved { ", best so far" } else { "" }
            );
            if self.state.epoch >= t.max_epochs {
                self.state.done = true;
            }
            if !self.state.done {
                self.state.epoch += 1;
                self.state.batch_in_epoch = 0;
            }
            self.save_last()?;
            if improved {
                std::fs::copy(last_checkpoint(&self.run_dir), best_checkpoint(&self.run_dir))
                    .map_err(|e| TrainError::Io(best_checkpoint(&self.run_dir), e))?;
            }
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
