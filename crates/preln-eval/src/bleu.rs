//! Corpus BLEU with sacreBLEU 2.x's defaults: 13a tokenization, n-grams up to 4 clipped by the
//! largest count in any reference, the closest reference length (shorter on ties), exponential
//! smoothing (mteval's `exp`), brevity penalty.

use std::collections::HashMap;

use serde::Serialize;

use crate::tokenize::{preprocess, Tokenize};

pub const MAX_ORDER: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BleuOptions {
    pub tokenize: Tokenize,
    pub lowercase: bool,
}

impl Default for BleuOptions {
    fn default() -> Self {
        BleuOptions { tokenize: Tokenize::Thirteen, lowercase: false }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bleu {
    pub score: f64,
    /// Percent, as sacreBLEU reports them (smoothed where a count is zero).
    pub precisions: [f64; MAX_ORDER],
    pub bp: f64,
    pub ratio: f64,
    pub sys_len: usize,
    pub ref_len: usize,
    pub counts: [usize; MAX_ORDER],
    pub totals: [usize; MAX_ORDER],
    pub signature: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BleuError {
    #[error("the hypotheses have {hyps} lines but reference {which} has {refs}: they must have one line per segment")]
    LengthMismatch { hyps: usize, which: usize, refs: usize },
    #[error("no references given")]
    NoReferences,
}

fn ngrams(words: &[&str]) -> HashMap<Vec<String>, usize> {
    let mut counts = HashMap::new();
    for n in 1..=MAX_ORDER {
        for w in words.windows(n) {
            *counts.entry(w.iter().map(|s| s.to_string()).collect()).or_insert(0) += 1;
        }
    }
    counts
}

fn closest_ref_len(hyp_len: usize, ref_lens: &[usize]) -> usize {
    let mut best: Option<(usize, usize)> = None;
    for &r in ref_lens {
        let diff = hyp_len.abs_diff(r);
        best = match best {
            Some((d, l)) if diff > d || (diff == d && r >= l) => Some((d, l)),
            _ => Some((diff, r)),
        };
    }
    best.map_or(0, |(_, l)| l)
}

/// Corpus BLEU of `hyps` against one or more reference streams (`refs[k][i]` is reference `k`
/// of segment `i`).
pub fn corpus_bleu(hyps: &[String], refs: &[Vec<String>], opts: BleuOptions) -> Result<Bleu, BleuError> {
    if refs.is_empty() {
        return Err(BleuError::NoReferences);
    }
    for (k, r) in refs.iter().enumerate() {
        if r.len() != hyps.len() {
            return Err(BleuError::LengthMismatch { hyps: hyps.len(), which: k + 1, refs: r.len() });
        }
    }
    let (mut correct, mut total) = ([0usize; MAX_ORDER], [0usize; MAX_ORDER]);
    let (mut sys_len, mut ref_len) = (0usize, 0usize);
    for (i, hyp) in hyps.iter().enumerate() {
        let h = preprocess(hyp, opts.tokenize, opts.lowercase);
        let hw: Vec<&str> = h.split(' ').filter(|w| !w.is_empty()).collect();
        let mut max_ref: HashMap<Vec<String>, usize> = HashMap::new();
        let mut ref_lens = Vec::new();
        for r in refs {
            let r = preprocess(&r[i], opts.tokenize, opts.lowercase);
            let rw: Vec<&str> = r.split(' ').filter(|w| !w.is_empty()).collect();
            ref_lens.push(rw.len());
            for (g, c) in ngrams(&rw) {
                let e = max_ref.entry(g).or_insert(0);
                *e = (*e).max(c);
            }
        }
        sys_len += hw.len();
        ref_len += closest_ref_len(hw.len(), &ref_lens);
        for (g, c) in ngrams(&hw) {
            let n = g.len() - 1;
            total[n] += c;
            correct[n] += c.min(max_ref.get(&g).copied().unwrap_or(0));
        }
    }
    Ok(score_from_stats(correct, total, sys_len, ref_len, opts, refs.len()))
}

fn score_from_stats(
    correct: [usize; 4],
    total: [usize; 4],
    sys_len: usize,
    ref_len: usize,
    opts: BleuOptions,
    nrefs: usize,
) -> Bleu {
    let bp = if sys_len < ref_len {
        if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    let mut precisions = [0.0; MAX_ORDER];
    let score = if correct.iter().all(|&c| c == 0) {
        0.0
    } else {
        let mut smooth = 1.0;
        for n in 0..MAX_ORDER {
            if total[n] == 0 {
                break;
            }
            precisions[n] = if correct[n] == 0 {
                smooth *= 2.0;
                100.0 / (smooth * total[n] as f64)
            } else {
                100.0 * correct[n] as f64 / total[n] as f64
            };
        }
        // sacreBLEU's my_log: log(0) counts as -9999999999.
        let logs: f64 = precisions.iter().map(|&p| if p == 0.0 { -9_999_999_999.0 } else { p.ln() }).sum();
        bp * (logs / MAX_ORDER as f64).exp()
    };
    let ratio = if ref_len > 0 { sys_len as f64 / ref_len as f64 } else { 0.0 };
    let signature = format!(
        "nrefs:{nrefs}|case:{}|eff:no|tok:{}|smooth:exp|version:2.6.0",
        if opts.lowercase { "lc" } else { "mixed" },
        opts.tokenize.name()
    );
    Bleu { score, precisions, bp, ratio, sys_len, ref_len, counts: correct, totals: total, signature }
}

impl Bleu {
    /// sacreBLEU's one-line form: `BLEU = 34.12 65.1/40.2/27.3/19.0 (BP = 1.000 ratio = 1.010 hyp_len = ... ref_len = ...)`.
    pub fn line(&self) -> String {
        format!(
            "BLEU = {:.2} {:.1}/{:.1}/{:.1}/{:.1} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            self.score,
            self.precisions[0],
            self.precisions[1],
            self.precisions[2],
            self.precisions[3],
            self.bp,
            self.ratio,
            self.sys_len,
            self.ref_len
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn identical_is_100() {
        let h = s(&["the cat sat on the mat", "a dog ran in the park today"]);
        let b = corpus_bleu(&h, &[h.clone()], BleuOptions::default()).unwrap();
        assert!((b.score - 100.0).abs() < 1e-9, "{b:?}");
        assert_eq!((b.bp, b.sys_len, b.ref_len), (1.0, 13, 13));
    }

    #[test]
    fn hand_computed_with_brevity_penalty() {
        // hyp "the cat sat" vs ref "the cat sat down": p1 = 3/3, p2 = 2/2, p3 = 1/1, p4: 0 of 0
        // -> total[3] = 0 stops the loop, p4 stays 0, log counts as -9999999999: BLEU 0.
        let b = corpus_bleu(&s(&["the cat sat"]), &[s(&["the cat sat down"])], BleuOptions::default()).unwrap();
        assert!(b.score < 1e-100);
        // Four words, one wrong: p = 3/4, 1/3 (2 bigrams of 3 right? "the cat","cat sat" right, "sat up" wrong -> 2/3), ...
        let b = corpus_bleu(&s(&["the cat sat up"]), &[s(&["the cat sat down"])], BleuOptions::default()).unwrap();
        // p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0/1 -> exp smoothing: 100 / (2 * 1) = 50.
        let expected = ((75.0f64).ln() + (200.0f64 / 3.0).ln() + (50.0f64).ln() + (50.0f64).ln()) / 4.0;
        assert!((b.score - expected.exp()).abs() < 1e-9, "{} vs {}", b.score, expected.exp());
    }

    #[test]
    fn closest_reference_length_prefers_shorter_on_ties() {
        assert_eq!(closest_ref_len(5, &[3, 7]), 3);
        assert_eq!(closest_ref_len(5, &[7, 3]), 3);
        assert_eq!(closest_ref_len(5, &[6, 9]), 6);
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let e = corpus_bleu(&s(&["a"]), &[s(&["a", "b"])], BleuOptions::default()).unwrap_err().to_string();
        assert!(e.contains("1 lines") && e.contains("has 2"), "{e}");
    }
}
