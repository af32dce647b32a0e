//! Masked-language-model pre-training (BERT) on a folder made by `preln prepare-mlm`, through the
//! same loop as translation: segments in token batches, masks drawn afresh every update from a
//! seed (so a resumed run masks identically), validation on held-out text with fixed masks.

use std::path::Path;

use preln_data::mlm::{mlm_batch, MlmBatch, BERT_MASK_PROB};
use preln_data::{shuffled_token_batches, token_batches};
use preln_model::init::seeded;
use preln_model::{label_smoothed_nll, Bert, BertConfig, LossSums};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::config::{parse_with_overrides, ConfigError, TrainSection};
use crate::optim::OptimizerConfig;
use crate::schedule::Schedule;

use crate::device::{check_memory, resolve_device};
use crate::task::{HiddenNorms, Task, Validation};
use crate::trainer::Launch;
use crate::trainer::{LoopConfig, Trainer};
use crate::translation::layer_sq_norms;
use crate::TrainError;

/// The pre-training configuration: a BERT model and the shared optimizer, schedule and loop
/// sections (`train.max_tokens` counts padded tokens of a batch of segments).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainConfig {
    pub model: BertConfig,
    pub mlm: MlmSection,
    pub optimizer: OptimizerConfig,
    pub schedule: Schedule,
    pub train: TrainSection,
}

/// The masked-language-model objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlmSection {
    /// The share of tokens to predict (BERT, fairseq's `--mask-prob`, Hugging Face's
    /// `mlm_probability`: 0.15); of those 80% become `<mask>`, 10% a random token, 10% stay.
    /// Validation masks at BERT's 15% whatever this is, so that held-out numbers compare across
    /// recipes.
    pub mask_prob: f64,
}

impl Default for MlmSection {
    fn default() -> Self {
        MlmSection { mask_prob: BERT_MASK_PROB }
    }
}

impl Default for PretrainConfig {
    fn default() -> Self {
        let mut train = TrainSection { label_smoothing: 0.0, lr: 3e-4, max_tokens: 8192, ..Default::default() };
        train.valid_every = 500;
        PretrainConfig {
            model: BertConfig::default(),
            mlm: MlmSection::default(),
            optimizer: OptimizerConfig::Adam { betas: (0.9, 0.999), eps: 1e-6, weight_decay: 0.0 },
            schedule: Schedule::LinearDecay { warmup: 0, total_steps: 10_000 },
            train,
        }
    }
}

/// Pre-training presets shipped in `configs/`.
pub const PRESETS: &[(&str, &str)] = &[("bert-cpu", include_str!("../../../../configs/bert-cpu.toml"))];

impl PretrainConfig {
    /// Parses TOML with `key=value` overrides and validates.
    pub fn resolve(source_name: &str, text: &str, overrides: &[String]) -> Result<Self, ConfigError> {
        let cfg: PretrainConfig = parse_with_overrides(source_name, text, overrides)?;
        cfg.model.validate().map_err(|e| ConfigError::Invalid(format!("model: {e}")))?;
        let p = cfg.mlm.mask_prob;
        if !(p > 0.0 && p < 1.0) {
            return Err(ConfigError::Invalid(format!("mlm.mask_prob must be in (0, 1), got {p}")));
        }
        cfg.optimizer.validate().map_err(ConfigError::Invalid)?;
        cfg.schedule.validate().map_err(ConfigError::Invalid)?;
        cfg.train.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

/// MLM logits and targets at the masked positions only: the head (a d x V product) on the
/// other 85% of the tokens would be wasted work.
///
/// # Shapes
/// hidden: `[B, T, d]`; target: `[B, T]` (pad where not masked) -> `[N, V]`, `[N]`
fn masked_logits(model: &Bert, hidden: &Tensor, target: &Tensor, pad: i64) -> (Tensor, Tensor) {
    let d = *hidden.size().last().expect("hidden states [B, T, d]");
    let flat = target.reshape([-1]);
    let idx = flat.ne(pad).nonzero().squeeze_dim(1);
    (model.mlm_logits(&hidden.reshape([-1, d]).index_select(0, &idx)), flat.index_select(0, &idx))
}

/// A fixed seed per held-out segment: every validation masks the same tokens.
fn valid_seed(i: usize) -> u64 {
    0x5EED_0000_0000_0000 ^ i as u64
}

fn lengths(segments: &[Vec<u32>]) -> Vec<(usize, usize)> {
    segments.iter().map(|s| (s.len() + 2, s.len() + 2)).collect()
}

pub struct MaskedLm {
    cfg: PretrainConfig,
    device: Device,
    vs: VarStore,
    model: Bert,
    train: Vec<Vec<u32>>,
    valid: Vec<Vec<u32>>,
    batches: Vec<Vec<usize>>,
    /// The unigram baseline on the held-out masks, computed at the first validation.
    unigram: std::sync::OnceLock<Unigram>,
}

/// What a model that ignores the context gets on the held-out masks: it predicts every masked
/// token from the training tokens' frequencies (add-one smoothed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Unigram {
    /// NLL per masked token, nats.
    pub nll: f64,
    /// Accuracy of always predicting the most frequent training token.
    pub accuracy: f64,
}

impl MaskedLm {
    pub fn model(&self) -> &Bert {
        &self.model
    }

