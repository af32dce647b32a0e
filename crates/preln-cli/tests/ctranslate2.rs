//! `preln export ctranslate2`: CTranslate2 (the `ctranslate2` package of the project's Python
//! environment, through tools/ct2_translate.py) loads the exported Post-LN and Pre-LN models and
//! decodes exactly what `preln` decodes (Pre-LN with RMSNorm too); our int8 file is CTranslate2's own int8 quantization;
//! placements it cannot express are refused and nothing is left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_ok, fails, ok, prepare, tiny_train_args};
use preln_data::tokenizer::Bpe;
use serde_json::{json, Value};

/// A word-reversal task (`q3 q17 q5` -> `z5 z17 z3`) that a tiny model learns only in part in
/// a few epochs, so that its outputs vary and its probabilities are far from one-hot.
fn reversal_data(p: &Path) -> PathBuf {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = |n: u64| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    for (split, n) in [("train", 600), ("valid", 30), ("test", 60)] {
        let (mut de, mut en) = (String::new(), String::new());
        for _ in 0..n {
            let words: Vec<u64> = (0..3 + next(6)).map(|_| next(30)).collect();
            de += &(words.iter().map(|w| format!("q{w}")).collect::<Vec<_>>().join(" ") + "\n");
            en += &(words.iter().rev().map(|w| format!("z{w}")).collect::<Vec<_>>().join(" ") + "\n");
        }
        std::fs::write(p.join(format!("{split}.de")), de).unwrap();
        std::fs::write(p.join(format!("{split}.en")), en).unwrap();
    }
    let data = p.join("data");
    assert_ok(&prepare(p, "train", Some("valid"), 100, &data, &[]), "preln prepare");
    data
}

fn train(data: &Path, run: &Path, placement: &str, epochs: usize) {
    train_with(data, run, placement, "layernorm", epochs)
}

fn train_with(data: &Path, run: &Path, placement: &str, norm: &str, epochs: usize) {
    let (placement, norm, epochs) = (
        format!("model.placement=\"{placement}\""),
        format!("model.norm=\"{norm}\""),
        format!("train.max_epochs={epochs}"),
    );
    let sets = [
        &placement,
        &norm,
        &epochs,
        "train.lr=3e-3",
        "schedule.warmup=20",
        "train.device=\"cpu\"",
        "train.valid_bleu_beam=0",
    ];
    let mut args = tiny_train_args(data, run, &sets);
    args.extend(["--threads".to_string(), "1".to_string()]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// tools/ct2_translate.py on `spec`: its JSON answer.
fn ct2(spec: Value) -> Value {
    let venv = option_env!("PRELN_TORCH_VENV").expect("built by scripts/setup.sh, which sets PRELN_TORCH_VENV");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/ct2_translate.py");
    let mut child = Command::new(format!("{venv}/bin/python"))
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the project's Python environment");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), spec.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tools/ct2_translate.py failed (is `ctranslate2` installed in {venv}? scripts/setup.sh installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn exported_post_and_pre_models_decode_in_ctranslate2_as_in_preln() {
    let d = tempfile::tempdir().unwrap();
    let data = reversal_data(d.path());
    let test_de = d.path().join("test.de");
    let bpe = Bpe::load(&data.join("tokenizer.json")).unwrap();
    let sources: Vec<Vec<String>> =
        std::fs::read_to_string(&test_de).unwrap().lines().map(|l| bpe.pieces(&bpe.encode(l).unwrap())).collect();
    for (placement, norm) in [("post", "layernorm"), ("pre", "layernorm"), ("pre", "rmsnorm")] {
        let name = format!("{placement}-{norm}");
        let run = d.path().join(&name);
        train_with(&data, &run, placement, norm, 6);

        // Our beam search and greedy decoding against CTranslate2's, float32 and int8.
        let table = d.path().join(format!("{name}.json"));
        let run_s = run.to_str().unwrap();
        let reference = d.path().join("test.en");
        let stdout = String::from_utf8(
            common::preln(&[
                "bench",
                "translate",
                "--checkpoint",
                run_s,
                "--input",
                test_de.to_str().unwrap(),
                "--reference",
                reference.to_str().unwrap(),
                "--beams",
                "4,1",
                "--thread-counts",
                "1",
                "--vs-ctranslate2",
                "--device",
                "cpu",
                "--json",
                table.to_str().unwrap(),
            ])
            .stdout,
        )
        .unwrap();
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&table).expect(&stdout)).unwrap();
        let rows = doc["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 6, "{name}: {stdout}");
        for r in rows.iter().filter(|r| r["system"] != "preln") {
            let (same, compared) = (r["identical"].as_u64().unwrap(), r["compared"].as_u64().unwrap());
            // Sentences at the length limit end differently by design (forced EOS vs none);
            // every other one must be decoded to the same tokens in float32.
            assert!(compared >= 45, "{name}: too few sentences end before the limit: {r}");
            if r["system"] == "CTranslate2 float32" {
                assert_eq!(same, compared, "{name}, beam {}: {r}", r["beam"]);
            } else {
                assert!(same * 5 >= compared * 4, "{name}: int8 far from float32: {r}");
            }
            assert!(r["bleu"].as_f64().is_some(), "{r}");
        }

        // Our int8 file holds CTranslate2's own int8 quantization of the float32 export: the
        // same outputs and bit-identical scores as quantizing at load time.
        let (f32_dir, i8_dir) = (d.path().join(format!("{name}-f32")), d.path().join(format!("{name}-i8")));
        ok(&["export", "ctranslate2", "--checkpoint", run_s, "--out", f32_dir.to_str().unwrap()]);
        let stderr = ok(&[
            "export",
            "ctranslate2",
            "--checkpoint",
            run_s,
            "--out",
            i8_dir.to_str().unwrap(),
            "--quantization",
            "int8",
        ]);
        assert!(stderr.contains(&format!("pre_norm = {}", placement == "pre")), "{stderr}");
        for f in ["model.bin", "config.json", "shared_vocabulary.json", "tokenizer.json", "preln_export.json"] {
            assert!(i8_dir.join(f).exists(), "{f} missing");
        }
        assert!(
            std::fs::metadata(i8_dir.join("model.bin")).unwrap().len() * 3
                < std::fs::metadata(f32_dir.join("model.bin")).unwrap().len() * 2
        );
        let decode = |dir: &PathBuf| {
            ct2(json!({"model": dir, "sources": sources, "beam": 4, "lenpen": 1.2, "limits": vec![40; sources.len()],
                       "threads": 1, "compute_type": "int8", "batch_size": 16}))
        };
        let (loaded, ours) = (decode(&f32_dir), decode(&i8_dir));
        assert_eq!(loaded["outputs"], ours["outputs"], "{name}");
        assert_eq!(loaded["scores"], ours["scores"], "{name}");
    }

    // Refusals: an existing directory, and a placement CTranslate2 cannot express; no
    // half-written directory either way.
    let pre = d.path().join("pre-layernorm");
    let existing = d.path().join("pre-layernorm-f32");
    let err =
        fails(&["export", "ctranslate2", "--checkpoint", pre.to_str().unwrap(), "--out", existing.to_str().unwrap()]);
    assert!(err.contains("already exists"), "{err}");
    let sandwich = d.path().join("sandwich");
    train(&data, &sandwich, "sandwich", 1);
    let out = d.path().join("sandwich-ct2");
    let err =
        fails(&["export", "ctranslate2", "--checkpoint", sandwich.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(err.contains("placement `sandwich`") && err.contains("cannot be expressed"), "{err}");
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("sandwich-ct2") || n.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
