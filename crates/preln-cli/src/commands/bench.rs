//! `preln bench train`: our training step against the PyTorch reference, same machine, same run.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use preln_data::synthetic::SplitMix64;
use preln_data::{Batch, Specials};
use preln_train::bench::{median, peak_rss_mib, time_steps};
use preln_train::config::{config_text, resolve, Precision};
use serde_json::json;
use tch::Device;

use crate::cli::{BenchTrainArgs, BenchTranslateArgs, PrecisionArg};
use preln_data::text::read_lines;
use preln_eval::beam_search;
use preln_train::translation::TrainedModel;

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
    let precisions = bench_precisions(&args.precisions, device)?;
    let batch = synthetic_batch(&args);
    if args.worker {
        let [precision] = precisions.as_slice() else { bail!("--worker times exactly one precision") };
        let precision = if *precision == PrecisionArg::Bf16 { Precision::Bf16 } else { Precision::Fp32 };
        let t = time_steps(
            &model,
            &cfg.optimizer,
            &batch,
            cfg.train.label_smoothing,
            args.warmup,
            args.steps,
            precision,
            device,
        )?;
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
    let spec = json!({
        "model": model, "lr": 5e-4, "warmup": args.warmup, "steps": args.steps, "label_smoothing": cfg.train.label_smoothing,
        "device": if device.is_cuda() { "cuda" } else { "cpu" }, "threads": threads.unwrap_or(0),
        "src": rows(&batch.src), "prev": rows(&batch.prev), "target": rows(&batch.target),
    });
    let m = measure(&args, threads, &precisions, device, &spec)?;
    print_results(&m, batch.target_tokens as f64, args.vs_pytorch);
    Ok(())
}

/// `--sentences` pairs of `--len - 1` random regular tokens a side.
fn synthetic_batch(args: &BenchTrainArgs) -> Batch {
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
    Batch::from_pairs(&pairs, Specials::DEFAULT, tch::Device::Cpu)
}

/// Step times and peak memory of one side (preln or PyTorch) in one precision.
#[derive(Clone)]
struct Timing {
    precision: PrecisionArg,
    steps: Vec<f64>,
    peak_mib: f64,
}

struct Measured {
    ours: Vec<Timing>,
    theirs: Vec<Timing>,
    torch_version: String,
}

/// The `preln bench train --worker` process that times one precision.
fn worker_command(
    args: &BenchTrainArgs,
    threads: Option<i32>,
    precision: PrecisionArg,
    device: Device,
) -> Result<Command> {
    let exe = std::path::Path::new("/proc/self/exe");
    let mut cmd = Command::new(if exe.exists() { exe.to_path_buf() } else { std::env::current_exe()? });
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
    Ok(cmd)
}

/// One fresh process per measurement, alternating sides and precisions round by round.
fn measure(
    args: &BenchTrainArgs,
    threads: Option<i32>,
    precisions: &[PrecisionArg],
    device: Device,
    spec: &serde_json::Value,
) -> Result<Measured> {
    let empty: Vec<Timing> =
        precisions.iter().map(|&p| Timing { precision: p, steps: Vec::new(), peak_mib: 0.0 }).collect();
    let mut m = Measured { ours: empty.clone(), theirs: empty, torch_version: String::new() };
    let script = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/bench_train.py"));
    for round in 1..=args.rounds {
        for (k, &precision) in precisions.iter().enumerate() {
            let v = run_json(&mut worker_command(args, threads, precision, device)?, "preln bench worker", None)?;
            let t = steps_of(&v)?;
            eprintln!("round {round}: preln   {:4} median {:.3} s/step", precision.name(), median(&t));
            m.ours[k].steps.extend(t);
            m.ours[k].peak_mib = m.ours[k].peak_mib.max(v["peak_mib"].as_f64().unwrap_or(f64::NAN));
            if args.vs_pytorch {
                let py = python(&args.python);
                let mut spec = spec.clone();
                spec["precision"] = json!(precision.name());
                let mut cmd = Command::new(&py);
                cmd.arg(&script).arg("-");
                let v = run_json(&mut cmd, &format!("{} {}", py.display(), script.display()), Some(&spec.to_string()))?;
                let t = steps_of(&v)?;
                eprintln!("round {round}: PyTorch {:4} median {:.3} s/step", precision.name(), median(&t));
                m.theirs[k].steps.extend(t);
                m.theirs[k].peak_mib = m.theirs[k].peak_mib.max(v["peak_mib"].as_f64().unwrap_or(0.0));
                m.torch_version = v["torch"].as_str().unwrap_or("").to_string();
            }
        }
    }
    Ok(m)
}

