//! The `preln` binary end to end on tiny models: files written, JSON schema, error messages.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{ok, preln, prepare, tiny_data};

const TINY: [&str; 14] = [
    "--layers",
    "2",
    "--d-model",
    "16",
    "--ffn-dim",
    "32",
    "--heads",
    "2",
    "--vocab",
    "60",
    "--tokens",
    "300",
    "--device",
    "cpu",
];

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.len() > 5_000 && bytes.starts_with(b"\x89PNG"), "{} is not a plausible PNG", path.display());
}

#[test]
fn analyze_init_writes_every_output() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("init");
    let mut args = vec!["analyze", "init", "--seeds", "2", "--out", out.to_str().unwrap()];
    args.extend(TINY);
    let stderr = ok(&args);
    assert!(stderr.contains("W2 grad norm last/first layer"), "{stderr}");
    let v = json(&out.join("init.json"));
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (r, placement) in results.iter().zip(["post", "pre"]) {
        assert_eq!(r["placement"], placement);
        assert_eq!(r["encoder_ffn"].as_array().unwrap().len(), 2);
        assert_eq!(r["decoder_hidden"]["layers"].as_array().unwrap().len(), 2);
        let w2 = &r["decoder_ffn"][1]["w2"];
        assert!(w2["mean"].as_f64().unwrap() > 0.0 && w2["n"] == 2);
        let has_final = r["params"].as_array().unwrap().iter().any(|p| p["path"] == "encoder.final_norm.weight");
        assert_eq!(has_final, placement == "pre");
    }
    assert_eq!(v["study"]["seeds"], serde_json::json!([1, 2]));
    let csv = std::fs::read_to_string(out.join("init_grad_norms.csv")).unwrap();
    assert!(csv.starts_with("placement,path,grad_norm_mean,grad_norm_std,seeds\n"));
    assert!(csv.contains("post,decoder.layers.1.ffn.fc2.weight,"));
    assert_png(&out.join("fig3_ffn_grad_norms.png"));
    assert_png(&out.join("init_hidden_norms.png"));
    let md = std::fs::read_to_string(out.join("init.md")).unwrap();
    assert!(md.contains("| Post-LN | decoder |") && md.contains("Lemma 2"));
}

