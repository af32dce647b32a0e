//! Fine-tuning a pre-trained BERT on a GLUE sentence-pair task (MRPC, RTE): `<s> A </s> B </s>`
//! with segments 0 / 1, BERT's pooler (dense + tanh on the first token) and a linear classifier,
//! cross-entropy, dev accuracy (and F1 of the positive class) after every epoch. Runs through
//! the shared training loop.

use std::path::Path;

use preln_data::glue::{encode_pair, PairExample};
use preln_data::mlm::MlmDataset;
use preln_data::mlm::MlmSpecials;
use preln_data::synthetic::SplitMix64;
use preln_model::classifier::PairClassifier;
use preln_model::init::seeded;
use preln_model::{Bert, BertConfig, LossSums, WeightInit};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::config::TrainSection;
use crate::optim::OptimizerConfig;
use crate::schedule::Schedule;
use crate::trainer::{prepare_run_dir, resolve_device, HiddenNorms, LoopConfig, Task, Trainer, Validation};
use crate::TrainError;

/// Fine-tuning settings (the model comes from the pre-training run).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    pub optimizer: OptimizerConfig,
    pub schedule: Schedule,
    pub train: TrainSection,
    /// Examples per update.
    pub batch_size: usize,
    /// Dropout of the classifier input (BERT: 0.1).
    pub classifier_dropout: f64,
}

impl Default for FinetuneConfig {
    /// BERT's recipe: AdamW, lr 5e-5, 10% warmup then linear decay, batch 32, 3 epochs.
    fn default() -> Self {
        FinetuneConfig {
            optimizer: OptimizerConfig::AdamW { betas: (0.9, 0.999), eps: 1e-6, weight_decay: 0.01 },
            schedule: Schedule::LinearDecay { warmup: 0, total_steps: 0 },
            train: TrainSection {
                lr: 5e-5,
                max_epochs: 3,
                label_smoothing: 0.0,
                log_every: 10,
                diag_every: 0,
                save_every: 0,
                valid_split: "dev".into(),
                ..Default::default()
            },
            batch_size: 32,
            classifier_dropout: 0.1,
        }
    }
}

impl FinetuneConfig {
    /// Linear decay over the whole run with `warmup_frac` of it as warmup, for `n_train` examples.
    pub fn with_linear_schedule(mut self, n_train: usize, warmup_frac: f64) -> Self {
        let total = (n_train.div_ceil(self.batch_size) as u64 * self.train.max_epochs).max(2);
        let warmup = ((total as f64 * warmup_frac).round() as u64).min(total - 1);
        self.schedule = Schedule::LinearDecay { warmup, total_steps: total };
        self
    }
}

pub struct PairBatch {
    tokens: Tensor,
    segments: Tensor,
    labels: Tensor,
    n: i64,
}

fn make_batch(examples: &[(Vec<i64>, Vec<i64>, i64)], idx: &[usize], device: Device) -> PairBatch {
    let t = idx.iter().map(|&i| examples[i].0.len()).max().unwrap_or(1);
    let (mut tok, mut seg, mut lab) = (Vec::new(), Vec::new(), Vec::new());
    for &i in idx {
        let (ids, segs, label) = &examples[i];
        tok.extend(ids.iter().copied().chain(std::iter::repeat_n(MlmSpecials::BASE.pad, t - ids.len())));
        seg.extend(segs.iter().copied().chain(std::iter::repeat_n(0, t - ids.len())));
        lab.push(*label);
    }
    let shape = [idx.len() as i64, t as i64];
    PairBatch {
        tokens: Tensor::from_slice(&tok).reshape(shape).to_device(device),
        segments: Tensor::from_slice(&seg).reshape(shape).to_device(device),
        labels: Tensor::from_slice(&lab).to_device(device),
        n: idx.len() as i64,
    }
}

pub struct Classification {
    device: Device,
    vs: VarStore,
    bert: Bert,
    head: PairClassifier,
    train: Vec<(Vec<i64>, Vec<i64>, i64)>,
    dev: Vec<(Vec<i64>, Vec<i64>, i64)>,
    batches: Vec<Vec<usize>>,
}

impl Classification {
    fn logits(&self, b: &PairBatch, train: bool) -> Result<Tensor, TrainError> {
        let h = self.bert.encode(&b.tokens, &b.segments, train)?.out.select(1, 0);
        Ok(self.head.forward(&h, train).to_kind(Kind::Float))
    }

    /// Dev loss, accuracy and F1 of class 1, without dropout or autograd.
    pub fn evaluate(&self) -> Result<(f64, f64, f64), TrainError> {
        tch::no_grad(|| {
            let (mut loss, mut correct) = (0.0, 0.0);
            let (mut tp, mut fp, mut fneg) = (0.0, 0.0, 0.0);
            let idx: Vec<usize> = (0..self.dev.len()).collect();
            for chunk in idx.chunks(64) {
                let b = make_batch(&self.dev, chunk, self.device);
                let logits = self.logits(&b, false)?;
                loss += logits.cross_entropy_for_logits(&b.labels).double_value(&[]) * b.n as f64;
                let pred = logits.argmax(-1, false);
                let f = |t: Tensor| t.sum(Kind::Float).double_value(&[]);
                correct += f(pred.eq_tensor(&b.labels));
                tp += f(pred.eq(1).logical_and(&b.labels.eq(1)));
                fp += f(pred.eq(1).logical_and(&b.labels.eq(0)));
                fneg += f(pred.eq(0).logical_and(&b.labels.eq(1)));
            }
            let n = self.dev.len() as f64;
            let f1 = if tp > 0.0 { 2.0 * tp / (2.0 * tp + fp + fneg) } else { 0.0 };
            Ok((loss / n, correct / n, f1))
        })
    }
}

