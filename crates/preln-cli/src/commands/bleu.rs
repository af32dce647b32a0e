//! `preln bleu`: sacreBLEU-compatible corpus BLEU of stdin against reference files.

use std::io::Read;

use anyhow::{anyhow, Context, Result};
use preln_data::text::read_lines;
use preln_eval::{corpus_bleu, BleuOptions, Tokenize};
use serde_json::json;

use crate::cli::BleuArgs;

pub fn run(args: BleuArgs) -> Result<()> {
    let tokenize: Tokenize = args.tokenize.parse().map_err(|e: String| anyhow!("--tokenize: {e}"))?;
    let refs = args.refs.iter().map(|p| read_lines(p)).collect::<Result<Vec<_>, _>>()?;
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).context("reading hypotheses from stdin")?;
    let text = String::from_utf8(input)
        .map_err(|e| anyhow!("stdin: invalid UTF-8 at byte {}", e.utf8_error().valid_up_to()))?;
    let hyps: Vec<String> = text.lines().map(str::to_string).collect();
    let b = corpus_bleu(&hyps, &refs, BleuOptions { tokenize, lowercase: args.lowercase })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "name": "BLEU", "score": b.score, "precisions": b.precisions, "bp": b.bp, "ratio": b.ratio,
                "hyp_len": b.sys_len, "ref_len": b.ref_len, "counts": b.counts, "totals": b.totals,
                "signature": b.signature,
            }))?
        );
    } else {
        let line = b.line();
        let rest = line.split_once(" = ").map(|x| x.1).unwrap_or("");
        let rest = rest.split_once(' ').map(|x| x.1).unwrap_or("");
        println!("BLEU|{} = {:.*} {rest}", b.signature, args.width, b.score);
    }
    Ok(())
}
