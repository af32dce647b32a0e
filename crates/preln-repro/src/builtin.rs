//! The built-in translation task of `preln reproduce` without `--data`: generated here, no
//! download. Sentences of Zipf-distributed pseudo-words in a "source language"; the target is
//! a fixed word-for-word mapping into a second pseudo-language with every pair of neighbouring
//! words swapped (so attention has to reorder). Written as text and prepared exactly like real
//! data (joint BPE, binarized splits, manifest), so training, decoding and BLEU see the same
//! pipeline as with Multi30k.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use preln_data::synthetic::SyntheticTask;
use preln_data::{prepare, Dataset, PrepareSpec};

/// Distinct words per language (the task's vocabulary, special tokens aside).
const WORDS: i64 = 200;
const MIN_WORDS: usize = 3;
const MAX_WORDS: usize = 12;
const SPLITS: [(&str, usize, u64); 3] = [("train", 6000, 1), ("valid", 300, 2), ("test", 300, 3)];
const TASK_SEED: u64 = 2020;
const BPE_VOCAB: usize = 600;

/// A word of a pseudo-language: two or three syllables spelled from the word's number.
fn spell(id: i64, consonants: &[u8], vowels: &[u8]) -> String {
    let (nc, nv) = (consonants.len() as i64, vowels.len() as i64);
    let mut n = id;
    let mut word = String::new();
    loop {
        let syl = n % (nc * nv);
        word.push(consonants[(syl / nv) as usize] as char);
        word.push(vowels[(syl % nv) as usize] as char);
        n /= nc * nv;
        if n == 0 {
            break;
        }
    }
    word
}

fn source_word(id: i64) -> String {
    spell(id, b"bdfgklmnprstvz", b"aeiou")
}

fn target_word(id: i64) -> String {
    spell(id, b"chjqwxy", b"aeiouy")
}

/// The sentences of one split, as (source text, target text).
pub fn sentences(n: usize, seed: u64) -> Vec<(String, String)> {
    let task = SyntheticTask::new(WORDS + 4, MIN_WORDS, MAX_WORDS, TASK_SEED);
    let join = |ids: &[i64], f: fn(i64) -> String| ids.iter().map(|&w| f(w)).collect::<Vec<_>>().join(" ");
    task.pair_iter(seed).take(n).map(|(s, t)| (join(&s, source_word), join(&t, target_word))).collect()
}

/// The prepared folder of the built-in task under `dir`, made when missing.
pub fn ensure(dir: &Path, say: crate::grid::Say) -> Result<PathBuf> {
    let prepared = dir.join("builtin");
    if prepared.join("manifest.json").exists() {
        Dataset::open(&prepared)?;
        return Ok(prepared);
    }
    let text_dir = dir.join("builtin-text");
    std::fs::create_dir_all(&text_dir).with_context(|| format!("creating {}", text_dir.display()))?;
    let mut splits = Vec::new();
    for (name, n, seed) in SPLITS {
        let pairs = sentences(n, seed);
        for (lang, pick) in [("src", 0), ("tgt", 1)] {
            let path = text_dir.join(format!("{name}.{lang}"));
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?,
            );
            for p in &pairs {
                writeln!(f, "{}", if pick == 0 { &p.0 } else { &p.1 })?;
            }
            f.flush()?;
        }
        splits.push((name.to_string(), text_dir.join(name)));
    }
    let spec = PrepareSpec {
        source_lang: "src".into(),
        target_lang: "tgt".into(),
        splits,
        vocab_size: BPE_VOCAB,
        max_len: 256,
        out: prepared.clone(),
        force: true,
    };
    prepare(&spec, say)?;
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_distinct_and_languages_differ() {
        let src: std::collections::HashSet<String> = (4..WORDS + 4).map(source_word).collect();
        let tgt: std::collections::HashSet<String> = (4..WORDS + 4).map(target_word).collect();
        assert_eq!(src.len(), WORDS as usize);
        assert_eq!(tgt.len(), WORDS as usize);
        assert!(src.is_disjoint(&tgt));
    }

    #[test]
    fn sentences_are_deterministic_translations() {
        let a = sentences(20, 5);
        assert_eq!(a, sentences(20, 5));
        for (s, t) in &a {
            let (ns, nt) = (s.split(' ').count(), t.split(' ').count());
            assert_eq!(ns, nt);
            assert!((MIN_WORDS..=MAX_WORDS).contains(&ns));
        }
        // The same source word always becomes the same target word (up to the pair swap).
        let one: Vec<_> = sentences(200, 9).into_iter().filter(|(s, _)| s.split(' ').count() == 3).collect();
        for (s, t) in &one {
            let (sw, tw): (Vec<&str>, Vec<&str>) = (s.split(' ').collect(), t.split(' ').collect());
            for (s2, t2) in &one {
                let (sw2, tw2): (Vec<&str>, Vec<&str>) = (s2.split(' ').collect(), t2.split(' ').collect());
                if sw[2] == sw2[2] {
                    assert_eq!(tw[2], tw2[2]);
                }
            }
        }
    }
}
