//! `preln prepare`: build a data folder from parallel text files.

use anyhow::Result;
use preln_data::{prepare, PrepareSpec};

use crate::cli::PrepareArgs;

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
