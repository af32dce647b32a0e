//! The studies of `preln analyze` as a library: which sentence pairs the gradients are taken
//! on (a built-in synthetic task, a prepared folder, or parallel text), then the Figure 3 study
//! and the depth scan of Theorem 1 with their reports written.

use std::path::PathBuf;

use preln_data::synthetic::SplitMix64;
use preln_data::text::{lang_file, read_parallel};
use preln_data::{token_batches, Batch, Bpe, Dataset, Specials, SyntheticTask};
use preln_model::{NormPlacement, Seq2SeqConfig};
use tch::Device;

use crate::depth_study::{self, DepthReport, DepthStudy};
use crate::init_study::{self, InitReport, InitStudy};
use crate::report::{self, ReportError};

#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Data(#[from] preln_data::DataError),
    #[error(transparent)]
    Model(#[from] preln_model::ModelError),
    #[error("writing the report: {0}")]
    Report(#[from] ReportError),
}

/// What the gradients are taken on, and how often.
#[derive(Clone, Debug)]
pub struct ProbeSpec {
    /// A folder made by `preln prepare`, or a prefix of parallel files (with `langs`); `None`
    /// for the built-in synthetic task.
    pub data: Option<PathBuf>,
    pub split: String,
    pub langs: Vec<String>,
    /// Seeds 1..=seeds of the model's initialization.
    pub seeds: u64,
    /// Target tokens of the batch.
    pub tokens: i64,
    pub batch_seed: u64,
    pub label_smoothing: f64,
    pub device: Device,
    pub out: PathBuf,
}

impl ProbeSpec {
    fn seeds(&self) -> Result<Vec<u64>, StudyError> {
        if self.seeds < 1 {
            return Err(StudyError::Invalid("--seeds must be at least 1".into()));
        }
        Ok((1..=self.seeds).collect())
    }
}

/// Pairs until `tokens` target tokens are reached, cut into length-sorted batches of at most
/// `tokens` padded tokens (less padding, the same gradient as one batch).
fn batches_of(pairs: impl Iterator<Item = (Vec<i64>, Vec<i64>)>, tokens: i64) -> (Vec<Batch>, usize) {
    let mut chosen = Vec::new();
    let mut total = 0;
    for pair in pairs {
        total += pair.1.len() as i64 + 1;
        chosen.push(pair);
        if total >= tokens {
            break;
        }
    }
    let lengths: Vec<(usize, usize)> = chosen.iter().map(|(s, t)| (s.len() + 1, t.len() + 1)).collect();
    let batches = token_batches(&lengths, tokens as usize)
        .into_iter()
        .map(|idx| {
            let chunk: Vec<_> = idx.iter().map(|&i| chosen[i].clone()).collect();
            Batch::from_pairs(&chunk, Specials::DEFAULT, Device::Cpu)
        })
        .collect();
    (batches, chosen.len())
}

/// The batches the gradients are taken on, a description of them, and the vocabulary size.
pub fn probe_batches(cfg: &Seq2SeqConfig, args: &ProbeSpec) -> Result<(Vec<Batch>, String, i64), StudyError> {
    if args.tokens < 1 {
        return Err(StudyError::Invalid(format!("--tokens must be at least 1, got {}", args.tokens)));
    }
    let Some(data) = &args.data else {
        let task = SyntheticTask::new(cfg.vocab_size, 10, 40, args.batch_seed);
        let (batches, n) = batches_of(task.pair_iter(args.batch_seed), args.tokens);
        let what = format!(
            "built-in synthetic task (batch seed {}): {n} sentence pairs of 10-40 Zipf-distributed words",
            args.batch_seed
        );
        return Ok((batches, what, cfg.vocab_size));
    };
    let (pairs, vocab, what) = if data.join("manifest.json").exists() {
        let ds = Dataset::open(data)?;
        let pairs = ds.split(&args.split)?;
        let vocab = ds.manifest.vocab_size as i64;
        (pairs, vocab, format!("{} split `{}`", data.display(), args.split))
    } else {
        let [src, tgt] = args.langs.as_slice() else {
            return Err(StudyError::Invalid(format!(
                "--data {}: not a prepared folder (no manifest.json); for a file prefix give --langs SRC,TGT",
                data.display()
            )));
        };
        let text = read_parallel(&lang_file(data, src), &lang_file(data, tgt))?;
        let bpe = Bpe::train(text.pairs.iter().flat_map(|(a, b)| [a.as_str(), b.as_str()]), cfg.vocab_size as usize)?;
        let mut pairs = Vec::with_capacity(text.pairs.len());
        for (a, b) in &text.pairs {
            let wide = |v: Vec<u32>| v.into_iter().map(i64::from).collect::<Vec<_>>();
            pairs.push((wide(bpe.encode(a)?), wide(bpe.encode(b)?)));
        }
        (
            pairs,
            bpe.vocab_size() as i64,
            format!("{}.{{{src},{tgt}}} with a BPE of {} learned on them", data.display(), bpe.vocab_size()),
        )
    };
    // A seeded draw of sentences, so the batch is not just the first lines of the file.
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    let mut rng = SplitMix64::new(args.batch_seed);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.range(0, i));
    }
    let (batches, n) = batches_of(order.into_iter().map(|i| pairs[i].clone()), args.tokens);
    Ok((batches, format!("{what}: {n} sentence pairs drawn with seed {}", args.batch_seed), vocab))
}

/// The model with the data's vocabulary, the probe's batches and their description.
fn with_batches(model: &Seq2SeqConfig, probe: &ProbeSpec) -> Result<(Seq2SeqConfig, Vec<Batch>, String), StudyError> {
    let (batches, data, vocab) = probe_batches(model, probe)?;
    Ok((Seq2SeqConfig { vocab_size: vocab, ..model.clone() }, batches, data))
}

/// Figure 3: gradient and hidden-state norms of every placement at initialization; writes the
/// report into `probe.out` and returns it with the files written.
pub fn init(
    model: &Seq2SeqConfig,
    placements: &[NormPlacement],
    probe: &ProbeSpec,
    progress: impl FnMut(&str),
) -> Result<(InitReport, Vec<PathBuf>), StudyError> {
    let (cfg, batches, data) = with_batches(model, probe)?;
    let study = InitStudy {
        model: cfg,
        placements: placements.to_vec(),
        seeds: probe.seeds()?,
        label_smoothing: probe.label_smoothing,
        data,
    };
    let report = init_study::run(&study, &batches, probe.device, progress)?;
    let files = report::write_init(&report, &probe.out)?;
    Ok((report, files))
}

/// Theorem 1's depth scan: the last FFN's gradient norm at each depth, with the fitted slopes.
pub fn depth(
    model: &Seq2SeqConfig,
    placements: &[NormPlacement],
    depths: &[i64],
    probe: &ProbeSpec,
    progress: impl FnMut(&str),
) -> Result<(DepthReport, Vec<PathBuf>), StudyError> {
    if depths.len() < 2 || depths.iter().any(|&d| d < 1) {
        return Err(StudyError::Invalid(format!("--depths needs at least two depths of 1 or more, got {depths:?}")));
    }
    let (cfg, batches, data) = with_batches(model, probe)?;
    let study = DepthStudy {
        model: cfg,
        placements: placements.to_vec(),
        depths: depths.to_vec(),
        seeds: probe.seeds()?,
        label_smoothing: probe.label_smoothing,
        data,
    };
    let report = depth_study::run(&study, &batches, probe.device, progress)?;
    let files = report::write_depth(&report, &probe.out)?;
    Ok((report, files))
}