#[test]
fn analyze_depth_fits_a_slope_per_placement_and_stack() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("depth");
    let mut args = vec!["analyze", "depth", "--depths", "1,2,3", "--seeds", "2", "--out", out.to_str().unwrap()];
    args.extend(TINY);
    ok(&args);
    let v = json(&out.join("depth.json"));
    assert_eq!(v["rows"].as_array().unwrap().len(), 6);
    let fits = v["fits"].as_array().unwrap();
    assert_eq!(fits.len(), 4);
    for f in fits {
        assert!(f["fit"]["slope"].as_f64().unwrap().is_finite());
        assert!(f["predicted_slope"] == -0.5 || f["predicted_slope"] == 0.0);
    }
    assert_png(&out.join("depth_w2.png"));
    // The figures can be redrawn from the JSON alone.
    std::fs::remove_file(out.join("depth_w2.png")).unwrap();
    std::fs::remove_file(out.join("depth.md")).unwrap();
    ok(&["analyze", "replot", "--out", out.to_str().unwrap()]);
    assert_png(&out.join("depth_w2.png"));
    assert!(std::fs::read_to_string(out.join("depth.md")).unwrap().contains("Theorem 1"));
    let out = preln(&["analyze", "replot", "--out", d.path().to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no init.json or depth.json"));
}

#[test]
fn prepare_then_analyze_on_real_text() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let data = tiny_data(p, 80);
    let out = p.join("init");
    let mut args = vec![
        "analyze",
        "init",
        "--seeds",
        "1",
        "--placements",
        "pre",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(TINY);
    ok(&args);
    let v = json(&out.join("init.json"));
    let manifest = json(&data.join("manifest.json"));
    assert_ne!(manifest["vocab_size"], 60);
    assert_eq!(v["study"]["model"]["vocab_size"], manifest["vocab_size"], "the data's vocabulary replaces --vocab");
    assert!(v["study"]["data"].as_str().unwrap().contains("split `train`"));
    // A plain file prefix works too, with a BPE learned on the spot.
    let prefix = p.join("train");
    let mut args = vec![
        "analyze",
        "init",
        "--seeds",
        "1",
        "--placements",
        "post",
        "--data",
        prefix.to_str().unwrap(),
        "--langs",
        "de,en",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(TINY);
    ok(&args);
}

#[test]
fn bad_input_fails_with_a_message_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("t.de"), "a\nb\n").unwrap();
    std::fs::write(p.join("t.en"), "a\n").unwrap();
    let out = prepare(p, "t", None, 10_000, &p.join("o"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("t.de has 2 lines") && err.contains("t.en has 1"), "{err}");
    assert!(!p.join("o").exists());

    let out = preln(&["analyze", "init", "--heads", "3", "--out", p.join("x").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("`heads`"), "{err}");
    let out = preln(&["analyze", "init", "--preset", "huge", "--out", p.join("x").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown preset `huge`"));
}

#[test]
fn train_resume_and_config_errors() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path(), 60);
    let run = d.path().join("run");
    let (data_s, run_s) = (data.to_str().unwrap(), run.to_str().unwrap());
    let first = [
        "train",
        "--config",
        "tiny",
        "--data",
        data_s,
        "--out",
        run_s,
        "--set",
        "train.max_epochs=1",
        "--set",
        "train.device=\"cpu\"",
        "--set",
        "train.valid_bleu_beam=1",
    ];
    ok(&first);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let valid =
        metrics.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).find(|v| v["kind"] == "valid");
    let bleu = valid.unwrap()["bleu"].as_f64().expect("validation BLEU logged");
    assert!((0.0..=100.0).contains(&bleu));
    for f in [
        "config.toml",
        "metrics.jsonl",
        "run.json",
        "checkpoints/last.safetensors",
        "checkpoints/best.safetensors",
        "checkpoints/last.json",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(cfg.contains("vocab_size = 60") && cfg.contains("max_epochs = 1"), "{cfg}");

    // A second epoch by resuming, without repeating --data.
    let stderr = ok(&["train", "--resume", "--out", run_s, "--set", "train.max_epochs=2"]);
    assert!(stderr.contains("resuming at update") && stderr.contains("epoch 2:"), "{stderr}");

    // Translate with the run: same line count and order, empty lines stay empty, cached and
    // uncached decoding agree.
    assert!(run.join("tokenizer.json").exists());
    let input = "der Hund 3 läuft nach Hause\n\nder Hund 7 läuft nach Hause\n";
    let translate = |extra: &[&str]| {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_preln"))
            .args(["translate", "--checkpoint", run_s, "--device", "cpu", "--beam", "3"])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let cached = translate(&[]);
    let lines: Vec<&str> = cached.split('\n').collect();
    assert_eq!(lines.len(), 4, "{cached:?}");
    assert!(lines[1].is_empty() && lines[3].is_empty() && !lines[0].is_empty(), "{cached:?}");
    assert_eq!(translate(&["--no-cache"]), cached);

    // BLEU of these real system outputs: preln bleu against sacrebleu itself (from the venv).
    let hyp = d.path().join("hyp.en");
    let reference = d.path().join("ref.en");
    std::fs::write(&hyp, &cached).unwrap();
    std::fs::write(&reference, "the dog 3 runs home\n\nthe dog 7 runs home\n").unwrap();
    let ours = Command::new(env!("CARGO_BIN_EXE_preln"))
        .args(["bleu", "--ref", reference.to_str().unwrap(), "--json"])
        .stdin(std::fs::File::open(&hyp).unwrap())
        .output()
        .unwrap();
    let ours: serde_json::Value = serde_json::from_slice(&ours.stdout).unwrap();
    let venv = option_env!("PRELN_TORCH_VENV").expect("built by scripts/setup.sh, which sets PRELN_TORCH_VENV");
    let sacre = Command::new(format!("{venv}/bin/python"))
        .args(["-m", "sacrebleu", reference.to_str().unwrap(), "-i", hyp.to_str().unwrap(), "-b", "-w", "6"])
        .output()
        .expect("sacrebleu from the project's environment");
    assert!(sacre.status.success(), "{}", String::from_utf8_lossy(&sacre.stderr));
    let theirs: f64 = String::from_utf8_lossy(&sacre.stdout).trim().parse().unwrap();
    assert!((ours["score"].as_f64().unwrap() - theirs).abs() < 1e-5, "preln {} vs sacrebleu {theirs}", ours["score"]);

    // The independent PyTorch decoder (tools/translate_ref.py) finds the same translations.
    let input = d.path().join("input.de");
    std::fs::write(&input, (0..12).map(|i| format!("der Hund {i} läuft nach Hause\n")).collect::<String>()).unwrap();
    let out = preln(&[
        "bench",
        "translate",
        "--checkpoint",
        run_s,
        "--input",
        input.to_str().unwrap(),
        "--beams",
        "3,1",
        "--vs-pytorch",
        "--device",
        "cpu",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("beam 3 threads") && stdout.contains("PyTorch"), "{stdout}");
    assert_eq!(stdout.matches("identical to preln 12/12").count(), 2, "{stdout}");

    let out = preln(&["train", "--config", "tiny", "--data", data_s, "--out", run_s]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already holds a run"));
    let out = preln(&[
        "train",
        "--config",
        "tiny",
        "--data",
        data_s,
        "--out",
        d.path().join("r2").to_str().unwrap(),
        "--set",
        "train.lr_max=1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("lr_max"), "{err}");
    let out = preln(&["train", "--config", "nosuch", "--data", data_s, "--out", d.path().join("r3").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown preset `nosuch`"));
}

#[test]
fn bleu_reads_stdin_and_prints_sacrebleu_forms() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let r = d.path().join("ref.txt");
    std::fs::write(&r, "a b c d e\nd e f g\n").unwrap();
    let run = |extra: &[&str], input: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_preln"))
            .args(["bleu", "--ref", r.to_str().unwrap()])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(&[], "a b c d\nd e f g\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0 = 88.2 100.0/100.0/100.0/100.0 (BP = 0.882 ratio = 0.889 hyp_len = 8 ref_len = 9)"
    );
    let v: serde_json::Value = serde_json::from_slice(&run(&["--json"], "a b c d\nd e f g\n").stdout).unwrap();
    assert!((v["score"].as_f64().unwrap() - 88.24969025845955).abs() < 1e-9 && v["hyp_len"] == 8);
    let out = run(&[], "a b c d\n");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("has 2"));
}

/// `preln` with extra environment variables, and without the caller's path overrides (so the
/// probe decides unless `env` sets one).
fn preln_env(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_preln"));
    for var in ["PRELN_FAST_PATHS", "PRELN_LINEAR", "PRELN_KERNELS"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).args(args).output().expect("preln runs")
}

#[test]
fn info_names_the_cpu_its_flags_libtorch_and_every_path() {
    let out = preln(&["info"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "CPU: ",
        "CPU flags: avx2",
        "avx512_bf16",
        "libtorch: 2.11.0",
        "path: fp32 linear in training (CPU): ",
        "path: dropout, residual dropout, label-smoothed loss (CPU): ",
        "path: bf16 autocast (CPU): ",
        "path: attention in training (CPU): ",
    ] {
        assert!(text.contains(want), "`{want}` missing from\n{text}");
    }
    let off = preln_env(&[("PRELN_FAST_PATHS", "off")], &["info"]);
    let text = String::from_utf8_lossy(&off.stdout);
    assert!(text.contains("libtorch's linear (MKL) (PRELN_FAST_PATHS=off)"), "{text}");
    assert!(text.contains("shim kernels, portable (PRELN_FAST_PATHS=off)") || text.contains("lacks AVX2"), "{text}");
}

/// A CPU whose libtorch oneDNN refuses its matmul entry, as an AVX2-only CPU does (issue 14's
/// panic). `ONEDNN_MAX_CPU_ISA=AVX2` caps oneDNN at AVX2, so this machine behaves so whatever it
/// has: every command that trains takes another path for its fp32 products, and bf16 on the CPU
/// is refused at start with the reason, never a crash.
#[test]
fn avx2_only_cpu_trains_on_the_fallback_and_refuses_cpu_bf16_at_start() {
    let avx2 = [("ONEDNN_MAX_CPU_ISA", "AVX2"), ("ATEN_CPU_CAPABILITY", "avx2")];
    let info = String::from_utf8_lossy(&preln_env(&avx2, &["info"]).stdout).to_string();
    // oneDNN's matmul entry is refused; its inner product (or, failing that, libtorch's linear)
    // takes the fp32 products.
    let linear = info.lines().find(|l| l.starts_with("path: fp32 linear in training (CPU): ")).unwrap_or_default();
    assert!(
        linear.ends_with("oneDNN inner product (probed against libtorch)")
            || linear.contains("libtorch's linear (MKL) (oneDNN matmul: mkldnn_matmul"),
        "{info}"
    );
    assert!(info.contains("path: bf16 autocast (CPU): refused"), "{info}");

    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path(), 60);
    let run = |name: &str, precision: &str| {
        let out = d.path().join(name);
        let args = [
            "train",
            "--config",
            "tiny",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--set",
            "train.max_updates=3",
            "--set",
            "train.device=\"cpu\"",
            "--set",
            &format!("train.precision=\"{precision}\""),
        ];
        (preln_env(&avx2, &args), out)
    };
    let (fp32, dir) = run("fp32", "fp32");
    let stderr = String::from_utf8_lossy(&fp32.stderr);
    assert!(fp32.status.success(), "{stderr}");
    assert!(dir.join("checkpoints/last.safetensors").exists());

    let (bf16, dir) = run("bf16", "bf16");
    let stderr = String::from_utf8_lossy(&bf16.stderr);
    assert_eq!(bf16.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("train.precision = \"bf16\" on the CPU") && stderr.contains("avx512_bf16"), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("frame #"), "{stderr}");
    assert!(!dir.join("metrics.jsonl").exists(), "bf16 was refused after training started");

    let init = d.path().join("init");
    let out =
        preln_env(&avx2, &[&["analyze", "init", "--seeds", "1", "--out", init.to_str().unwrap()], &TINY[..]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
