//! One module per verb; `run` dispatches.

mod analyze;
mod bench;
mod bench_translate;
mod bleu;
mod data;
mod export;
mod finetune;
mod info;
mod launch;
mod prepare;
mod progress;
mod reproduce;
mod train;
mod translate;

use anyhow::{bail, Result};
use tch::Device;

use crate::cli::{Analyze, Bench, Cli, Command, Export};
use preln_train::device::DeviceChoice;

pub fn run(cli: Cli) -> Result<()> {
    if matches!(cli.command, Command::Train(_) | Command::Pretrain(_) | Command::Finetune(_) | Command::Reproduce(_)) {
        // Ctrl-C and SIGTERM: training finishes its update, saves and stops; a second one ends
        // at once. Every other command keeps the default: a signal ends it.
        preln_train::interrupt::install();
    }
    if let Some(n) = cli.threads {
        if n < 1 {
            bail!("--threads must be at least 1, got {n}");
        }
        tch::set_num_threads(n);
    }
    match cli.command {
        Command::Info => info::run(),
        Command::Data(cmd) => data::run(cmd),
        Command::Prepare(args) => prepare::run(args),
        Command::PrepareMlm(args) => prepare::run_mlm(args),
        Command::Train(args) => train::run(args, cli.threads),
        Command::Pretrain(args) => train::pretrain(args, cli.threads),
        Command::Finetune(args) => finetune::run(args),
        Command::Export(Export::Ctranslate2(args)) => export::ctranslate2(args),
        Command::Bleu(args) => bleu::run(args),
        Command::Translate(args) => translate::run(args),
        Command::Analyze(Analyze::Init(args)) => analyze::init(args),
        Command::Analyze(Analyze::Depth(args)) => analyze::depth(args),
        Command::Analyze(Analyze::Replot { out }) => analyze::replot(&out),
        Command::Bench(Bench::Train(args)) => bench::train(args, cli.threads),
        Command::Bench(Bench::Translate(args)) => bench_translate::translate(args),
        Command::Reproduce(args) => reproduce::run(args, cli.threads),
    }
}

/// Resolves `--device`; asking for CUDA without a GPU is an error, not a silent fallback.
pub fn device(choice: DeviceChoice) -> Result<Device> {
    Ok(choice.resolve()?)
}
