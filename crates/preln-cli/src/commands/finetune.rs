//! `preln finetune`: GLUE MRPC / RTE from a pre-training run, several seeds, mean and 95% interval.

use anyhow::{bail, Context, Result};
use preln_analysis::stats::Stat;
use preln_data::glue::GlueTask;
use preln_data::mlm::MlmDataset;
use preln_train::config::parse_with_overrides;
use preln_train::finetune::FinetuneConfig;
use preln_train::mlm::PretrainConfig;
use preln_train::trainer::{best_checkpoint, last_checkpoint, RunOptions, Trainer};
use serde_json::json;

use super::progress::Progress;
use crate::cli::FinetuneArgs;

pub fn run(args: FinetuneArgs) -> Result<()> {
    if args.seeds < 1 || args.epochs < 1 || args.batch_size < 1 || !(0.0..1.0).contains(&args.warmup) {
        bail!("--seeds, --epochs and --batch-size must be at least 1, --warmup in [0, 1)");
    }
    let task = args.task;
    let run = &args.checkpoint;
    let cfg_path = run.join("config.toml");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("{}: not a `preln pretrain` run (no config.toml)", run.display()))?;
    let pre = PretrainConfig::resolve(&cfg_path.display().to_string(), &text, &[])?;
    let ckpt = match args.which.as_str() {
        "best" => best_checkpoint(run),
        "last" => last_checkpoint(run),
        other => bail!("--which must be best or last, got `{other}`"),
    };
    let data = MlmDataset::open(&preln_train::rundir::RunInfo::read(run)?.data)?;
    let train = task.read(&args.data.join("train.tsv"))?;
    let dev = task.read(&args.data.join("dev.tsv"))?;
    let out = args.out.clone().unwrap_or_else(|| run.join(format!("finetune-{}", task.name())));
    eprintln!(
        "{}: {} train / {} dev pairs; BERT {} {} layers d {} from {}; {} seeds, {} epochs, lr {}, batch {}",
        task.name(),
        train.len(),
        dev.len(),
        pre.model.placement,
        pre.model.layers,
        pre.model.d_model,
        ckpt.display(),
        args.seeds,
        args.epochs,
        args.lr,
        args.batch_size
    );
    // Per seed and epoch: (accuracy, f1).
    let mut results: Vec<Vec<(f64, f64)>> = Vec::new();
    for seed in 1..=args.seeds {
        let mut base = FinetuneConfig { batch_size: args.batch_size, ..Default::default() };
        base.train.lr = args.lr;
        base.train.max_epochs = args.epochs;
        base.train.seed = seed;
        base.train.device = pre.train.device.clone();
        let base = base.with_linear_schedule(train.len(), args.warmup);
        let cfg: FinetuneConfig =
            parse_with_overrides("finetune", &toml::to_string(&base).expect("config serializes"), &args.overrides)?;
        let dir = out.join(format!("seed-{seed}"));
        if dir.join("checkpoints/last.safetensors").exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("replacing {}", dir.display()))?;
        }
        let mut t =
            Trainer::finetune(&cfg, &pre.model, &ckpt, &data, &train, &dev, &dir)?.with_reporter(Progress::boxed());
        t.run(&RunOptions::default())?;
        let lines = preln_train::metrics::Metrics::read(&dir.join("metrics.jsonl"))?;
        let per_epoch: Vec<(f64, f64)> = preln_train::metrics::valid_records(&lines)
            .map(|v| (v.metric("accuracy").unwrap_or(f64::NAN), v.metric("f1").unwrap_or(f64::NAN)))
            .collect();
        eprintln!(
            "seed {seed}: dev accuracy by epoch {}",
            per_epoch.iter().map(|a| format!("{:.4}", a.0)).collect::<Vec<_>>().join(", ")
        );
        results.push(per_epoch);
    }
    let mut epochs = Vec::new();
    for e in 0..args.epochs as usize {
        let acc = Stat::of(&results.iter().filter_map(|r| r.get(e).map(|x| x.0)).collect::<Vec<_>>());
        let f1 = Stat::of(&results.iter().filter_map(|r| r.get(e).map(|x| x.1)).collect::<Vec<_>>());
        println!(
            "epoch {}: dev accuracy {:.4} +- {:.4} (95% interval over {} seeds){}",
            e + 1,
            acc.mean,
            acc.ci95(),
            acc.n,
            if task == GlueTask::Mrpc { format!(", F1 {:.4} +- {:.4}", f1.mean, f1.ci95()) } else { String::new() }
        );
        epochs.push(
            json!({"epoch": e + 1, "accuracy": acc, "accuracy_ci95": acc.ci95(), "f1": f1, "f1_ci95": f1.ci95()}),
        );
    }
    let summary = json!({
        "task": task.name(), "checkpoint": ckpt, "seeds": args.seeds, "lr": args.lr, "batch_size": args.batch_size,
        "per_seed": results, "epochs": epochs,
    });
    let path = out.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}
