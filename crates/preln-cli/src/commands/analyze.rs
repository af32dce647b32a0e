//! `preln analyze init|depth`: the studies of preln-analysis on built-in batches.

use anyhow::{anyhow, bail, Context, Result};
use preln_analysis::{depth_study, init_study, report};
use preln_data::synthetic::SplitMix64;
use preln_data::text::{lang_file, read_parallel};
use preln_data::{token_batches, Batch, Bpe, Dataset, Specials, SyntheticTask};
use preln_model::{NormPlacement, Seq2SeqConfig};
use tch::Device;

use crate::cli::{DepthArgs, InitArgs, ModelArgs, ProbeArgs};

fn model_config(args: &ModelArgs) -> Result<Seq2SeqConfig> {
    let mut cfg = Seq2SeqConfig::preset(&args.preset, NormPlacement::Pre).ok_or_else(|| {
        anyhow!("--preset: unknown preset `{}` (known: {})", args.preset, Seq2SeqConfig::PRESETS.join(", "))
    })?;
    if let Some(l) = args.layers {
        cfg.encoder_layers = l;
        cfg.decoder_layers = l;
    }
    cfg.d_model = args.d_model.unwrap_or(cfg.d_model);
    cfg.ffn_dim = args.ffn_dim.unwrap_or(cfg.ffn_dim);
    cfg.heads = args.heads.unwrap_or(cfg.heads);
    cfg.vocab_size = args.vocab.unwrap_or(cfg.vocab_size);
    cfg.validate()?;
    Ok(cfg.without_dropout())
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
fn probe_batches(cfg: &Seq2SeqConfig, args: &ProbeArgs) -> Result<(Vec<Batch>, String, i64)> {
    if args.tokens < 1 {
        bail!("--tokens must be at least 1, got {}", args.tokens);
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
            bail!(
                "--data {}: not a prepared folder (no manifest.json); for a file prefix give --langs SRC,TGT",
                data.display()
            );
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

fn seeds(args: &ProbeArgs) -> Result<Vec<u64>> {
    if args.seeds < 1 {
        bail!("--seeds must be at least 1");
    }
    Ok((1..=args.seeds).collect())
}

fn list(files: &[std::path::PathBuf]) {
    for f in files {
        println!("{}", f.display());
    }
}

/// What both studies need: the model, the device, the batches and their description.
struct Setup {
    cfg: Seq2SeqConfig,
    device: Device,
    batches: Vec<Batch>,
    data: String,
    seeds: Vec<u64>,
    placements: Vec<NormPlacement>,
}

fn setup(model: &ModelArgs, probe: &ProbeArgs) -> Result<Setup> {
    let mut cfg = model_config(model)?;
    let device = super::device(probe.device)?;
    let (batches, data, vocab) = probe_batches(&cfg, probe)?;
    cfg.vocab_size = vocab;
    Ok(Setup { cfg, device, batches, data, seeds: seeds(probe)?, placements: model.placements.clone() })
}

pub fn init(args: InitArgs) -> Result<()> {
    let s = setup(&args.model, &args.probe)?;
    let study = init_study::InitStudy {
        model: s.cfg,
        placements: s.placements,
        seeds: s.seeds,
        label_smoothing: args.probe.label_smoothing,
        data: s.data,
    };
    let start = std::time::Instant::now();
    let report = init_study::run(&study, &s.batches, s.device, |line| eprintln!("{line}"))?;
    let files = report::write_init(&report, &args.probe.out).context("writing the report")?;
    for r in &report.results {
        eprintln!(
            "{}: W2 grad norm last/first layer: encoder {:.2}, decoder {:.2}",
            r.placement, r.encoder_w2_last_over_first, r.decoder_w2_last_over_first
        );
    }
    eprintln!("done in {:.0} s on {:?}", start.elapsed().as_secs_f64(), s.device);
    list(&files);
    Ok(())
}

pub fn depth(args: DepthArgs) -> Result<()> {
    if args.depths.len() < 2 || args.depths.iter().any(|&d| d < 1) {
        bail!("--depths needs at least two depths of 1 or more, got {:?}", args.depths);
    }
    let s = setup(&args.model, &args.probe)?;
    let study = depth_study::DepthStudy {
        model: s.cfg,
        placements: s.placements,
        depths: args.depths.clone(),
        seeds: s.seeds,
        label_smoothing: args.probe.label_smoothing,
        data: s.data,
    };
    let start = std::time::Instant::now();
    let report = depth_study::run(&study, &s.batches, s.device, |line| eprintln!("{line}"))?;
    let files = report::write_depth(&report, &args.probe.out).context("writing the report")?;
    for f in &report.fits {
        eprintln!(
            "{} {}: slope of ln(norm) on ln(L) = {:.3} +- {:.3} (Theorem 1: {})",
            f.placement, f.stack, f.fit.slope, f.fit.slope_stderr, f.predicted_slope
        );
    }
    eprintln!("done in {:.0} s on {:?}", start.elapsed().as_secs_f64(), s.device);
    list(&files);
    Ok(())
}

pub fn replot(out: &std::path::Path) -> Result<()> {
    let read = |name: &str| -> Result<Option<String>> {
        let p = out.join(name);
        if !p.exists() {
            return Ok(None);
        }
        Ok(Some(std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?))
    };
    let mut files = Vec::new();
    if let Some(text) = read("init.json")? {
        let report: init_study::InitReport = serde_json::from_str(&text).context("init.json")?;
        files.extend(report::write_init(&report, out)?);
    }
    if let Some(text) = read("depth.json")? {
        let report: depth_study::DepthReport = serde_json::from_str(&text).context("depth.json")?;
        files.extend(report::write_depth(&report, out)?);
    }
    if files.is_empty() {
        bail!("{}: no init.json or depth.json to replot", out.display());
    }
    list(&files);
    Ok(())
}
