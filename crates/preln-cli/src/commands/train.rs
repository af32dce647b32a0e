//! `preln train`: config -> data -> trainer -> summary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use preln_data::mlm::MlmDataset;
use preln_data::prepare::fingerprint;
use preln_data::Dataset;
use preln_ops::dist::Rendezvous;
use preln_train::config::{config_text, resolve, PRESETS};
use preln_train::dist::DataParallel;
use preln_train::mlm::{PretrainConfig, PRESETS as MLM_PRESETS};
use preln_train::rundir::RunInfo;
use preln_train::task::Task;
use preln_train::trainer::{Launch, RunOptions, Trainer};

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

/// This process's part in the run: alone, or one rank of the data-parallel group that torchrun
/// (or `--nproc`) describes in the environment.
fn launch(args: &TrainArgs) -> Result<(Launch, Option<Rendezvous>)> {
    let rdv = Rendezvous::from_env(Duration::from_secs(args.dist_timeout))
        .map_err(|e| anyhow!("data-parallel launch (torchrun's variables): {e}"))?;
    if rdv.is_some() && args.nproc > 1 {
        bail!("--nproc {} inside a launcher that already started the ranks (WORLD_SIZE is set)", args.nproc);
    }
    let launch = match &rdv {
        Some(r) => Launch { resume: args.resume, rank: r.rank, local_rank: r.local_rank },
        None => Launch::from(args.resume),
    };
    Ok((launch, rdv))
}

/// Joins the group (once the task is built: a rank with bad config or data fails before the
/// first collective), reports progress on rank 0, trains, and prints the summary on rank 0.
fn train_as_launched<T: Task>(mut trainer: Trainer<T>, args: &TrainArgs, rdv: Option<Rendezvous>) -> Result<()> {
    if let Some(r) = &rdv {
        let group = DataParallel::join(r, trainer.var_store().device(), args.dist_backend.into())?;
        eprintln!("rank {} of {}: joined the {:?} group at {}:{}", r.rank, r.world, group.backend(), r.addr, r.port);
        trainer = trainer.with_group(group)?;
    }
    if trainer.is_root() {
        trainer = trainer.with_reporter(Progress::boxed());
        if args.resume {
            let s = trainer.state();
            eprintln!("resuming at update {} (epoch {}, batch {})", s.step, s.epoch, s.batch_in_epoch);
        }
    }
    let summary = trainer.run(&RunOptions { resume: args.resume, stop_at_step: None })?;
    if trainer.is_root() {
        finish(args, &summary);
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

pub fn run(args: TrainArgs, threads: Option<i32>) -> Result<()> {
    if super::launch::starts_ranks(args.nproc) {
        return super::launch::run(args.nproc, threads);
    }
    let (launch, rdv) = launch(&args)?;
    let root = launch.rank == 0;
    let (source, text) = config_source(&args, PRESETS)?;
    let cfg = resolve(&source, &text, &args.overrides)?;
    let data_dir = data_source(&args, "prepare")?;
    let ds = Dataset::open(&data_dir)?;
    let data_sha256 = fingerprint(&ds.manifest.sha256);
    if root {
        check_resume_data(&args, &data_dir, &data_sha256)?;
    }
    let train = ds.split("train")?;
    let valid = ds.split(&cfg.train.valid_split)?;
    if root {
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
    }
    let vocab = ds.manifest.vocab_size;
    let trainer = Trainer::new(&cfg, train, valid, vocab, &args.out, launch)?.with_tokenizer(ds.tokenizer);
    if root {
        remember(&args, &data_dir, &data_sha256)?;
    }
    train_as_launched(trainer, &args, rdv)
}

/// `preln pretrain`: masked-language-model pre-training of BERT on a `prepare-mlm` folder.
pub fn pretrain(args: TrainArgs, threads: Option<i32>) -> Result<()> {
    if super::launch::starts_ranks(args.nproc) {
        return super::launch::run(args.nproc, threads);
    }
    let (launch, rdv) = launch(&args)?;
    let root = launch.rank == 0;
    let (source, text) = config_source(&args, MLM_PRESETS)?;
    let cfg = PretrainConfig::resolve(&source, &text, &args.overrides)?;
    let data_dir = data_source(&args, "prepare-mlm")?;
    let ds = MlmDataset::open(&data_dir)?;
    let data_sha256 = fingerprint(&ds.manifest.sha256);
    if root {
        check_resume_data(&args, &data_dir, &data_sha256)?;
    }
    let train = ds.split("train")?;
    let valid = ds.split(&cfg.train.valid_split)?;
    if root {
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
    }
    let trainer = Trainer::pretrain(&cfg, train, valid, ds.manifest.vocab_size, &args.out, launch)?;
    if root {
        remember(&args, &data_dir, &data_sha256)?;
    }
    train_as_launched(trainer, &args, rdv)
}
