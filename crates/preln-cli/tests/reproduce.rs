//! `preln reproduce` end to end with tiny models on the built-in task: the grid's runs, the
//! report, skipping finished runs, refusing a changed config, resuming an interrupted run.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn preln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_preln")).args(args).output().expect("preln runs")
}

fn ok(args: &[&str]) -> String {
    let out = preln(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "preln {args:?} failed:\n{stderr}");
    stderr
}

/// Every run of the grid shrunk to seconds.
const TINY: [&str; 14] = [
    "--set",
    "model.d_model=16",
    "--set",
    "model.ffn_dim=32",
    "--set",
    "model.heads=2",
    "--set",
    "model.encoder_layers=2",
    "--set",
    "model.decoder_layers=2",
    "--set",
    "train.max_epochs=2",
    "--set",
    "train.valid_bleu_beam=1",
];

const TINY_MODEL: [&str; 10] = ["--layers", "2", "--d-model", "16", "--ffn-dim", "32", "--heads", "2", "--vocab", "60"];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&read(path)).unwrap()
}

fn valid_lines(run: &Path) -> Vec<serde_json::Value> {
    read(&run.join("metrics.jsonl"))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "valid")
        .collect()
}

#[test]
fn warmup_pair_and_init_studies_make_a_report_and_rerun_skips_them() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("rep");
    let out_s = out.to_str().unwrap();
    // Tiny initialization studies in place: `reproduce all` keeps them instead of running the
    // paper-sized ones.
    let mut init = vec!["analyze", "init", "--seeds", "2", "--tokens", "200", "--device", "cpu"];
    init.extend(TINY_MODEL);
    let init_out = out.join("init");
    init.extend(["--out", init_out.to_str().unwrap()]);
    ok(&init);
    let depth_out = out.join("depth");
    let mut depth = vec!["analyze", "depth", "--seeds", "2", "--tokens", "200", "--depths", "2,3", "--device", "cpu"];
    depth.extend(TINY_MODEL);
    depth.extend(["--out", depth_out.to_str().unwrap()]);
    ok(&depth);

    let runs = "post-adam-1e-3-nowarmup,post-adam-1e-3-warmup";
    let mut args = vec!["reproduce", "all", "--out", out_s, "--only", runs, "--jobs", "2"];
    args.extend(TINY);
    let out1 = preln(&args);
    let stderr = String::from_utf8_lossy(&out1.stderr);
    assert!(out1.status.success(), "{stderr}");
    assert!(stderr.contains("init study: ") && stderr.contains("(kept)"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out1.stdout);
    for f in ["report.md", "report.html", "fig2_post_ln_warmup.png"] {
        assert!(stdout.contains(f), "{f} not listed:\n{stdout}");
        assert!(out.join(f).exists(), "{f} missing");
    }

    // Each run finished its 2 epochs with loss and BLEU every epoch; the warmup run's warmup is
    // the paper's 4000 scaled by the run's length against 15 x 1100 updates.
    let warm = out.join("post-adam-1e-3-warmup");
    let state = json(&warm.join("checkpoints/last.json"));
    assert_eq!(state["done"], true);
    let steps = state["step"].as_u64().unwrap();
    let cfg: toml::Table = toml::from_str(&read(&warm.join("config.toml"))).unwrap();
    let warmup = cfg["schedule"]["warmup"].as_integer().unwrap() as u64;
    assert_eq!(warmup, ((4000 * steps) as f64 / 16500.0).round().max(2.0) as u64);
    assert_eq!(cfg["model"]["d_model"].as_integer(), Some(16));
    let nowarm = out.join("post-adam-1e-3-nowarmup");
    let cfg: toml::Table = toml::from_str(&read(&nowarm.join("config.toml"))).unwrap();
    assert_eq!(cfg["schedule"]["warmup"].as_integer(), Some(1));
    for run in [&warm, &nowarm] {
        let v = valid_lines(run);
        assert_eq!(v.len(), 2, "{}", run.display());
        assert!(v.iter().all(|l| l["loss"].as_f64().unwrap().is_finite() && l["bleu"].as_f64().is_some()));
    }

    // The report: the claim this pair decides, with the measured numbers; Figure 3 claims from
    // the init studies; both runs in the table; configs; images embedded in the HTML.
    let md = read(&out.join("report.md"));
    let last_loss = valid_lines(&warm)[1]["loss"].as_f64().unwrap();
    assert!(md.contains("| Post-LN needs warmup (Adam, lr_max 1e-3) |"), "{md}");
    assert!(md.contains(&format!("with warmup: valid loss {last_loss:.3}")), "{md}");
    assert!(md.contains("reproduced"), "{md}");
    assert!(md.contains("At initialization Post-LN's FFN gradients grow"), "{md}");
    assert!(md.contains("Theorem 1"), "{md}");
    assert!(md.contains("| `post-adam-1e-3-warmup` | Post-LN | Adam | 0.001 |"), "{md}");
    assert!(md.contains("![Figure 3](init/fig3_ffn_grad_norms.png)"), "{md}");
    assert!(md.contains(&format!("warmup = {warmup}")), "{md}");
    let html = read(&out.join("report.html"));
    assert!(html.matches("data:image/png;base64,").count() >= 4, "images not embedded");
    assert!(!html.contains("src=\"init/"), "HTML must not link files");
    // In a real browser: every figure loads, no error, a screenshot.
    let shot = out.join("report.png");
    if let Some(page) = common::browser::check_page(&out.join("report.html"), &shot) {
        assert!(page.images >= 4 && page.broken.is_empty() && page.errors.is_empty(), "{page:?}");
        assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "screenshot");
    }

    // A second invocation keeps both runs as they are.
    let before = read(&warm.join("metrics.jsonl"));
    let stderr = ok(&args);
    assert!(stderr.contains("2 of 2 runs already finished"), "{stderr}");
    assert_eq!(read(&warm.join("metrics.jsonl")), before);

    // Changing the grid's config under finished runs is refused, naming the run.
    let mut changed = args.clone();
    changed.extend(["--set", "train.lr=3e-4"]);
    let o = preln(&changed);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("post-adam-1e-3-nowarmup") && stderr.contains("different config"),
        "{stderr}"
    );
}

