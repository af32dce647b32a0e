//! Fine-tuning a pre-trained BERT on a GLUE sentence-pair task (MRPC, RTE): `<s> A </s> B </s>`
//! with segments 0 / 1, BERT's pooler (dense + tanh on the first token) and a linear classifier,
//! cross-entropy, dev accuracy (and F1 of the positive class) after every epoch. Runs through
//! the shared training loop.

use std::path::{Path, PathBuf};

use preln_data::glue::{encode_pair, GlueTask, PairExample};
use preln_data::mlm::MlmDataset;
use preln_data::mlm::MlmSpecials;
use preln_data::synthetic::SplitMix64;
use preln_eval::stats::Stat;
use preln_model::classifier::PairClassifier;
use preln_model::init::seeded;
use preln_model::{Bert, BertConfig, LossSums, WeightInit};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::config::parse_with_overrides;
use crate::config::TrainSection;
use crate::metrics::{valid_records, Metrics};
use crate::mlm::PretrainConfig;
use crate::optim::OptimizerConfig;
use crate::report::Reporter;
use crate::rundir::{last_checkpoint, RunInfo};
use crate::schedule::Schedule;

use crate::device::resolve_device;
use crate::task::{HiddenNorms, Task, Validation};
use crate::trainer::Launch;
use crate::trainer::{LoopConfig, RunOptions, Trainer};
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
    /// Fine-tunes the BERT of a pre-training run (`checkpoint` of it; `None`: the same shape,
    /// randomly initialized, as the baseline without pre-training; the model config from `bert`)
    /// on `train`, validating on `dev`; `seed` seeds the classifier, batches and dropout.
    #[allow(clippy::too_many_arguments)]
    pub fn finetune(
        cfg: &FinetuneConfig,
        bert_cfg: &BertConfig,
        checkpoint: Option<&Path>,
        data: &MlmDataset,
        train: &[PairExample],
        dev: &[PairExample],
        run_dir: &Path,
    ) -> Result<Trainer<Classification>, TrainError> {
        let device = resolve_device(cfg.train.device, cfg.train.precision)?;
        let lock = Launch::default().prepare_run_dir(run_dir)?;
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
        if let Some(checkpoint) = checkpoint {
            load_pretrained(&vs, checkpoint)?;
        }
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
        Trainer::with_task(task, loop_cfg, run_dir, Launch::default(), lock)
    }
}

/// `preln finetune`: a GLUE task from a pre-training run, over several seeds.
#[derive(Clone, Debug)]
pub struct SeedsSpec {
    pub task: GlueTask,
    /// The task's GLUE folder (train.tsv, dev.tsv).
    pub glue_dir: PathBuf,
    /// A `preln pretrain` run folder (its model config and tokenizer), and its checkpoint to
    /// start from (`None`: random initialization, the baseline without pre-training).
    pub pretrain_run: PathBuf,
    pub checkpoint: Option<PathBuf>,
    pub seeds: u64,
    pub epochs: u64,
    pub lr: f64,
    pub batch_size: usize,
    /// Fraction of the updates in linear warmup.
    pub warmup: f64,
    /// `key=value` overrides of the fine-tuning config.
    pub overrides: Vec<String>,
    pub out: PathBuf,
}

/// Dev accuracy (and F1 of class 1) after one fine-tuning epoch, over the seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochSummary {
    pub epoch: usize,
    pub accuracy: Stat,
    pub accuracy_ci95: f64,
    pub f1: Stat,
    pub f1_ci95: f64,
}

/// What predicting the training set's most frequent label for every dev example scores.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Majority {
    pub label: i64,
    pub accuracy: f64,
    /// F1 of class 1 (0 where the majority label is 0: nothing is predicted positive).
    pub f1: f64,
}

impl Majority {
    pub fn of(train: &[PairExample], dev: &[PairExample]) -> Majority {
        let ones = train.iter().filter(|x| x.label == 1).count();
        let label = i64::from(2 * ones > train.len());
        let hits = dev.iter().filter(|x| x.label == label).count() as f64;
        let positives = dev.iter().filter(|x| x.label == 1).count() as f64;
        // Predicting 1 everywhere: precision = the positives' share, recall 1.
        let f1 = match label {
            1 if positives > 0.0 => {
                let p = positives / dev.len() as f64;
                2.0 * p / (p + 1.0)
            }
            _ => 0.0,
        };
        Majority { label, accuracy: hits / dev.len().max(1) as f64, f1 }
    }
}

/// `summary.json` of a fine-tuning.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeedsSummary {
    pub task: GlueTask,
    /// The pre-trained checkpoint fine-tuned (`None`: from random initialization).
    pub checkpoint: Option<PathBuf>,
    /// The majority-label baseline on the same dev set.
    #[serde(default)]
    pub majority: Option<Majority>,
    pub seeds: u64,
    pub lr: f64,
    pub batch_size: usize,
    /// Per seed and epoch: (accuracy, F1).
    pub per_seed: Vec<Vec<(f64, f64)>>,
    pub epochs: Vec<EpochSummary>,
}

