//! `preln bench train`: our training step against the PyTorch reference, same machine, same run.

use std::process::Command;

use anyhow::{bail, Context, Result};
use preln_data::{Batch, Specials};
use preln_train::bench::{peak_rss_mib, time_steps};
use preln_train::compare::{
    measure, python, reference_translate, speedups, synthetic_batch, tensor_rows, tool, Measured, Reference, Timing,
};
use preln_train::config::{config_text, resolve, Precision};
use serde_json::json;
use tch::Device;

use crate::cli::{BenchTrainArgs, BenchTranslateArgs};
use preln_data::text::read_lines;
use preln_eval::beam_search;
use preln_train::translation::TrainedModel;

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
    let precisions = bench_precisions(&args.precisions, device)?;
    let batch = synthetic_batch(args.sentences, args.len, args.vocab);
    if args.worker {
        let [precision] = precisions.as_slice() else { bail!("--worker times exactly one precision") };
        let (ls, warmup, steps) = (cfg.train.label_smoothing, args.warmup, args.steps);
        let t = time_steps(&model, &cfg.optimizer, &batch, ls, warmup, steps, *precision, device)?;
        println!("{}", json!({"step_s": t, "peak_mib": peak_rss_mib()}));
        return Ok(());
    }
    eprintln!(
        "{source}: {} {}+{} layers, d {}, FFN {}, {} heads; batch {}x{} tokens a side; {}; {} threads; {device:?}",
        model.placement,
        model.encoder_layers,
        model.decoder_layers,
        model.d_model,
        model.ffn_dim,
        model.heads,
        args.sentences,
        args.len,
        cfg.optimizer.name(),
        tch::get_num_threads()
    );
    eprintln!("{}", preln_ops::caps::summary());
    if let Device::Cuda(i) = device {
        eprintln!("GPU: {}", gpu_name(i));
    }
    let reference = args.vs_pytorch.then(|| Reference {
        python: python(args.python.as_deref()),
        script: tool("bench_train.py"),
        spec: json!({
            "model": model, "lr": 5e-4, "warmup": args.warmup, "steps": args.steps,
            "label_smoothing": cfg.train.label_smoothing, "device": if device.is_cuda() { "cuda" } else { "cpu" },
            "threads": threads.unwrap_or(0), "src": tensor_rows(&batch.src), "prev": tensor_rows(&batch.prev),
            "target": tensor_rows(&batch.target),
        }),
    });
    let worker = |p: Precision| worker_command(&args, threads, p, device);
    let m = measure(args.rounds, &precisions, worker, reference.as_ref(), |line| eprintln!("{line}"))?;
    print_results(&m, batch.target_tokens as f64, args.vs_pytorch);
    Ok(())
}

/// The `preln bench train --worker` process that times one precision.
fn worker_command(args: &BenchTrainArgs, threads: Option<i32>, precision: Precision, device: Device) -> Command {
    let exe = std::path::Path::new("/proc/self/exe");
    let mut cmd =
        Command::new(if exe.exists() { exe.to_path_buf() } else { std::env::current_exe().unwrap_or_default() });
    if let Some(t) = threads {
        cmd.arg("--threads").arg(t.to_string());
    }
    cmd.args(["bench", "train", "--worker", "--config", &args.config]);
    for o in &args.overrides {
        cmd.arg("--set").arg(o);
    }
    cmd.args(["--sentences", &args.sentences.to_string(), "--len", &args.len.to_string()]);
    cmd.args(["--vocab", &args.vocab.to_string(), "--steps", &args.steps.to_string()]);
    cmd.args(["--warmup", &args.warmup.to_string(), "--precisions", precision.name()]);
    cmd.args(["--device", if device.is_cuda() { "cuda" } else { "cpu" }]);
    cmd
}

/// Medians, tokens/s and peak memory of each side and precision, then the speed-ups.
fn print_results(m: &Measured, tokens: f64, vs_pytorch: bool) {
    let line = |who: &str, t: &Timing| {
        let med = t.median();
        println!(
            "{who:8} {:4}: {med:.3} s/step (median of {}), {:.0} target tokens/s, peak RSS {:.0} MiB",
            t.precision.name(),
            t.steps.len(),
            tokens / med,
            t.peak_mib
        );
    };
    m.ours.iter().for_each(|t| line("preln", t));
    if !vs_pytorch {
        return;
    }
    m.theirs.iter().for_each(|t| line("PyTorch", t));
    println!("(PyTorch {}, eager, torch.optim.Adam default implementation, bf16 = torch.autocast)", m.torch_version);
    for (p, q, x) in speedups(m) {
        println!("speed-up of preln {} over PyTorch {}: {x:.2}x", p.name(), q.name());
    }
}

