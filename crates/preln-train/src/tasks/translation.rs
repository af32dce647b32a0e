//! The translation task: an encoder-decoder on sentence pairs, label-smoothed loss, validation
//! loss and (optionally) corpus BLEU of beam-search translations.

use std::path::Path;

use preln_data::{token_batches, Batch, Bpe, Pairs, Specials};
use preln_eval::{beam_search, corpus_bleu, BleuOptions, SearchConfig};
use preln_model::diagnostics::sq_norms_over_d;
use preln_model::init::seeded;
use preln_model::stack::StackOut;
use preln_model::{label_smoothed_nll, LossSums, Seq2Seq, Seq2SeqConfig};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::config::TrainConfig;
use crate::rundir::RunInfo;

use crate::device::{check_memory, resolve_device};
use crate::task::{HiddenNorms, Task, Validation};
use crate::trainer::Launch;
use crate::trainer::{LoopConfig, Trainer};
use crate::TrainError;

/// The model config a data set implies: its vocabulary, pad id 0.
pub fn model_config(cfg: &TrainConfig, vocab_size: usize) -> Seq2SeqConfig {
    Seq2SeqConfig { vocab_size: vocab_size as i64, pad_id: Specials::DEFAULT.pad, ..cfg.model.clone() }
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

/// `E ||x||^2 / d` over real tokens after each layer of a stack.
pub fn layer_sq_norms(stack: &StackOut, keep: &Tensor) -> Vec<f64> {
    sq_norms_over_d(&stack.layer_sums.iter().collect::<Vec<_>>(), keep)
}

pub struct Translation {
    cfg: TrainConfig,
    device: Device,
    vs: VarStore,
    model: Seq2Seq,
    train: Pairs,
    valid: Pairs,
    batches: Vec<Vec<usize>>,
    /// Turns ids back into text for validation BLEU.
    tokenizer: Option<Bpe>,
}

impl Translation {
    pub fn model(&self) -> &Seq2Seq {
        &self.model
    }

    /// Validation loss and NLL (nats per target token) over `pairs`, without dropout or autograd.
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

    /// Corpus BLEU of the model's translations of `pairs` (None when not configured).
    pub fn bleu(&self, pairs: &Pairs) -> Result<Option<f64>, TrainError> {
        let (Some(bpe), beam) = (&self.tokenizer, self.cfg.train.valid_bleu_beam) else { return Ok(None) };
        if beam == 0 || pairs.is_empty() {
            return Ok(None);
        }
        let search = SearchConfig { beam, lenpen: self.cfg.train.valid_bleu_lenpen, ..Default::default() };
        let text = |ids: &[i64]| -> Result<String, TrainError> {
            let ids: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
            Ok(bpe.decode(&ids)?)
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
        let b = corpus_bleu(&hyps, &[refs], BleuOptions::default())?;
        Ok(Some(b.score))
    }
}

impl Task for Translation {
    type Batch = Batch;

    fn batches(&self) -> &[Vec<usize>] {
        &self.batches
    }

    fn batch(&self, idx: &[usize], _seed: u64) -> Batch {
        make_batch(&self.train, idx, self.device)
    }

    fn tokens(&self, batch: &Batch) -> i64 {
        batch.target_tokens
    }

    fn loss(&self, b: &Batch, hidden: bool) -> Result<(LossSums, Option<HiddenNorms>), TrainError> {
        let pad = self.cfg.model.pad_id;
        let (enc, dec) = self.model.forward(&b.src, &b.prev, true);
        // The loss in fp32 whatever the forward's precision.
        let s = label_smoothed_nll(&dec.logits, &b.target, self.cfg.train.label_smoothing, pad);
        let h = hidden.then(|| {
            HiddenNorms::from([
                ("encoder".to_string(), layer_sq_norms(&enc.stack, &b.src.ne(pad))),
                ("decoder".to_string(), layer_sq_norms(&dec.stack, &b.prev.ne(pad))),
            ])
        });
        Ok((s, h))
    }

    fn validate(&self) -> Result<Validation, TrainError> {
        let (loss, nll) = self.evaluate(&self.valid);
        let bleu = self.bleu(&self.valid)?;
        Ok(Validation { loss, nll, extra: vec![("bleu".into(), bleu)] })
    }

    fn var_store(&self) -> &VarStore {
        &self.vs
    }

    fn var_store_mut(&mut self) -> &mut VarStore {
        &mut self.vs
    }
}

impl Trainer<Translation> {
    /// Builds the translation model and optimizer; resuming, rank 0 restores them from the last
    /// checkpoint.
    pub fn new(
        cfg: &TrainConfig,
        train: Pairs,
        valid: Pairs,
        vocab_size: usize,
        run_dir: &Path,
        launch: impl Into<Launch>,
    ) -> Result<Trainer<Translation>, TrainError> {
        cfg.validate()?;
        if train.is_empty() {
            return Err(TrainError::Config("the training split is empty".into()));
        }
        if valid.is_empty() {
            return Err(TrainError::Config(format!(
                "the validation split `{}` is empty: validation loss and the best checkpoint would mean nothing \
                 (prepare the data with --validpref, or set train.valid_split)",
                cfg.train.valid_split
            )));
        }
        let launch = launch.into();
        let device = launch.device(resolve_device(cfg.train.device, cfg.train.precision)?);
        let mcfg = model_config(cfg, vocab_size);
        let need = preln_model::memory::seq2seq(&mcfg, cfg.train.max_tokens as f64);
        check_memory("the encoder-decoder", &need, device)?;
        let lock = launch.prepare_run_dir(run_dir)?;
        let vs = VarStore::new(device);
        let model = seeded(cfg.train.seed, || Seq2Seq::new(&vs.root(), &mcfg))?;
        let resolved = TrainConfig { model: mcfg, ..cfg.clone() };
        let batches = token_batches(&lengths(&train), cfg.train.max_tokens);
        // Admin's omegas come from the first batch in batching order (a resumed run's checkpoint
        // then replaces them).
        if resolved.model.placement.profiles_init() {
            let first = make_batch(&train, &batches[0], device);
            model.profile_init(&first.src, &first.prev);
        }
        let loop_cfg = LoopConfig {
            optimizer: cfg.optimizer.clone(),
            schedule: cfg.schedule.clone(),
            train: cfg.train.clone(),
            toml: resolved.to_toml(),
        };
        let task = Translation { cfg: resolved, device, vs, model, train, valid, batches, tokenizer: None };
        Trainer::with_task(task, loop_cfg, run_dir, launch, lock)
    }

    /// Enables validation BLEU (`train.valid_bleu_beam > 0`): hypotheses and references are
    /// detokenized with `tokenizer` and scored as sacreBLEU would.
    pub fn with_tokenizer(mut self, tokenizer: Bpe) -> Self {
        self.task_mut().tokenizer = Some(tokenizer);
        self
    }
}

/// A trained translation model ready to decode: the run's model, its tokenizer, and where they
/// came from.
pub struct TrainedModel {
    pub model: Seq2Seq,
    pub bpe: Bpe,
    pub config_path: std::path::PathBuf,
    pub checkpoint: std::path::PathBuf,
    vs: VarStore,
}

impl TrainedModel {
    /// Loads `RUN/config.toml`, `RUN/checkpoints/{which}.safetensors` and the run's tokenizer (its
    /// own copy, checked against the checksum recorded at the start, else the data folder's).
    pub fn load(run: &Path, which: &str, device: Device) -> Result<TrainedModel, TrainError> {
        let cfg_path = run.join("config.toml");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| {
            TrainError::Config(format!("{}: not a run folder of `preln train` ({e})", cfg_path.display()))
        })?;
        let cfg = crate::config::resolve(&cfg_path.display().to_string(), &text, &[])?;
        let ckpt = run.join("checkpoints").join(format!("{which}.safetensors"));
        if !ckpt.exists() {
            return Err(TrainError::Config(format!("{}: no such checkpoint (--which best|last)", ckpt.display())));
        }
        let bpe = run_tokenizer(run)?;
        let mut vs = VarStore::new(device);
        let model = Seq2Seq::new(&vs.root(), &cfg.model.clone().without_dropout())?;
        crate::state::load_model(&ckpt, &mut vs)?;
        Ok(TrainedModel { model, bpe, config_path: cfg_path, checkpoint: ckpt, vs })
    }

    /// The model's variables by checkpoint key.
    pub fn variables(&self) -> std::collections::HashMap<String, tch::Tensor> {
        self.vs.variables()
    }
}

/// The run's tokenizer: its own copy, else the data folder it was trained on.
fn run_tokenizer(run: &Path) -> Result<Bpe, TrainError> {
    let own = run.join(crate::rundir::TOKENIZER);
    if own.exists() {
        if let Ok(info) = RunInfo::read(run) {
            info.check_tokenizer(run)?;
        }
        return Ok(Bpe::load(&own)?);
    }
    Ok(Bpe::load(&RunInfo::read(run)?.data.join(crate::rundir::TOKENIZER))?)
}