    fn make(&self, segments: &[Vec<u32>], idx: &[usize], seeds: &[u64], prob: f64) -> MlmBatch {
        let segs: Vec<&[u32]> = idx.iter().map(|&i| segments[i].as_slice()).collect();
        mlm_batch(&segs, seeds, self.cfg.model.vocab_size, prob, self.device)
    }

    /// The held-out masked targets, batch by batch, as validation draws them.
    fn valid_batches(&self) -> impl Iterator<Item = MlmBatch> + '_ {
        token_batches(&lengths(&self.valid), self.cfg.train.max_tokens).into_iter().map(|idx| {
            let seeds: Vec<u64> = idx.iter().map(|&i| valid_seed(i)).collect();
            self.make(&self.valid, &idx, &seeds, BERT_MASK_PROB)
        })
    }

    /// The unigram baseline on the held-out masks (see [`Unigram`]).
    pub fn unigram(&self) -> Unigram {
        *self.unigram.get_or_init(|| {
            let v = self.cfg.model.vocab_size as usize;
            let mut counts = vec![1.0f64; v];
            for &t in self.train.iter().flatten() {
                counts[t as usize] += 1.0;
            }
            let total: f64 = counts.iter().sum();
            let top = (0..v).max_by(|&a, &b| counts[a].total_cmp(&counts[b])).unwrap_or(0) as i64;
            let (mut nll, mut correct, mut n) = (0.0, 0.0, 0.0);
            for b in self.valid_batches() {
                let target = Vec::<i64>::try_from(b.target.reshape([-1]).to_device(Device::Cpu)).expect("i64 targets");
                for t in target.into_iter().filter(|&t| t != self.cfg.model.pad_id) {
                    nll -= (counts[t as usize] / total).ln();
                    correct += f64::from(u8::from(t == top));
                    n += 1.0;
                }
            }
            Unigram { nll: nll / f64::max(n, 1.0), accuracy: correct / f64::max(n, 1.0) }
        })
    }

    /// Held-out loss and NLL per masked token, and the accuracy of the predictions there.
    pub fn evaluate(&self) -> (f64, f64, f64) {
        tch::no_grad(|| {
            let (mut loss, mut nll, mut correct, mut tokens) = (0.0, 0.0, 0.0, 0i64);
            for b in self.valid_batches() {
                let stack = self.model.encode(&b.tokens, &b.segments, false).expect("validated lengths");
                let (logits, target) = masked_logits(&self.model, &stack.out, &b.target, self.cfg.model.pad_id);
                let s = label_smoothed_nll(&logits, &target, self.cfg.train.label_smoothing, self.cfg.model.pad_id);
                loss += s.loss.double_value(&[]);
                nll += s.nll.double_value(&[]);
                correct += logits.argmax(-1, false).eq_tensor(&target).sum(Kind::Float).double_value(&[]);
                tokens += b.masked;
            }
            let n = tokens.max(1) as f64;
            (loss / n, nll / n, correct / n)
        })
    }
}

impl Task for MaskedLm {
    type Batch = MlmBatch;

    fn batches(&self) -> &[Vec<usize>] {
        &self.batches
    }

    fn batch(&self, idx: &[usize], seed: u64) -> MlmBatch {
        let seeds: Vec<u64> =
            (0..idx.len()).map(|k| seed.wrapping_add((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))).collect();
        self.make(&self.train, idx, &seeds, self.cfg.mlm.mask_prob)
    }

    fn tokens(&self, batch: &MlmBatch) -> i64 {
        batch.masked
    }

