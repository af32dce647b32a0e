//! `preln analyze init|depth`: the studies of preln-analysis on built-in batches.

use anyhow::{anyhow, bail, Context, Result};
use preln_analysis::studies::{self, ProbeSpec};
use preln_analysis::{depth_study, init_study, report};
use preln_model::{NormPlacement, Seq2SeqConfig};

use crate::cli::{DepthArgs, InitArgs, ModelArgs, ProbeArgs};

pub fn model_config(args: &ModelArgs) -> Result<Seq2SeqConfig> {
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
    cfg.norm = args.norm;
    cfg.validate()?;
    Ok(cfg.without_dropout())
}

fn list(files: &[std::path::PathBuf]) {
    for f in files {
        println!("{}", f.display());
    }
}

/// The library's probe spec of the command-line flags.
pub fn probe_spec(args: &ProbeArgs) -> Result<ProbeSpec> {
    Ok(ProbeSpec {
        data: args.data.clone(),
        split: args.split.clone(),
        langs: args.langs.clone(),
        seeds: args.seeds,
        tokens: args.tokens,
        batch_seed: args.batch_seed,
        label_smoothing: args.label_smoothing,
        device: super::device(args.device)?,
        out: args.out.clone(),
    })
}

pub fn init(args: InitArgs) -> Result<()> {
    let probe = probe_spec(&args.probe)?;
    let start = std::time::Instant::now();
    let (report, files) =
        studies::init(&model_config(&args.model)?, &args.model.placements, &probe, |line| eprintln!("{line}"))?;
    for r in &report.results {
        eprintln!(
            "{}: W2 grad norm last/first layer: encoder {}, decoder {}",
            r.placement,
            init_study::ratio_text(r.encoder_w2_last_over_first),
            init_study::ratio_text(r.decoder_w2_last_over_first)
        );
    }
    eprintln!("done in {:.0} s on {:?}", start.elapsed().as_secs_f64(), probe.device);
    list(&files);
    Ok(())
}

pub fn depth(args: DepthArgs) -> Result<()> {
    let probe = probe_spec(&args.probe)?;
    let start = std::time::Instant::now();
    let (report, files) =
        studies::depth(&model_config(&args.model)?, &args.model.placements, &args.depths, &probe, |line| {
            eprintln!("{line}")
        })?;
    for f in &report.fits {
        eprintln!(
            "{} {}: slope of ln(norm) on ln(L) = {:.3} +- {:.3} (Theorem 1: {})",
            f.placement,
            f.stack,
            f.fit.slope,
            f.fit.slope_stderr,
            f.predicted_slope.map_or_else(|| "no prediction".into(), |v| v.to_string())
        );
    }
    eprintln!("done in {:.0} s on {:?}", start.elapsed().as_secs_f64(), probe.device);
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
