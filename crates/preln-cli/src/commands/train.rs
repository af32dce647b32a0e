//! `preln train`: config -> data -> trainer -> summary.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use preln_data::mlm::MlmDataset;
use preln_data::prepare::{fingerprint, sha256_hex};
use preln_data::Dataset;
use preln_model::checkpoint::write_file_atomic;
use preln_train::config::{config_text, resolve, PRESETS};
use preln_train::mlm::{PretrainConfig, PRESETS as MLM_PRESETS};
use preln_train::trainer::{RunOptions, Trainer};
use serde_json::json;

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
        (None, true) => {
            Ok(PathBuf::from(read_run_json(&args.out)?["data"].as_str().context("run.json has no `data`")?))
        }
        (None, false) => bail!("--data is required: a folder made by `preln {what}`"),
    }
}

fn read_run_json(run: &Path) -> Result<serde_json::Value> {
    let path = run.join("run.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

/// Checks the run's tokenizer against the checksum recorded when the run started.
pub fn check_run_tokenizer(run: &Path) -> Result<()> {
    let Ok(info) = read_run_json(run) else { return Ok(()) };
    let Some(want) = info["tokenizer_sha256"].as_str() else { return Ok(()) };
    let tok = run.join("tokenizer.json");
    let bytes = std::fs::read(&tok).with_context(|| format!("reading {}", tok.display()))?;
    if sha256_hex(&bytes) != want {
        bail!(
            "{}: changed since the run started (its checksum differs from tokenizer_sha256 in run.json); the model's \
             token ids belong to the original tokenizer: put it back (it is also in the data folder {})",
            tok.display(),
            info["data"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// On --resume: the data must be the data the run trained on, and its tokenizer unchanged.
fn check_resume_data(args: &TrainArgs, data_dir: &Path, data_sha256: &str) -> Result<()> {
    if !args.resume {
        return Ok(());
    }
    let info = read_run_json(&args.out)?;
    if let Some(want) = info["data_sha256"].as_str().filter(|w| *w != data_sha256) {
        bail!(
            "--resume --data {}: not the data this run trained on ({}; the checksums of its files differ from \
             data_sha256 {want} in {}); resume with the original data, or start a new run with --out elsewhere",
            data_dir.display(),
            info["data"].as_str().unwrap_or("?"),
            args.out.join("run.json").display()
        );
    }
    check_run_tokenizer(&args.out)
}

/// Remembers the data folder and its fingerprint (for --resume) and copies its tokenizer into
/// the run.
fn remember(args: &TrainArgs, data_dir: &Path, data_sha256: &str) -> Result<()> {
    let tok = args.out.join("tokenizer.json");
    if !args.resume {
        let src = data_dir.join("tokenizer.json");
        let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        write_file_atomic(&tok, &bytes)?;
    }
    let tok_bytes = std::fs::read(&tok).with_context(|| format!("reading {}", tok.display()))?;
    let abs = std::fs::canonicalize(data_dir).unwrap_or(data_dir.to_path_buf());
    let info = json!({"data": abs, "data_sha256": data_sha256, "tokenizer_sha256": sha256_hex(&tok_bytes)});
    write_file_atomic(&args.out.join("run.json"), serde_json::to_string_pretty(&info)?.as_bytes())?;
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