    fn loss(&self, b: &MlmBatch, hidden: bool) -> Result<(LossSums, Option<HiddenNorms>), TrainError> {
        let pad = self.cfg.model.pad_id;
        let stack = self.model.encode(&b.tokens, &b.segments, true)?;
        let (logits, target) = masked_logits(&self.model, &stack.out, &b.target, pad);
        let s = label_smoothed_nll(&logits, &target, self.cfg.train.label_smoothing, pad);
        let h = hidden.then(|| HiddenNorms::from([("encoder".to_string(), layer_sq_norms(&stack, &b.tokens.ne(pad)))]));
        Ok((s, h))
    }

    fn validate(&self) -> Result<Validation, TrainError> {
        let (loss, nll, acc) = self.evaluate();
        let u = self.unigram();
        let extra = vec![
            ("mlm_accuracy".into(), Some(acc)),
            ("unigram_accuracy".into(), Some(u.accuracy)),
            ("unigram_nll".into(), Some(u.nll)),
        ];
        Ok(Validation { loss, nll, extra })
    }

    fn var_store(&self) -> &VarStore {
        &self.vs
    }

    fn var_store_mut(&mut self) -> &mut VarStore {
        &mut self.vs
    }
}

impl Trainer<MaskedLm> {
    /// Builds BERT (vocabulary from the data) and the optimizer; resuming, rank 0 restores them.
    pub fn pretrain(
        cfg: &PretrainConfig,
        train: Vec<Vec<u32>>,
        valid: Vec<Vec<u32>>,
        vocab_size: usize,
        run_dir: &Path,
        launch: impl Into<Launch>,
    ) -> Result<Trainer<MaskedLm>, TrainError> {
        if train.is_empty() || valid.is_empty() {
            return Err(TrainError::Config("pre-training needs non-empty train and valid splits".into()));
        }
        let longest = train.iter().chain(&valid).map(|s| s.len() + 2).max().unwrap_or(0);
        if longest as i64 > cfg.model.max_positions {
            return Err(TrainError::Config(format!(
                "model.max_positions is {} but the data has segments of {longest} tokens (with <s> and </s>)",
                cfg.model.max_positions
            )));
        }
        let launch = launch.into();
        let device = launch.device(resolve_device(cfg.train.device, cfg.train.precision)?);
        let resolved = PretrainConfig {
            model: BertConfig { vocab_size: vocab_size as i64, pad_id: 0, ..cfg.model.clone() },
            ..cfg.clone()
        };
        check_memory("BERT", &preln_model::memory::bert(&resolved.model, cfg.train.max_tokens as f64), device)?;
        let lock = launch.prepare_run_dir(run_dir)?;
        let vs = VarStore::new(device);
        let model = seeded(cfg.train.seed, || Bert::new(&vs.root(), &resolved.model))?;
        let batches = shuffled_token_batches(&lengths(&train), cfg.train.max_tokens, cfg.train.seed);
        // Admin's omegas come from the first batch in batching order, masked with fixed seeds (a
        // resumed run's checkpoint then replaces them).
        if resolved.model.placement.profiles_init() {
            let segs: Vec<&[u32]> = batches[0].iter().map(|&i| train[i].as_slice()).collect();
            let seeds: Vec<u64> = batches[0].iter().map(|&i| valid_seed(i)).collect();
            let first = mlm_batch(&segs, &seeds, resolved.model.vocab_size, resolved.mlm.mask_prob, device);
            model.profile_init(&first.tokens, &first.segments)?;
        }
        let loop_cfg = LoopConfig {
            optimizer: cfg.optimizer.clone(),
            schedule: cfg.schedule.clone(),
            train: cfg.train.clone(),
            toml: resolved.to_toml(),
        };
        let task = MaskedLm { cfg: resolved, device, vs, model, train, valid, batches, unigram: Default::default() };
        Trainer::with_task(task, loop_cfg, run_dir, launch, lock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse() {
        for (name, text) in PRESETS {
            PretrainConfig::resolve(name, text, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let e = PretrainConfig::resolve("x", "[model]\nlayerz = 3\n", &[]).unwrap_err().to_string();
        assert!(e.contains("layerz"), "{e}");
        let e = PretrainConfig::resolve("x", "[mlm]\nmask_prob = 1.0\n", &[]).unwrap_err().to_string();
        assert!(e.contains("mlm.mask_prob"), "{e}");
        let c = PretrainConfig::resolve("x", "", &["mlm.mask_prob=0.4".into()]).unwrap();
        assert_eq!(c.mlm.mask_prob, 0.4);
    }
}
