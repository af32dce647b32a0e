//! `preln train`: config -> data -> trainer -> summary.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use preln_data::mlm::MlmDataset;
use preln_data::prepare::fingerprint;
use preln_data::Dataset;
use preln_train::config::{config_text, resolve, PRESETS};
use preln_train::mlm::{PretrainConfig, PRESETS as MLM_PRESETS};
use preln_train::rundir::RunInfo;
use preln_train::trainer::{RunOptions, Trainer};

use super::progress::Progress;
use crate::cli::TrainArgs;

/// The config text of a run: the run's own config.toml with --resume, else --config (a preset
/// of `presets` or a file).
fn config_source(args: &TrainArgs, presets: &[(&str, &str)]) -> Result<(String, String)> {
    match (&args.config, args.resume) {
        (given, true) => {
            if given.is_some() {
                eprintln!(
                    "--resume: using the run's own config.toml; --config is ignored (use --set to change values)"
                );
            }
            let path = args.out.join("config.toml");
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("--resume: reading {}", path.display()))?;
            Ok((path.display().to_string(), text))
        }
        (Some(c), false) => match presets.iter().find(|(n, _)| n == c) {
            Some((_, text)) => Ok((format!("preset `{c}`"), text.to_string())),
            None => Ok(config_text(c)?),
        },
        (None, false) => {
            let names: Vec<&str> = presets.iter().map(|p| p.0).collect();
            bail!("--config is required (a TOML file or a preset: {})", names.join(", "))
        }
    }
}

/// --data, or with --resume the data folder the run remembered.
fn data_source(args: &TrainArgs, what: &str) -> Result<PathBuf> {
    match (&args.data, args.resume) {
        (Some(d), _) => Ok(d.clone()),
        (None, true) => Ok(RunInfo::read(&args.out)?.data),
        (None, false) => bail!("--data is required: a folder made by `preln {what}`"),
    }
}

/// On --resume: the data must be the data the run trained on, and its tokenizer unchanged.
fn check_resume_data(args: &TrainArgs, data_dir: &Path, data_sha256: &str) -> Result<()> {
    if args.resume {
        let info = RunInfo::read(&args.out)?;
        info.check_data(&args.out, data_dir, data_sha256)?;
        info.check_tokenizer(&args.out)?;
    }
    Ok(())
}

/// Records the data folder and its fingerprint (for --resume) and copies its tokenizer into a
/// new run; a resumed run keeps its record, pointed at the data folder given now.
fn remember(args: &TrainArgs, data_dir: &Path, data_sha256: &str) -> Result<()> {
    if args.resume {
        let mut info = RunInfo::read(&args.out)?;
        info.data = std::fs::canonicalize(data_dir).unwrap_or(data_dir.to_path_buf());
        info.data_sha256 = Some(data_sha256.to_string());
        info.write(&args.out)?;
    } else {
        RunInfo::start(&args.out, data_dir, data_sha256)?;
    }
    Ok(())
}

fn finish(args: &TrainArgs, summary: &preln_train::Summary) {
    eprintln!(
        "done: {} updates, {} epochs, best validation loss {:.4} (epoch {}), {:.0} s",
        summary.state.step,
        summary.state.epoch,
        summary.state.best_valid_loss.unwrap_or(f64::NAN),
        summary.state.best_epoch.unwrap_or(0),
        summary.state.wall_s
    );
    println!("{}", args.out.display());
}

pub fn run(args: TrainArgs) -> Result<()> {
    let (source, text) = config_source(&args, PRESETS)?;
    let cfg = resolve(&source, &text, &args.overrides)?;
    let data_dir = data_source(&args, "prepare")?;
    let ds = Dataset::open(&data_dir)?;
    let data_sha256 = fingerprint(&ds.manifest.sha256);
    check_resume_data(&args, &data_dir, &data_sha256)?;
    let train = ds.split("train")?;
    let valid = ds.split(&cfg.train.valid_split)?;
    eprintln!(
        "{} training pairs, {} validation pairs, vocabulary {}; {} {}+{} layers, d {}, {} lr {} {:?}",
        train.len(),
        valid.len(),
        ds.manifest.vocab_size,
        cfg.model.placement,
        cfg.model.encoder_layers,
        cfg.model.decoder_layers,
        cfg.model.d_model,
        cfg.optimizer.name(),
        cfg.train.lr,
        cfg.schedule
    );
    let vocab = ds.manifest.vocab_size;
    let mut trainer = Trainer::new(&cfg, train, valid, vocab, &args.out, args.resume)?
        .with_tokenizer(ds.tokenizer)
        .with_reporter(Progress::boxed());
    remember(&args, &data_dir, &data_sha256)?;
    if args.resume {
        let s = trainer.state();
        eprintln!("resuming at update {} (epoch {}, batch {})", s.step, s.epoch, s.batch_in_epoch);
    }
    let summary = trainer.run(&RunOptions { resume: args.resume, stop_at_step: None })?;
    finish(&args, &summary);
    Ok(())
}

/// `preln pretrain`: masked-language-model pre-training of BERT on a `prepare-mlm` folder.
pub fn pretrain(args: TrainArgs) -> Result<()> {
    let (source, text) = config_source(&args, MLM_PRESETS)?;
    let cfg = PretrainConfig::resolve(&source, &text, &args.overrides)?;
    let data_dir = data_source(&args, "prepare-mlm")?;
    let ds = MlmDataset::open(&data_dir)?;
    let data_sha256 = fingerprint(&ds.manifest.sha256);
    check_resume_data(&args, &data_dir, &data_sha256)?;
    let train = ds.split("train")?;
    let valid = ds.split(&cfg.train.valid_split)?;
    eprintln!(
        "{} training segments, {} validation segments, vocabulary {}; BERT {} {} layers, d {}, {} lr {} {:?}",
        train.len(),
        valid.len(),
        ds.manifest.vocab_size,
        cfg.model.placement,
        cfg.model.layers,
        cfg.model.d_model,
        cfg.optimizer.name(),
        cfg.train.lr,
        cfg.schedule
    );
    let mut trainer = Trainer::pretrain(&cfg, train, valid, ds.manifest.vocab_size, &args.out, args.resume)?
        .with_reporter(Progress::boxed());
    remember(&args, &data_dir, &data_sha256)?;
    if args.resume {
        let s = trainer.state();
        eprintln!("resuming at update {} (epoch {}, batch {})", s.step, s.epoch, s.batch_in_epoch);
    }
    let summary = trainer.run(&RunOptions { resume: args.resume, stop_at_step: None })?;
    finish(&args, &summary);
    Ok(())
}
