//! `preln bench train`: our training step against the PyTorch reference, same machine, same run.

use std::process::Command;

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use preln_data::Specials;
use preln_ops::dist::Rendezvous;
use preln_train::bench::{peak_rss_mib, time_steps};
use preln_train::compare::{
    measure, python, speedups, synthetic_batch, tensor_rows, tool, Measured, Reference, Timing,
};
use preln_train::config::{config_text, resolve, Precision};
use preln_train::dist::DataParallel;
use serde_json::json;
use tch::Device;

use crate::cli::BenchTrainArgs;

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
    if args.nproc > 1 && args.vs_pytorch {
        bail!("--vs-pytorch times one PyTorch process: compare it with --nproc 1 (and --threads N)");
    }
    if args.worker {
        if super::launch::starts_ranks(args.nproc) {
            return super::launch::run(args.nproc, threads);
        }
        let [precision] = precisions.as_slice() else { bail!("--worker times exactly one precision") };
        let rdv = Rendezvous::from_env(Duration::from_secs(600)).map_err(|e| anyhow!("data-parallel launch: {e}"))?;
        let group = rdv.as_ref().map(|r| DataParallel::join(r, device, None)).transpose()?;
        let (ls, warmup, steps) = (cfg.train.label_smoothing, args.warmup, args.steps);
        let t = time_steps(&model, &cfg.optimizer, &batch, ls, warmup, steps, *precision, device, group.as_ref())?;
        if group.as_ref().is_none_or(|g| g.rank() == 0) {
            println!("{}", json!({"step_s": t.step_s, "allreduce_s": t.allreduce_s, "peak_mib": peak_rss_mib()}));
        }
        return Ok(());
    }
    eprintln!(
        "{source}: {} {}+{} layers, d {}, FFN {}, {} heads; batch {}x{} tokens a side; {}; {}; {device:?}",
        model.placement,
        model.encoder_layers,
        model.decoder_layers,
        model.d_model,
        model.ffn_dim,
        model.heads,
        args.sentences,
        args.len,
        cfg.optimizer.name(),
        match args.nproc {
            1 => format!("{} threads", tch::get_num_threads()),
            n => format!(
                "{n} ranks of {} thread(s), each with the whole batch",
                threads.map_or_else(|| (available_cores() / n).max(1), |t| t as usize)
            ),
        }
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
    print_results(&m, (batch.target_tokens * args.nproc as i64) as f64, args.vs_pytorch);
    Ok(())
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
    cmd.args(["--nproc", &args.nproc.to_string()]);
    cmd
}

/// Medians, tokens/s and peak memory of each side and precision, then the speed-ups.
fn print_results(m: &Measured, tokens: f64, vs_pytorch: bool) {
    let line = |who: &str, t: &Timing| {
        let med = t.median();
        let allreduce = match t.allreduce.is_empty() || t.allreduce.iter().all(|&a| a == 0.0) {
            true => String::new(),
            false => format!(", all-reduce {:.1} ms/step", preln_train::bench::median(&t.allreduce) * 1e3),
        };
        println!(
            "{who:8} {:4}: {med:.3} s/step (median of {}), {:.0} target tokens/s{allreduce}, peak RSS {:.0} MiB",
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
