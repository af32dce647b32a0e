//! What the CLI tests share: running `preln`, and a tiny prepared data folder.
#![allow(dead_code)]

pub mod browser;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn preln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_preln")).args(args).output().expect("preln runs")
}

/// Runs `preln args`, asserting success; returns its stderr.
pub fn ok(args: &[&str]) -> String {
    let out = preln(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "preln {args:?} failed:\n{stderr}");
    stderr
}

/// Runs `preln args`, asserting a clean failure (exit 1, no panic); returns its stderr.
pub fn fails(args: &[&str]) -> String {
    let out = preln(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "preln {args:?} should fail with 1:\n{stderr}");
    assert!(!stderr.contains("panicked"), "preln {args:?} panicked:\n{stderr}");
    stderr
}

/// `preln prepare -s de -t en` of the files `TRAIN.{de,en}` (and `VALID.{de,en}`) under `p`,
/// with a BPE of `vocab`, into `out`; `extra` arguments last.
pub fn prepare(p: &Path, train: &str, valid: Option<&str>, vocab: usize, out: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<String> = ["prepare", "-s", "de", "-t", "en", "--trainpref"].map(String::from).to_vec();
    args.push(p.join(train).display().to_string());
    if let Some(v) = valid {
        args.extend(["--validpref".to_string(), p.join(v).display().to_string()]);
    }
    args.extend(["--vocab-size".to_string(), vocab.to_string(), "--out".to_string(), out.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(env!("CARGO_BIN_EXE_preln")).args(&args).output().expect("preln runs")
}

/// `preln train --config tiny --data DATA --out OUT`, then `--set S` for each of `sets`.
pub fn tiny_train_args(data: &Path, out: &Path, sets: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["train", "--config", "tiny", "--data"].map(String::from).to_vec();
    args.extend([data.display().to_string(), "--out".into(), out.display().to_string()]);
    for s in sets {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    args
}

/// Asserts that `out` succeeded.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Small parallel De-En text (train 200, valid 20 pairs) in `p`, prepared with a BPE of `vocab`
/// into `p/data`.
pub fn tiny_data(p: &Path, vocab: usize) -> PathBuf {
    let de: Vec<String> = (0..200).map(|i| format!("der Hund {} läuft nach Hause", i % 13)).collect();
    let en: Vec<String> = (0..200).map(|i| format!("the dog {} runs home", i % 13)).collect();
    for (split, n) in [("train", 200), ("valid", 20)] {
        std::fs::write(p.join(format!("{split}.de")), de[..n].join("\n")).unwrap();
        std::fs::write(p.join(format!("{split}.en")), en[..n].join("\n")).unwrap();
    }
    let data = p.join("data");
    assert_ok(&prepare(p, "train", Some("valid"), vocab, &data, &[]), "preln prepare");
    data
}

/// A tiny masked-language-model folder: 400 lines of 8 words in `p/text/a.txt`, the first 2,000
/// characters of them held out in `p/held.txt`, prepared with a BPE of 60 and 24-token segments
/// into `p/mlm`.
pub fn tiny_mlm_data(p: &Path) -> PathBuf {
    let text_dir = p.join("text");
    std::fs::create_dir(&text_dir).unwrap();
    let words = ["the", "cat", "dog", "sat", "on", "a", "mat", "ran", "to", "house", "big", "small"];
    let mut body = String::new();
    for i in 0..400 {
        let line: Vec<&str> = (0..8).map(|k| words[(i * 7 + k * 3 + i / 5) % words.len()]).collect();
        body.push_str(&line.join(" "));
        body.push('\n');
    }
    std::fs::write(text_dir.join("a.txt"), &body).unwrap();
    std::fs::write(p.join("held.txt"), &body[..2000]).unwrap();
    let out = p.join("mlm");
    let s = |p: &Path| p.display().to_string();
    let args = ["prepare-mlm", "--train", &s(&text_dir), "--valid", &s(&p.join("held.txt"))];
    ok(&[&args[..], &["--vocab-size", "60", "--max-len", "24", "--out", &s(&out)]].concat());
    out
}
