//! `preln prepare`: build a data folder from parallel text files.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use preln_data::mlm::{prepare_mlm, PrepareMlmSpec};
use preln_data::{prepare, PrepareSpec};

use crate::cli::{PrepareArgs, PrepareMlmArgs};

pub fn run(args: PrepareArgs) -> Result<()> {
    let mut splits = vec![("train".to_string(), args.trainpref.clone())];
    if let Some(v) = &args.validpref {
        splits.push(("valid".to_string(), v.clone()));
    }
    for (i, t) in args.testpref.iter().enumerate() {
        let name = if i == 0 { "test".to_string() } else { format!("test{i}") };
        splits.push((name, t.clone()));
    }
    let spec = PrepareSpec {
        source_lang: args.source_lang,
        target_lang: args.target_lang,
        splits,
        vocab_size: args.vocab_size,
        max_len: args.max_len,
        out: args.out.clone(),
        force: args.force,
    };
    let start = std::time::Instant::now();
    let manifest = prepare(&spec, |line| eprintln!("{line}"))?;
    eprintln!("vocabulary {} entries; done in {:.1} s", manifest.vocab_size, start.elapsed().as_secs_f64());
    println!("{}", args.out.display());
    Ok(())
}

/// Files as given, folders as their `*.txt` files in name order.
fn text_files(paths: &[PathBuf], flag: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("{flag} {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "txt"))
                .collect();
            if found.is_empty() {
                bail!("{flag} {}: no *.txt files in this folder", p.display());
            }
            found.sort();
            files.extend(found);
        } else if p.exists() {
            files.push(p.clone());
        } else {
            bail!("{flag} {}: no such file or folder", p.display());
        }
    }
    Ok(files)
}

pub fn run_mlm(args: PrepareMlmArgs) -> Result<()> {
    let mut splits = vec![("train".to_string(), text_files(&args.train, "--train")?)];
    for (name, paths, flag) in [("valid", &args.valid, "--valid"), ("test", &args.test, "--test")] {
        if !paths.is_empty() {
            splits.push((name.to_string(), text_files(paths, flag)?));
        }
    }
    let spec = PrepareMlmSpec {
        splits,
        vocab_size: args.vocab_size,
        max_len: args.max_len,
        hold_out: args.hold_out,
        out: args.out.clone(),
        force: args.force,
    };
    let start = std::time::Instant::now();
    let manifest = prepare_mlm(&spec, |line| eprintln!("{line}"))?;
    eprintln!("vocabulary {} entries; done in {:.1} s", manifest.vocab_size, start.elapsed().as_secs_f64());
    println!("{}", args.out.display());
    Ok(())
}
