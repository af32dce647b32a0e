//! `preln translate`: a run folder + stdin -> translations on stdout, in input order.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use preln_data::{Batch, Bpe, Specials};
use preln_eval::beam_search;
use preln_model::Seq2Seq;
use preln_train::config::resolve;
use preln_train::rundir::RunInfo;
use preln_train::state;
use tch::nn::VarStore;

use crate::cli::TranslateArgs;

/// The run's tokenizer: its own copy, else the data folder it was trained on.
fn tokenizer(run: &Path) -> Result<Bpe> {
    let own = run.join("tokenizer.json");
    if own.exists() {
        if let Ok(info) = RunInfo::read(run) {
            info.check_tokenizer(run)?;
        }
        return Ok(Bpe::load(&own)?);
    }
    Ok(Bpe::load(&RunInfo::read(run)?.data.join("tokenizer.json"))?)
}

/// A trained model ready to decode.
pub struct LoadedRun {
    pub model: Seq2Seq,
    pub bpe: Bpe,
    pub config_path: std::path::PathBuf,
    pub checkpoint: std::path::PathBuf,
    _vs: VarStore,
}

/// Loads `RUN/config.toml`, `RUN/checkpoints/{which}.safetensors` and the run's tokenizer.
pub fn load_run(run: &Path, which: &str, device: tch::Device) -> Result<LoadedRun> {
    let cfg_path = run.join("config.toml");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("{}: not a run folder of `preln train`", cfg_path.display()))?;
    let cfg = resolve(&cfg_path.display().to_string(), &text, &[])?;
    let ckpt = run.join("checkpoints").join(format!("{which}.safetensors"));
    if !ckpt.exists() {
        bail!("{}: no such checkpoint (--which best|last)", ckpt.display());
    }
    let bpe = tokenizer(run)?;
    let mut vs = VarStore::new(device);
    let model = Seq2Seq::new(&vs.root(), &cfg.model.clone().without_dropout())?;
    state::load_model(&ckpt, &mut vs)?;
    Ok(LoadedRun { model, bpe, config_path: cfg_path, checkpoint: ckpt, _vs: vs })
}

pub fn run(args: TranslateArgs) -> Result<()> {
    if args.beam < 1 || args.search.batch_size < 1 {
        bail!("--beam and --batch-size must be at least 1");
    }
    args.search.config(args.beam, args.no_cache)?;
    let device = super::device(args.device)?;
    let LoadedRun { model, bpe, .. } = load_run(&args.run.checkpoint, &args.run.which, device)?;

    let lines: Vec<String> =
        std::io::stdin().lock().lines().collect::<std::io::Result<_>>().context("reading stdin")?;
    let mut encoded: Vec<(usize, Vec<i64>)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.trim().is_empty() {
            let ids = bpe.encode(line).with_context(|| format!("stdin line {}", i + 1))?;
            encoded.push((i, ids.into_iter().map(i64::from).collect()));
        }
    }
    encoded.sort_by_key(|(i, ids)| (ids.len(), *i));
    let search = args.search.config(args.beam, args.no_cache)?;
    let bar = ProgressBar::new(encoded.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("translating [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")?.progress_chars("=> "),
    );
    let mut out: Vec<String> = vec![String::new(); lines.len()];
    let start = std::time::Instant::now();
    for chunk in encoded.chunks(args.search.batch_size) {
        let pairs: Vec<(Vec<i64>, Vec<i64>)> = chunk.iter().map(|(_, ids)| (ids.clone(), Vec::new())).collect();
        let batch = Batch::from_pairs(&pairs, Specials::DEFAULT, device);
        for ((i, _), hyp) in chunk.iter().zip(beam_search(&model, &batch.src, &search)) {
            let ids: Vec<u32> = hyp.tokens.iter().map(|&t| t as u32).collect();
            out[*i] = bpe.decode(&ids)?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let mut stdout = std::io::stdout().lock();
    for line in &out {
        writeln!(stdout, "{line}")?;
    }
    eprintln!(
        "translated {} sentences ({} empty) in {secs:.1} s: {:.1} sentences/s, beam {}",
        lines.len(),
        lines.len() - encoded.len(),
        encoded.len() as f64 / secs.max(1e-9),
        args.beam
    );
    Ok(())
}
