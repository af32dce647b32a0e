//! `preln bench train`: our training step against the PyTorch reference, same machine, same run.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use preln_data::synthetic::SplitMix64;
use preln_data::{Batch, Specials};
use preln_train::bench::{median, peak_rss_mib, time_steps};
use preln_train::config::{config_text, resolve};
use serde_json::json;

use crate::cli::{BenchTrainArgs, BenchTranslateArgs};
use crate::commands::translate::load_run;
use preln_data::text::read_lines;
use preln_eval::{beam_search, SearchConfig};

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

pub fn translate(args: BenchTranslateArgs, threads: Option<i32>) -> Result<()> {
    if args.beams.is_empty() || args.beams.contains(&0) || args.search.batch_size < 1 {
        bail!("--beams must list sizes of at least 1, and --batch-size must be at least 1");
    }
    let device = super::device(args.device)?;
    let run = load_run(&args.run.checkpoint, &args.run.which, device)?;
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
        let search = SearchConfig {
            beam,
            lenpen: args.search.lenpen,
            max_len_a: args.search.max_len_a,
            max_len_b: args.search.max_len_b,
            ..Default::default()
        };
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
