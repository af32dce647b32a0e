//! TensorBoard event files: TensorBoard's own reader (tools/read_tensorboard.py, EventAccumulator)
//! finds exactly the scalars and steps of `metrics.jsonl`, also after a kill and `--resume`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{ok, tiny_data, tiny_train_args};
use serde_json::Value;

type Series = BTreeMap<String, Vec<(u64, f64)>>;

/// What TensorBoard reads from `RUN/tb`: scalars by tag, and the text summaries.
fn tensorboard(run: &Path) -> (Series, Value) {
    let venv = option_env!("PRELN_TORCH_VENV").expect("built by scripts/setup.sh, which sets PRELN_TORCH_VENV");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/read_tensorboard.py");
    let out = Command::new(format!("{venv}/bin/python"))
        .arg(script)
        .arg(run.join("tb"))
        .output()
        .expect("the project's Python environment");
    assert!(
        out.status.success(),
        "tools/read_tensorboard.py failed (is `tensorboard` installed in {venv}? scripts/setup.sh installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut scalars = Series::new();
    for (tag, points) in v["scalars"].as_object().unwrap() {
        let pts = points.as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()));
        scalars.insert(tag.clone(), pts.collect());
    }
    (scalars, v["texts"].clone())
}

/// The scalars `metrics.jsonl` holds, tagged as the run writes them to TensorBoard.
fn from_metrics(run: &Path) -> Series {
    let mut s = Series::new();
    let mut put = |tag: String, step: u64, v: &Value| {
        if let Some(x) = v.as_f64() {
            s.entry(tag).or_default().push((step, x));
        }
    };
    for line in std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        let step = r["step"].as_u64().unwrap();
        match r["kind"].as_str().unwrap() {
            "train" => {
                for k in ["loss", "nll", "lr", "grad_norm", "tokens_per_s"] {
                    put(format!("train/{k}"), step, &r[k]);
                }
            }
            "valid" => {
                for (k, v) in r.as_object().unwrap() {
                    if !["kind", "step", "epoch", "wall_s", "epoch_end"].contains(&k.as_str()) {
                        put(format!("valid/{k}"), step, v);
                    }
                }
            }
            "diag" => {
                for (g, v) in r["grad_norm_groups"].as_object().unwrap() {
                    put(format!("grad_norm/{g}"), step, v);
                }
                for (stack, layers) in r["hidden_sq_norm_over_d"].as_object().into_iter().flatten() {
                    for (l, v) in layers.as_array().unwrap().iter().enumerate() {
                        put(format!("hidden_sq_norm/{stack}/{l}"), step, v);
                    }
                }
            }
            _ => {}
        }
    }
    s
}

/// Same tags, same steps in order, same values to fp32 rounding.
fn assert_same(tb: &Series, metrics: &Series) {
    let (a, b): (Vec<&String>, Vec<&String>) = (tb.keys().collect(), metrics.keys().collect());
    assert_eq!(a, b, "tags differ");
    for (tag, want) in metrics {
        let got = &tb[tag];
        let steps = |v: &[(u64, f64)]| v.iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(steps(got), steps(want), "{tag}: steps differ");
        for ((_, g), (step, w)) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1e-3), "{tag} at {step}: {g} vs {w}");
        }
    }
}

#[test]
fn tensorboard_reads_exactly_the_metrics_also_after_a_kill_and_resume() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path(), 60);
    let run = d.path().join("run");
    let run_s = run.to_str().unwrap();
    let sets = ["train.device=\"cpu\"", "train.valid_bleu_beam=1", "train.save_every=3", "train.diag_every=4"];
    let args = tiny_train_args(&data, &run, &sets);
    // Killed inside the 9th metrics write, after a checkpoint at update 6 and records beyond it.
    let out = Command::new(env!("CARGO_BIN_EXE_preln"))
        .args(&args)
        .env("PRELN_FAULT", "metrics.jsonl:kill@9")
        .output()
        .unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&out.status), Some(9), "killed by the fault hook");
    ok(&["train", "--resume", "--out", run_s]);

    let (scalars, texts) = tensorboard(&run);
    let metrics = from_metrics(&run);
    for tag in ["train/loss", "train/lr", "train/grad_norm", "valid/loss", "valid/ppl", "valid/bleu"] {
        assert!(metrics.contains_key(tag), "{tag} missing from metrics.jsonl");
    }
    assert!(metrics.keys().any(|t| t.starts_with("grad_norm/encoder.layers.")), "{metrics:?}");
    assert!(metrics.keys().any(|t| t.starts_with("hidden_sq_norm/decoder/")), "{metrics:?}");
    let train_steps: Vec<u64> = metrics["train/loss"].iter().map(|p| p.0).collect();
    assert!(train_steps.windows(2).all(|w| w[1] == w[0] + 1), "one record per update: {train_steps:?}");
    assert_same(&scalars, &metrics);
    let config = texts["config"][0][1].as_str().unwrap();
    assert!(config.contains("[model]") && config.contains("placement = \"pre\""), "{config}");

    // Switched off: no event files.
    let quiet = d.path().join("quiet");
    let mut off: Vec<&str> = args.iter().map(String::as_str).collect();
    off[6] = quiet.to_str().unwrap();
    off.extend(["--set", "train.tensorboard=false", "--set", "train.max_epochs=1"]);
    ok(&off);
    assert!(!quiet.join("tb").exists());
}