/// Fine-tunes once per seed (`out/seed-N`, each reporting to a reporter of `reporter`), then
/// writes `out/summary.json`; `progress` hears a line per seed.
pub fn finetune_seeds(
    spec: &SeedsSpec,
    reporter: impl Fn() -> Box<dyn Reporter>,
    mut progress: impl FnMut(&str),
) -> Result<SeedsSummary, TrainError> {
    let cfg_path = spec.pretrain_run.join("config.toml");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| TrainError::Io(cfg_path.clone(), e))?;
    let pre = PretrainConfig::resolve(&cfg_path.display().to_string(), &text, &[])?;
    let data = MlmDataset::open(&RunInfo::read(&spec.pretrain_run)?.data)?;
    let train = spec.task.read(&spec.glue_dir.join("train.tsv"))?;
    let dev = spec.task.read(&spec.glue_dir.join("dev.tsv"))?;
    let mut per_seed: Vec<Vec<(f64, f64)>> = Vec::new();
    for seed in 1..=spec.seeds {
        let mut base = FinetuneConfig { batch_size: spec.batch_size, ..Default::default() };
        base.train.lr = spec.lr;
        base.train.max_epochs = spec.epochs;
        base.train.seed = seed;
        base.train.device = pre.train.device;
        let base = base.with_linear_schedule(train.len(), spec.warmup);
        let cfg: FinetuneConfig =
            parse_with_overrides("finetune", &toml::to_string(&base).expect("config serializes"), &spec.overrides)?;
        let dir = spec.out.join(format!("seed-{seed}"));
        if last_checkpoint(&dir).exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| TrainError::Io(dir.clone(), e))?;
        }
        let mut t = Trainer::finetune(&cfg, &pre.model, spec.checkpoint.as_deref(), &data, &train, &dev, &dir)?
            .with_reporter(reporter());
        t.run(&RunOptions::default())?;
        let records = Metrics::read(&dir.join("metrics.jsonl"))?;
        let epochs: Vec<(f64, f64)> = valid_records(&records)
            .map(|v| (v.metric("accuracy").unwrap_or(f64::NAN), v.metric("f1").unwrap_or(f64::NAN)))
            .collect();
        let accs: Vec<String> = epochs.iter().map(|a| format!("{:.4}", a.0)).collect();
        progress(&format!("seed {seed}: dev accuracy by epoch {}", accs.join(", ")));
        per_seed.push(epochs);
    }
    let summary = SeedsSummary {
        task: spec.task,
        checkpoint: spec.checkpoint.clone(),
        majority: Some(Majority::of(&train, &dev)),
        seeds: spec.seeds,
        lr: spec.lr,
        batch_size: spec.batch_size,
        epochs: epoch_summaries(&per_seed, spec.epochs as usize),
        per_seed,
    };
    let json = serde_json::to_string_pretty(&summary).expect("summary serializes");
    preln_model::checkpoint::write_file_atomic(&spec.out.join("summary.json"), json.as_bytes())?;
    Ok(summary)
}

fn epoch_summaries(per_seed: &[Vec<(f64, f64)>], epochs: usize) -> Vec<EpochSummary> {
    (0..epochs)
        .map(|e| {
            let accuracy = Stat::of(&per_seed.iter().filter_map(|r| r.get(e).map(|x| x.0)).collect::<Vec<_>>());
            let f1 = Stat::of(&per_seed.iter().filter_map(|r| r.get(e).map(|x| x.1)).collect::<Vec<_>>());
            EpochSummary { epoch: e + 1, accuracy, accuracy_ci95: accuracy.ci95(), f1, f1_ci95: f1.ci95() }
        })
        .collect()
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

    #[test]
    fn the_majority_baseline_predicts_the_training_sets_most_frequent_label() {
        let ex = |label| PairExample { a: "a".into(), b: "b".into(), label };
        let train: Vec<PairExample> = [1, 1, 0].into_iter().map(ex).collect();
        // Dev: 3 positives of 4. Predicting 1: accuracy 0.75, precision 0.75, recall 1.
        let dev: Vec<PairExample> = [1, 0, 1, 1].into_iter().map(ex).collect();
        let m = Majority::of(&train, &dev);
        assert_eq!((m.label, m.accuracy), (1, 0.75));
        assert!((m.f1 - 1.5 / 1.75).abs() < 1e-12, "{m:?}");
        let m = Majority::of(&[ex(0), ex(0), ex(1)], &dev);
        assert_eq!((m.label, m.accuracy, m.f1), (0, 0.25, 0.0));
    }
}