#[test]
fn unknown_run_names_are_listed() {
    let d = tempfile::tempdir().unwrap();
    let o = preln(&["reproduce", "warmup", "--out", d.path().to_str().unwrap(), "--only", "post-adam-nosuch"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("no run `post-adam-nosuch`"), "{stderr}");
    assert!(stderr.contains("pre-adam-5e-4-nowarmup"), "{stderr}");
}

#[test]
fn an_interrupted_reproduction_resumes_its_run() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("rep");
    let mut args =
        vec!["reproduce", "warmup", "--out", out.to_str().unwrap(), "--only", "pre-adam-5e-4-nowarmup", "--jobs", "1"];
    args.extend(TINY);
    args.extend(["--set", "train.save_every=5", "--set", "train.max_epochs=3", "--set", "model.d_model=32"]);
    let mut parent = Command::new(env!("CARGO_BIN_EXE_preln"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = out.join("pre-adam-5e-4-nowarmup");
    let started = Instant::now();
    // Wait for a mid-run checkpoint, then kill the trainer and the parent, as a crash would.
    loop {
        assert!(started.elapsed() < Duration::from_secs(300), "no checkpoint appeared");
        let state = std::fs::read_to_string(run.join("checkpoints/last.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        if let (Some(s), Ok(pid)) = (state, std::fs::read_to_string(run.join("training.pid"))) {
            assert_eq!(s["done"], false, "the run finished before it could be interrupted");
            if s["step"].as_u64().unwrap() >= 5 {
                Command::new("kill").args(["-9", pid.trim()]).status().unwrap();
                parent.kill().unwrap();
                parent.wait().unwrap();
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let interrupted = json(&run.join("checkpoints/last.json"))["step"].as_u64().unwrap();
    let stderr = ok(&args);
    assert!(stderr.contains(&format!("resuming at update {interrupted}")), "{stderr}");
    let state = json(&run.join("checkpoints/last.json"));
    assert_eq!(state["done"], true);
    // The metrics read as one run: validation once per epoch, training steps strictly increasing.
    assert_eq!(valid_lines(&run).len(), 3);
    let steps: Vec<u64> = read(&run.join("metrics.jsonl"))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
}

#[test]
fn the_stability_map_trains_its_cells_reports_them_and_keeps_them() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("stab");
    let out_s = out.to_str().unwrap();
    // A tiny depth scan in place of the scale's (kept, as the init studies are).
    let scan = out.join("stability-depth");
    let mut depth = vec!["analyze", "depth", "--seeds", "2", "--tokens", "200", "--depths", "2,4", "--device", "cpu"];
    depth.extend(TINY_MODEL);
    depth.extend(["--placements", "post,pre", "--out", scan.to_str().unwrap()]);
    ok(&depth);

    let cells = "post-L6-lr2e-3-w0,rezero-L6-lr2e-3-w0";
    let mut args = vec!["reproduce", "stability", "--placements", "post,pre,rezero", "--out", out_s, "--only", cells];
    // The grid's tiny width (not its depth: the cells set their own), 30 updates.
    args.extend(&TINY[..6]);
    args.extend(["--set", "train.max_updates=30"]);
    let o = preln(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("depth scan: ") && stderr.contains("(kept)"), "{stderr}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    for f in ["stability.json", "stability_map.png", "stability.md", "stability.html"] {
        assert!(stdout.contains(f) && out.join(f).exists(), "{f}:\n{stdout}");
    }

    // 3 placements x 2 depths x 3 lrs x 2 warmups; the two cells asked for finished, each with
    // 30 updates of its own placement at 6 layers.
    let map = json(&out.join("stability.json"));
    let all = map["cells"].as_array().unwrap();
    assert_eq!(all.len(), 36);
    let finished: Vec<&serde_json::Value> = all.iter().filter(|c| c["outcome"]["kind"] != "not_run").collect();
    assert_eq!(finished.len(), 2, "{map}");
    for c in &finished {
        assert!(["trained", "stuck", "diverged"].contains(&c["outcome"]["kind"].as_str().unwrap()), "{c}");
        assert_eq!((c["depth"].as_i64(), c["lr"].as_f64(), c["warmup"].as_u64()), (Some(6), Some(2e-3), Some(0)));
    }
    let cfg: toml::Table = toml::from_str(&read(&out.join("stability/rezero-L6-lr2e-3-w0/config.toml"))).unwrap();
    assert_eq!(cfg["model"]["placement"].as_str(), Some("rezero"));
    assert_eq!(cfg["model"]["encoder_layers"].as_integer(), Some(6));
    assert_eq!(cfg["train"]["max_updates"].as_integer(), Some(30));
    let baseline = map["baseline_nll"].as_f64().unwrap();
    assert!(baseline > 1.0 && baseline < 8.0, "{baseline}");

    // The report: the table of largest lrs, the Theorem 1 claim from the kept scan, every cell.
    let md = read(&out.join("stability.md"));
    assert!(md.contains("## The largest peak lr that trains without warmup"), "{md}");
    assert!(md.contains("| Post-LN | "), "{md}");
    assert!(md.contains("Pre-LN's last-layer gradients shrink with depth"), "{md}");
    assert!(md.contains("| ReZero | 6 | 2e-3 | 0 | "), "{md}");
    assert!(read(&out.join("stability.html")).contains("data:image/png;base64,"));
    if let Some(page) = common::browser::check_page(&out.join("stability.html"), &out.join("stability.png")) {
        assert!(page.images == 2 && page.broken.is_empty() && page.errors.is_empty(), "{page:?}");
    }

    // Rerunning keeps the finished cells; an unknown cell is refused with the naming scheme.
    assert!(ok(&args).contains("2 of 2 runs already finished"));
    let o = preln(&["reproduce", "stability", "--out", out_s, "--only", "post-L7-lr1-w0"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("no cell `post-L7-lr1-w0`") && stderr.contains("post-L6-lr5e-4-w0"),
        "{stderr}"
    );
}