impl Task for Classification {
    type Batch = PairBatch;

    fn batches(&self) -> &[Vec<usize>] {
        &self.batches
    }

    fn batch(&self, idx: &[usize], _seed: u64) -> PairBatch {
        make_batch(&self.train, idx, self.device)
    }

    fn tokens(&self, b: &PairBatch) -> i64 {
        b.n
    }

    fn loss(&self, b: &PairBatch, _hidden: bool) -> Result<(LossSums, Option<HiddenNorms>), TrainError> {
        let logits = self.logits(b, true)?;
        let sum = logits.log_softmax(-1, Kind::Float).gather(1, &b.labels.unsqueeze(1), false).sum(Kind::Float) * -1.0;
        Ok((LossSums { loss: sum.shallow_clone(), nll: sum, tokens: Tensor::from(b.n) }, None))
    }

    fn validate(&self) -> Result<Validation, TrainError> {
        let (loss, acc, f1) = self.evaluate()?;
        Ok(Validation { loss, nll: loss, extra: vec![("accuracy".into(), Some(acc)), ("f1".into(), Some(f1))] })
    }

    fn var_store(&self) -> &VarStore {
        &self.vs
    }

    fn var_store_mut(&mut self) -> &mut VarStore {
        &mut self.vs
    }
}

/// Copies every BERT parameter of `vs` (all but `pooler.*` / `classifier.*`) from the model part
/// of a training checkpoint; the MLM head's values come along unused.
fn load_pretrained(vs: &VarStore, checkpoint: &Path) -> Result<(), TrainError> {
    let (model, _) = crate::state::split(preln_model::checkpoint::read(checkpoint)?);
    tch::no_grad(|| {
        for (name, mut var) in preln_model::checkpoint::parameters(vs) {
            if name.starts_with("pooler.") || name.starts_with("classifier.") {
                continue;
            }
            let src = model.get(&name).ok_or_else(|| {
                TrainError::Checkpoint(format!(
                    "{}: no `{name}` (not a BERT checkpoint of this size?)",
                    checkpoint.display()
                ))
            })?;
            if src.size() != var.size() {
                return Err(TrainError::Checkpoint(format!(
                    "{}: `{name}` has shape {:?}, the model {:?}",
                    checkpoint.display(),
                    src.size(),
                    var.size()
                )));
            }
            var.copy_(src);
        }
        Ok(())
    })
}

impl Trainer<Classification> {
    /// Fine-tunes the BERT of a pre-training run (`checkpoint` of it, the model config from
    /// `bert`) on `train`, validating on `dev`; `seed` seeds the classifier, batches and dropout.
    #[allow(clippy::too_many_arguments)]
    pub fn finetune(
        cfg: &FinetuneConfig,
        bert_cfg: &BertConfig,
        checkpoint: &Path,
        data: &MlmDataset,
        train: &[PairExample],
        dev: &[PairExample],
        run_dir: &Path,
    ) -> Result<Trainer<Classification>, TrainError> {
        let device = resolve_device(&cfg.train)?;
        let lock = prepare_run_dir(run_dir, false)?;
        let max_len = bert_cfg.max_positions as usize;
        let encode = |xs: &[PairExample]| -> Result<Vec<(Vec<i64>, Vec<i64>, i64)>, TrainError> {
            xs.iter()
                .map(|x| {
                    let tok = |s: &str| data.tokenizer.encode(s).map_err(|e| TrainError::Data(e.into()));
                    let (ids, segs) = encode_pair(&tok(&x.a)?, &tok(&x.b)?, max_len);
                    Ok((ids, segs, x.label))
                })
                .collect()
        };
        let (train, dev) = (encode(train)?, encode(dev)?);
        let vs = VarStore::new(device);
        let init = WeightInit::Normal { std: bert_cfg.init_std };
        let (bert, head) = seeded(cfg.train.seed, || -> Result<_, TrainError> {
            let bert = Bert::new(&vs.root(), bert_cfg)?;
            Ok((bert, PairClassifier::new(&vs.root(), bert_cfg.d_model, 2, init, cfg.classifier_dropout)))
        })?;
        load_pretrained(&vs, checkpoint)?;
        let mut order: Vec<usize> = (0..train.len()).collect();
        let mut rng = SplitMix64::new(cfg.train.seed ^ 0xF17E);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.range(0, i));
        }
        let batches = order.chunks(cfg.batch_size.max(1)).map(<[usize]>::to_vec).collect();
        let loop_cfg = LoopConfig {
            optimizer: cfg.optimizer.clone(),
            schedule: cfg.schedule.clone(),
            train: cfg.train.clone(),
            toml: toml::to_string_pretty(cfg).expect("config serializes"),
        };
        let task = Classification { device, vs, bert, head, train, dev, batches };
        Trainer::with_task(task, loop_cfg, run_dir, false, lock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_covers_the_run() {
        let c = FinetuneConfig::default().with_linear_schedule(3668, 0.1);
        // 3668 examples / 32 = 115 updates an epoch, 3 epochs; 10% of 345 = 34.5 rounds to 35.
        assert_eq!(c.schedule, Schedule::LinearDecay { warmup: 35, total_steps: 345 });
    }
}
