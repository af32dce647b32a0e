//! `preln analyze init|depth`: the studies of preln-analysis on built-in batches.

use anyhow::{anyhow, bail, Context, Result};
use preln_analysis::{depth_study, init_study, report};
use preln_data::{token_batches, Batch, Specials, SyntheticTask};
use preln_model::{NormPlacement, Seq2SeqConfig};
use tch::Device;

use crate::cli::{DepthArgs, InitArgs, ModelArgs, PlacementArg, ProbeArgs};

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

fn placements(args: &ModelArgs) -> Vec<NormPlacement> {
    args.placements
        .iter()
        .map(|p| match p {
            PlacementArg::Post => NormPlacement::Post,
            PlacementArg::Pre => NormPlacement::Pre,
        })
        .collect()
}

/// Sentences of the built-in task until `tokens` target tokens are reached, cut into
/// length-sorted batches of at most `tokens` padded tokens (less padding, same gradient).
fn builtin_batch(cfg: &Seq2SeqConfig, args: &ProbeArgs) -> Result<(Vec<Batch>, String)> {
    if args.tokens < 1 {
        bail!("--tokens must be at least 1, got {}", args.tokens);
    }
    let task = SyntheticTask::new(cfg.vocab_size, 10, 40, args.batch_seed);
    let mut pairs = Vec::new();
    let mut tokens = 0;
    for pair in task.pair_iter(args.batch_seed) {
        tokens += pair.1.len() as i64 + 1;
        pairs.push(pair);
        if tokens >= args.tokens {
            break;
        }
    }
    let lengths: Vec<(usize, usize)> = pairs.iter().map(|(s, t)| (s.len() + 1, t.len() + 1)).collect();
    let batches = token_batches(&lengths, args.tokens as usize)
        .into_iter()
        .map(|idx| {
            let chunk: Vec<_> = idx.iter().map(|&i| pairs[i].clone()).collect();
            Batch::from_pairs(&chunk, Specials::DEFAULT, Device::Cpu)
        })
        .collect();
    let what = format!(
        "built-in synthetic task (batch seed {}): {} sentence pairs of 10-40 Zipf-distributed words",
        args.batch_seed,
        pairs.len()
    );
    Ok((batches, what))
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

pub fn init(args: InitArgs) -> Result<()> {
    let cfg = model_config(&args.model)?;
    let device = super::device(args.probe.device)?;
    let (batches, data) = builtin_batch(&cfg, &args.probe)?;
    let study = init_study::InitStudy {
        model: cfg,
        placements: placements(&args.model),
        seeds: seeds(&args.probe)?,
        label_smoothing: args.probe.label_smoothing,
        data,
    };
    let start = std::time::Instant::now();
    let report = init_study::run(&study, &batches, device, |line| eprintln!("{line}"))?;
    let files = report::write_init(&report, &args.probe.out).context("writing the report")?;
    for r in &report.results {
        eprintln!(
            "{}: W2 grad norm last/first layer: encoder {:.2}, decoder {:.2}",
            r.placement, r.encoder_w2_last_over_first, r.decoder_w2_last_over_first
        );
    }
    eprintln!("done in {:.0} s on {device:?}", start.elapsed().as_secs_f64());
    list(&files);
    Ok(())
}

pub fn depth(args: DepthArgs) -> Result<()> {
    let cfg = model_config(&args.model)?;
    if args.depths.len() < 2 || args.depths.iter().any(|&d| d < 1) {
        bail!("--depths needs at least two depths of 1 or more, got {:?}", args.depths);
    }
    let device = super::device(args.probe.device)?;
    let (batches, data) = builtin_batch(&cfg, &args.probe)?;
    let study = depth_study::DepthStudy {
        model: cfg,
        placements: placements(&args.model),
        depths: args.depths.clone(),
        seeds: seeds(&args.probe)?,
        label_smoothing: args.probe.label_smoothing,
        data,
    };
    let start = std::time::Instant::now();
    let report = depth_study::run(&study, &batches, device, |line| eprintln!("{line}"))?;
    let files = report::write_depth(&report, &args.probe.out).context("writing the report")?;
    for f in &report.fits {
        eprintln!(
            "{} {}: slope of ln(norm) on ln(L) = {:.3} +- {:.3} (Theorem 1: {})",
            f.placement, f.stack, f.fit.slope, f.fit.slope_stderr, f.predicted_slope
        );
    }
    eprintln!("done in {:.0} s on {device:?}", start.elapsed().as_secs_f64());
    list(&files);
    Ok(())
}
