//! `preln bench train`: our training step against the PyTorch reference, same machine, same run.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use preln_data::synthetic::SplitMix64;
use preln_data::{Batch, Specials};
use preln_train::bench::{median, peak_rss_mib, time_steps};
use preln_train::config::{config_text, resolve};
use serde_json::json;

use crate::cli::BenchTrainArgs;

fn python(arg: &Option<PathBuf>) -> PathBuf {
    if let Some(p) = arg {
        return p.clone();
    }
    let venv = std::env::var("PRELN_TORCH_VENV").ok().or(option_env!("PRELN_TORCH_VENV").map(String::from));
    venv.map(|v| PathBuf::from(v).join("bin").join("python")).unwrap_or_else(|| PathBuf::from("python3"))
}

fn rows(t: &tch::Tensor) -> Vec<Vec<i64>> {
    (0..t.size()[0]).map(|i| Vec::<i64>::try_from(t.get(i)).expect("ids")).collect()
}

pub fn train(args: BenchTrainArgs, threads: Option<i32>) -> Result<()> {
    if args.len < 2 || args.sentences < 1 || args.steps < 1 || args.rounds < 1 {
        bail!("--len >= 2, --sentences, --steps and --rounds >= 1 are required");
    }
    let (source, text) = config_text(&args.config)?;
    let cfg = resolve(&source, &text, &args.overrides)?;
    let mut model = cfg.model.clone();
    model.vocab_size = args.vocab;
    model.pad_id = Specials::DEFAULT.pad;
    let device = super::device(args.device)?;
    let mut rng = SplitMix64::new(1);
    let words = args.len - 1;
    let pairs: Vec<(Vec<i64>, Vec<i64>)> = (0..args.sentences)
        .map(|_| {
            let mut w = || {
                (0..words)
                    .map(|_| Specials::FIRST_REGULAR + (rng.next_u64() % (args.vocab - 4) as u64) as i64)
                    .collect()
            };
            (w(), w())
        })
        .collect();
    let batch = Batch::from_pairs(&pairs, Specials::DEFAULT, tch::Device::Cpu);
    let tokens = batch.target_tokens as f64;
    let script = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/bench_train.py"));
    let spec = json!({
        "model": model, "lr": 5e-4, "warmup": args.warmup, "steps": args.steps, "label_smoothing": cfg.train.label_smoothing,
        "device": if device.is_cuda() { "cuda" } else { "cpu" }, "threads": threads.unwrap_or(0),
        "src": rows(&batch.src), "prev": rows(&batch.prev), "target": rows(&batch.target),
    });
    eprintln!(
        "{source}: {} {}+{} layers, d {}, FFN {}, {} heads; batch {}x{} tokens a side; Adam; {} threads; {device:?}",
        model.placement,
        model.encoder_layers,
        model.decoder_layers,
        model.d_model,
        model.ffn_dim,
        model.heads,
        args.sentences,
        args.len,
        tch::get_num_threads()
    );
    let (mut ours, mut theirs, mut their_peak, mut torch_version) = (Vec::new(), Vec::new(), 0.0f64, String::new());
    for round in 1..=args.rounds {
        let t = time_steps(&model, &cfg.optimizer, &batch, cfg.train.label_smoothing, args.warmup, args.steps, device)?;
        eprintln!("round {round}: preln   median {:.3} s/step", median(&t));
        ours.extend(t);
        if args.vs_pytorch {
            let py = python(&args.python);
            let out = Command::new(&py)
                .arg(&script)
                .arg(spec.to_string())
                .output()
                .with_context(|| format!("running {} {}", py.display(), script.display()))?;
            if !out.status.success() {
                bail!("{} failed:\n{}", script.display(), String::from_utf8_lossy(&out.stderr));
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading the reference's JSON")?;
            let t: Vec<f64> = v["step_s"].as_array().context("step_s")?.iter().filter_map(|x| x.as_f64()).collect();
            eprintln!("round {round}: PyTorch median {:.3} s/step", median(&t));
            theirs.extend(t);
            their_peak = their_peak.max(v["peak_mib"].as_f64().unwrap_or(0.0));
            torch_version = v["torch"].as_str().unwrap_or("").to_string();
        }
    }
    let (m_ours, peak) = (median(&ours), peak_rss_mib().unwrap_or(f64::NAN));
    println!(
        "preln:   {m_ours:.3} s/step (median of {}), {:.0} target tokens/s, peak RSS {peak:.0} MiB",
        ours.len(),
        tokens / m_ours
    );
    if args.vs_pytorch {
        let m = median(&theirs);
        println!("PyTorch: {m:.3} s/step (median of {}), {:.0} target tokens/s, peak RSS {their_peak:.0} MiB (torch {torch_version})", theirs.len(), tokens / m);
        println!("speed-up of preln over PyTorch eager: {:.2}x", m / m_ours);
    }
    Ok(())
}