/// The precisions to time: those asked for (bf16 on a CPU without fast bf16 is refused, with
/// the reason), else fp32 and, where it is fast, bf16.
fn bench_precisions(asked: &[Precision], device: Device) -> Result<Vec<Precision>> {
    let bf16_ok = preln_train::device::check_precision(Precision::Bf16, device);
    if asked.is_empty() {
        if let Err(e) = &bf16_ok {
            eprintln!("timing fp32 only: {e}");
            return Ok(vec![Precision::Fp32]);
        }
        return Ok(vec![Precision::Fp32, Precision::Bf16]);
    }
    if asked.contains(&Precision::Bf16) {
        bf16_ok?;
    }
    Ok(asked.to_vec())
}

/// The GPU's name, from `nvidia-smi` where it is installed.
fn gpu_name(index: usize) -> String {
    Command::new("nvidia-smi")
        .args(["--query-gpu=name,driver_version", "--format=csv,noheader", &format!("--id={index}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| format!("CUDA device {index}"))
}

pub fn translate(args: BenchTranslateArgs, threads: Option<i32>) -> Result<()> {
    if args.beams.is_empty() || args.beams.contains(&0) || args.search.batch_size < 1 {
        bail!("--beams must list sizes of at least 1, and --batch-size must be at least 1");
    }
    let device = super::device(args.device)?;
    let run = TrainedModel::load(&args.run.checkpoint, &args.run.which, device)?;
    let lines = read_lines(&args.input)?;
    let mut sources: Vec<Vec<i64>> = Vec::new();
    for (i, l) in lines.iter().filter(|l| !l.trim().is_empty()).enumerate() {
        let ids = run.bpe.encode(l).with_context(|| format!("{} sentence {}", args.input.display(), i + 1))?;
        sources.push(ids.into_iter().map(i64::from).collect());
    }
    sources.sort_by_key(|s| s.len());
    let batches: Vec<Vec<Vec<i64>>> = sources.chunks(args.search.batch_size).map(|c| c.to_vec()).collect();
    let n = sources.len() as f64;
    eprintln!(
        "{} sentences from {}; {} threads; {device:?}",
        sources.len(),
        args.input.display(),
        tch::get_num_threads()
    );
    for &beam in &args.beams {
        let search = args.search.config(beam, false)?;
        let t0 = std::time::Instant::now();
        let mut ours = Vec::new();
        for b in &batches {
            let pairs: Vec<(Vec<i64>, Vec<i64>)> = b.iter().map(|s| (s.clone(), Vec::new())).collect();
            let batch = Batch::from_pairs(&pairs, Specials::DEFAULT, device);
            ours.extend(beam_search(&run.model, &batch.src, &search));
        }
        let secs = t0.elapsed().as_secs_f64();
        println!("beam {beam}: preln   {:.1} sentences/s ({secs:.1} s)", n / secs);
        if !args.vs_pytorch {
            continue;
        }
        let with_eos: Vec<Vec<Vec<i64>>> = batches
            .iter()
            .map(|b| b.iter().map(|s| [s.as_slice(), &[Specials::DEFAULT.eos]].concat()).collect())
            .collect();
        let spec = json!({
            "config": run.config_path, "checkpoint": run.checkpoint, "batches": with_eos, "beam": beam,
            "lenpen": args.search.lenpen, "max_len_a": args.search.max_len_a, "max_len_b": args.search.max_len_b,
            "threads": threads.unwrap_or(0), "device": if device.is_cuda() { "cuda" } else { "cpu" },
        });
        let (theirs, their_secs) = reference_translate(&python(args.python.as_deref()), &spec)?;
        let same = ours.iter().zip(&theirs).filter(|(a, b)| a.tokens == **b).count();
        println!("beam {beam}: PyTorch {:.1} sentences/s ({their_secs:.1} s)", n / their_secs);
        println!("beam {beam}: speed-up {:.2}x; identical outputs {same}/{}", their_secs / secs, ours.len());
    }
    Ok(())
}
