//! What the CLI tests share: running `preln`, and a tiny prepared data folder.
#![allow(dead_code)]

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
    ok(&[
        "prepare",
        "-s",
        "de",
        "-t",
        "en",
        "--trainpref",
        p.join("train").to_str().unwrap(),
        "--validpref",
        p.join("valid").to_str().unwrap(),
        "--vocab-size",
        &vocab.to_string(),
        "--out",
        data.to_str().unwrap(),
    ]);
    data
}