/// Medians, tokens/s and peak memory of each side and precision, then the speed-ups.
fn print_results(m: &Measured, tokens: f64, vs_pytorch: bool) {
    let line = |who: &str, t: &Timing| {
        let med = median(&t.steps);
        println!(
            "{who:8} {:4}: {med:.3} s/step (median of {}), {:.0} target tokens/s, peak RSS {:.0} MiB",
            t.precision.name(),
            t.steps.len(),
            tokens / med,
            t.peak_mib
        );
        (t.precision, med)
    };
    let ours: Vec<(PrecisionArg, f64)> = m.ours.iter().map(|t| line("preln", t)).collect();
    if !vs_pytorch {
        return;
    }
    let theirs: Vec<(PrecisionArg, f64)> = m.theirs.iter().map(|t| line("PyTorch", t)).collect();
    println!("(PyTorch {}, eager, torch.optim.Adam default implementation, bf16 = torch.autocast)", m.torch_version);
    let get = |v: &[(PrecisionArg, f64)], p| v.iter().find(|x| x.0 == p).map(|x| x.1);
    for (p, med) in &ours {
        for q in [PrecisionArg::Fp32, PrecisionArg::Bf16] {
            if let Some(r) = get(&theirs, q) {
                if *p == q || q == PrecisionArg::Fp32 {
                    println!("speed-up of preln {} over PyTorch {}: {:.2}x", p.name(), q.name(), r / med);
                }
            }
        }
    }
}

/// The precisions to time: those asked for (bf16 on a CPU without fast bf16 is refused, with
/// the reason), else fp32 and, where it is fast, bf16.
fn bench_precisions(asked: &[PrecisionArg], device: Device) -> Result<Vec<PrecisionArg>> {
    let bf16_ok = preln_train::device::check_precision(Precision::Bf16, device);
    if asked.is_empty() {
        if let Err(e) = &bf16_ok {
            eprintln!("timing fp32 only: {e}");
            return Ok(vec![PrecisionArg::Fp32]);
        }
        return Ok(vec![PrecisionArg::Fp32, PrecisionArg::Bf16]);
    }
    if asked.contains(&PrecisionArg::Bf16) {
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

/// Runs `cmd` (with `input` on its standard input) and reads the JSON of its last output line.
fn run_json(cmd: &mut Command, what: &str, input: Option<&str>) -> Result<serde_json::Value> {
    use std::process::Stdio;
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("running {what}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        std::io::Write::write_all(&mut stdin, text.as_bytes()).with_context(|| format!("writing to {what}"))?;
    }
    let out = child.wait_with_output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").to_string();
    serde_json::from_str(&last).with_context(|| format!("reading the JSON of {what}"))
}

fn steps_of(v: &serde_json::Value) -> Result<Vec<f64>> {
    Ok(v["step_s"].as_array().context("step_s")?.iter().filter_map(|x| x.as_f64()).collect())
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
        let script = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/translate_ref.py"));
        let py = python(&args.python);
        let mut child = Command::new(&py)
            .arg(&script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("running {} {}", py.display(), script.display()))?;
        std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, spec.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("{} failed:\n{}", script.display(), String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading the reference's JSON")?;
        let theirs: Vec<Vec<i64>> = serde_json::from_value(v["tokens"].clone())?;
        let their_secs = v["seconds"].as_f64().unwrap_or(f64::NAN);
        let same = ours.iter().zip(&theirs).filter(|(a, b)| a.tokens == **b).count();
        println!("beam {beam}: PyTorch {:.1} sentences/s ({their_secs:.1} s)", n / their_secs);
        println!("beam {beam}: speed-up {:.2}x; identical outputs {same}/{}", their_secs / secs, ours.len());
    }
    Ok(())
}
