//! Corpus BLEU against sacrebleu 2.6.0 on the cases of tools/make_bleu_fixtures.py.

use preln_eval::{corpus_bleu, BleuOptions, Tokenize};
use serde_json::Value;

fn cases() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bleu_cases.json");
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e} (run tools/make_bleu_fixtures.py)"));
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[test]
fn agrees_with_sacrebleu() {
    let cases = cases();
    assert!(cases.len() >= 14);
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let hyps = strings(&c["hyps"]);
        let refs: Vec<Vec<String>> = c["refs"].as_array().unwrap().iter().map(strings).collect();
        let opts = BleuOptions {
            tokenize: c["tokenize"].as_str().unwrap().parse::<Tokenize>().unwrap(),
            lowercase: c["lowercase"].as_bool().unwrap(),
        };
        let got = corpus_bleu(&hyps, &refs, opts);
        if let Some(err) = c.get("error") {
            assert!(got.is_err(), "{name}: sacrebleu refused ({err}) but we scored {:?}", got.map(|b| b.score));
            continue;
        }
        let b = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        let e = &c["expected"];
        let close = |a: f64, b: &Value| (a - b.as_f64().unwrap()).abs() < 1e-9;
        assert!(close(b.score, &e["score"]), "{name}: BLEU {} vs sacrebleu {}", b.score, e["score"]);
        assert!((b.score - e["score"].as_f64().unwrap()).abs() < 0.01);
        for n in 0..4 {
            assert!(close(b.precisions[n], &e["precisions"][n]), "{name}: precision {n}");
            assert_eq!(b.counts[n] as u64, e["counts"][n].as_u64().unwrap(), "{name}: count {n}");
            assert_eq!(b.totals[n] as u64, e["totals"][n].as_u64().unwrap(), "{name}: total {n}");
        }
        assert!(close(b.bp, &e["bp"]) && close(b.ratio, &e["ratio"]), "{name}: bp/ratio");
        assert_eq!(
            (b.sys_len as u64, b.ref_len as u64),
            (e["sys_len"].as_u64().unwrap(), e["ref_len"].as_u64().unwrap()),
            "{name}"
        );
        assert_eq!(b.line(), format!("BLEU = {}", e["line"].as_str().unwrap()), "{name}: printed line");
    }
}
