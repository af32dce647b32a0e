//! `preln finetune`: GLUE MRPC / RTE from a pre-training run, several seeds, mean and 95% interval.

use anyhow::{bail, Result};
use preln_data::glue::GlueTask;
use preln_train::finetune::{finetune_seeds, SeedsSpec};
use preln_train::trainer::{best_checkpoint, last_checkpoint};

use super::progress::Progress;
use crate::cli::{FinetuneArgs, FinetuneInit};

pub fn run(args: FinetuneArgs) -> Result<()> {
    if args.seeds < 1 || args.epochs < 1 || args.batch_size < 1 || !(0.0..1.0).contains(&args.warmup) {
        bail!("--seeds, --epochs and --batch-size must be at least 1, --warmup in [0, 1)");
    }
    let run = &args.checkpoint;
    let checkpoint = match args.which.as_str() {
        "best" => best_checkpoint(run),
        "last" => last_checkpoint(run),
        other => bail!("--which must be best or last, got `{other}`"),
    };
    let (checkpoint, suffix) = match args.init {
        FinetuneInit::Pretrained => (Some(checkpoint), ""),
        FinetuneInit::Random => (None, "-random"),
    };
    let spec = SeedsSpec {
        task: args.task,
        glue_dir: args.data.clone(),
        pretrain_run: run.clone(),
        checkpoint,
        seeds: args.seeds,
        epochs: args.epochs,
        lr: args.lr,
        batch_size: args.batch_size,
        warmup: args.warmup,
        overrides: args.overrides.clone(),
        out: args.out.clone().unwrap_or_else(|| run.join(format!("finetune-{}{suffix}", args.task.name()))),
    };
    eprintln!(
        "{}: from {}; {} seeds, {} epochs, lr {}, batch {}",
        args.task.name(),
        spec.checkpoint.as_ref().map_or_else(
            || format!("a random initialization of {}'s model", run.display()),
            |c| c.display().to_string()
        ),
        args.seeds,
        args.epochs,
        args.lr,
        args.batch_size
    );
    let summary = finetune_seeds(&spec, Progress::boxed, |line| eprintln!("{line}"))?;
    for e in &summary.epochs {
        println!(
            "epoch {}: dev accuracy {:.4} +- {:.4} (95% interval over {} seeds){}",
            e.epoch,
            e.accuracy.mean,
            e.accuracy_ci95,
            e.accuracy.n,
            if args.task == GlueTask::Mrpc {
                format!(", F1 {:.4} +- {:.4}", e.f1.mean, e.f1_ci95)
            } else {
                String::new()
            }
        );
    }
    if let Some(m) = summary.majority {
        println!(
            "majority baseline (always label {}): dev accuracy {:.4}{}",
            m.label,
            m.accuracy,
            if args.task == GlueTask::Mrpc { format!(", F1 {:.4}", m.f1) } else { String::new() }
        );
    }
    println!("{}", spec.out.join("summary.json").display());
    Ok(())
}
