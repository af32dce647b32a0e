//! `preln translate`: a run folder + stdin -> translations on stdout, in input order.

use std::io::{BufRead, Write};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use preln_eval::translate_lines;
use preln_train::translation::TrainedModel;

use crate::cli::TranslateArgs;

pub fn run(args: TranslateArgs) -> Result<()> {
    if args.beam < 1 || args.search.batch_size < 1 {
        bail!("--beam and --batch-size must be at least 1");
    }
    let search = args.search.config(args.beam, args.no_cache)?;
    let device = super::device(args.device)?;
    let TrainedModel { model, bpe, .. } = TrainedModel::load(&args.run.checkpoint, &args.run.which, device)?;

    let lines: Vec<String> =
        std::io::stdin().lock().lines().collect::<std::io::Result<_>>().context("reading stdin")?;
    let to_translate = lines.iter().filter(|l| !l.trim().is_empty()).count();
    let bar = ProgressBar::new(to_translate as u64);
    bar.set_style(
        ProgressStyle::with_template("translating [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")?.progress_chars("=> "),
    );
    let start = std::time::Instant::now();
    let out = translate_lines(&model, &bpe, &lines, &search, args.search.batch_size, device, |n| bar.inc(n as u64))
        .context("stdin")?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let mut stdout = std::io::stdout().lock();
    for line in &out {
        writeln!(stdout, "{line}")?;
    }
    eprintln!(
        "translated {} sentences ({} empty) in {secs:.1} s: {:.1} sentences/s, beam {}",
        lines.len(),
        lines.len() - to_translate,
        to_translate as f64 / secs.max(1e-9),
        args.beam
    );
    Ok(())
}
