//! Masked-language-model data: plain English text -> a BPE with a `<mask>` token -> lines
//! packed into segments of at most `max_len` tokens (`<s>` ... `</s>` included) -> a prepared
//! folder; and BERT's masking (15% of the tokens; of those 80% `<mask>`, 10% a random token,
//! 10% kept), drawn from a seed so that every epoch masks afresh and a resumed run masks the
//! same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

use crate::batch::Specials;
use crate::error::{io_error, DataError, Result};
use crate::prepare::{check_ids, check_manifest, manifest_digest};
use crate::publish::{check_out, publish_if_ok, staging};
use crate::store;
use crate::synthetic::SplitMix64;
use crate::text::read_lines;
use crate::tokenizer::Bpe;

/// The special tokens of an MLM vocabulary: the four of translation ([`Specials`]), then
/// `<mask>`; ordinary tokens follow.
pub struct MlmSpecials;

impl MlmSpecials {
    pub const BASE: Specials = Specials::DEFAULT;
    pub const MASK_TOKEN: &'static str = "<mask>";
    pub const MASK: i64 = Specials::FIRST_REGULAR;
    /// The first id of an ordinary token.
    pub const FIRST_REGULAR: i64 = Self::MASK + 1;
}
pub const MANIFEST: &str = "mlm-manifest.json";
pub const TOKENIZER: &str = "tokenizer.json";

/// What `preln prepare-mlm` makes.
#[derive(Clone, Debug)]
pub struct PrepareMlmSpec {
    /// Split name -> text files (one or more lines each); `train` first, its text learns the BPE.
    pub splits: Vec<(String, Vec<PathBuf>)>,
    pub vocab_size: usize,
    /// Longest segment, `<s>` and `</s>` included.
    pub max_len: usize,
    /// Hold out every `n`-th block of [`HOLD_OUT_BLOCK`] lines of each training file as the
    /// `valid` split (in-domain held-out text) instead of naming one.
    pub hold_out: Option<usize>,
    pub out: PathBuf,
    pub force: bool,
}

/// Lines per block of [`PrepareMlmSpec::hold_out`].
pub const HOLD_OUT_BLOCK: usize = 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlmManifest {
    pub format: u32,
    pub vocab_size: usize,
    pub max_len: usize,
    pub special_tokens: Vec<String>,
    pub splits: Vec<MlmSplitInfo>,
    pub sha256: BTreeMap<String, String>,
    /// SHA-256 of this manifest written without this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_sha256: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlmSplitInfo {
    pub name: String,
    pub files: Vec<String>,
    pub lines: usize,
    pub segments: usize,
    pub tokens: usize,
}

/// Packs consecutive lines into segments of at most `budget` tokens; a line longer than the
/// budget is cut into pieces. `None` marks a document boundary, which no segment crosses.
pub fn pack(lines: impl IntoIterator<Item = Option<Vec<u32>>>, budget: usize) -> Vec<Vec<u32>> {
    assert!(budget > 0, "segment budget must be positive");
    let mut out = Vec::new();
    let mut cur: Vec<u32> = Vec::new();
    for line in lines {
        let Some(mut ids) = line else {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        };
        if !cur.is_empty() && cur.len() + ids.len() > budget {
            out.push(std::mem::take(&mut cur));
        }
        while ids.len() > budget {
            let rest = ids.split_off(budget);
            if cur.is_empty() {
                out.push(ids);
            } else {
                cur.extend(ids);
                out.push(std::mem::take(&mut cur));
            }
            ids = rest;
        }
        cur.extend(ids);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn split_file(name: &str) -> String {
    format!("{name}.bin")
}

/// A split's name and its files' lines.
type SplitTexts = (String, Vec<(PathBuf, Vec<String>)>);

/// Tokenizes and packs the text of `spec`, writing the folder only when everything succeeded.
pub fn prepare_mlm(spec: &PrepareMlmSpec, mut progress: impl FnMut(&str)) -> Result<MlmManifest> {
    let invalid = |reason: String| DataError::Invalid { path: spec.out.clone(), reason };
    if spec.splits.first().is_none_or(|(n, _)| n != "train") {
        return Err(invalid("the first split must be `train`".into()));
    }
    if spec.max_len < 8 {
        return Err(invalid(format!("max_len must be at least 8, got {}", spec.max_len)));
    }
    if let Some(n) = spec.hold_out {
        if n < 2 {
            return Err(invalid(format!("hold_out must be at least 2 (every n-th block held out), got {n}")));
        }
        if spec.splits.iter().any(|(name, _)| name == "valid") {
            return Err(invalid("hold_out makes the `valid` split; do not name one as well".into()));
        }
    }
    check_out(&spec.out, spec.force)?;
    // Read everything first: a bad file fails before anything is written.
    let mut texts: Vec<SplitTexts> = Vec::new();
    for (name, files) in &spec.splits {
        if files.is_empty() {
            return Err(invalid(format!("split `{name}` has no files")));
        }
        let mut read = Vec::new();
        for f in files {
            read.push((f.clone(), read_lines(f)?));
        }
        progress(&format!(
            "{name}: {} lines from {} file(s)",
            read.iter().map(|r| r.1.len()).sum::<usize>(),
            files.len()
        ));
        texts.push((name.clone(), read));
    }
    if let Some(n) = spec.hold_out {
        let (train, held) = hold_out(std::mem::take(&mut texts[0].1), n);
        if held.is_empty() {
            return Err(invalid(format!(
                "hold_out {n}: the training text has no {n}-th block of {HOLD_OUT_BLOCK} lines"
            )));
        }
        texts[0].1 = train;
        texts.insert(1, ("valid".into(), held));
        progress(&format!("held out every {n}-th block of {HOLD_OUT_BLOCK} lines as `valid`"));
    }
    let train_lines = texts[0].1.iter().flat_map(|(_, lines)| lines.iter().map(String::as_str));
    let bpe = Bpe::train_with_specials(
        train_lines.filter(|l| !l.trim().is_empty()),
        spec.vocab_size,
        &[MlmSpecials::MASK_TOKEN],
    )?;
    if bpe.token_id(MlmSpecials::MASK_TOKEN) != Some(MlmSpecials::MASK as u32) {
        return Err(DataError::Tokenizer(format!("{} must have id {}", MlmSpecials::MASK_TOKEN, MlmSpecials::MASK)));
    }
    progress(&format!("BPE: {} entries", bpe.vocab_size()));
    let tmp = staging(&spec.out)?;
    let written = write_mlm_folder(&tmp, spec, &bpe, &texts, &mut progress);
    publish_if_ok(written, &tmp, &spec.out, spec.force, Some(MANIFEST))
}

/// Splits each file's lines into blocks of [`HOLD_OUT_BLOCK`] and holds out every `n`-th. Every
/// contiguous run of lines becomes a document of its own, so that no segment joins text that was
/// not contiguous. Returns (kept, held out).
fn hold_out(
    files: Vec<(PathBuf, Vec<String>)>,
    n: usize,
) -> (Vec<(PathBuf, Vec<String>)>, Vec<(PathBuf, Vec<String>)>) {
    let (mut kept, mut held) = (Vec::new(), Vec::new());
    for (path, lines) in files {
        let mut run: Vec<String> = Vec::new();
        for (b, block) in lines.chunks(HOLD_OUT_BLOCK).enumerate() {
            if b % n == n - 1 {
                if !run.is_empty() {
                    kept.push((path.clone(), std::mem::take(&mut run)));
                }
                held.push((path.clone(), block.to_vec()));
            } else {
                run.extend_from_slice(block);
            }
        }
        if !run.is_empty() {
            kept.push((path, run));
        }
    }
    (kept, held)
}

/// Tokenizes and packs every split into the staging folder `tmp`, with the tokenizer and the
/// sealed manifest.
fn write_mlm_folder(
    tmp: &Path,
    spec: &PrepareMlmSpec,
    bpe: &Bpe,
    texts: &[SplitTexts],
    progress: &mut impl FnMut(&str),
) -> Result<MlmManifest> {
    bpe.save(&tmp.join(TOKENIZER))?;
    let mut splits = Vec::new();
    for (name, files) in texts {
        let mut lines_n = 0;
        let mut encoded: Vec<Option<Vec<u32>>> = Vec::new();
        for (_, lines) in files {
            for l in lines {
                let l = l.trim();
                if l.is_empty() {
                    continue;
                }
                lines_n += 1;
                encoded.push(Some(bpe.encode(l)?));
            }
            encoded.push(None);
        }
        let segments = pack(encoded, spec.max_len - 2);
        let tokens = segments.iter().map(Vec::len).sum();
        progress(&format!("{name}: {lines_n} lines -> {} segments, {tokens} tokens", segments.len()));
        let path = tmp.join(split_file(name));
        std::fs::write(&path, store::encode(&segments)).map_err(io_error(&path))?;
        splits.push(MlmSplitInfo {
            name: name.clone(),
            files: {
                let mut names: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
                names.dedup();
                names
            },
            lines: lines_n,
            segments: segments.len(),
            tokens,
        });
    }
    let mut sha256 = BTreeMap::new();
    for f in std::iter::once(TOKENIZER.to_string()).chain(splits.iter().map(|s| split_file(&s.name))) {
        let bytes = std::fs::read(tmp.join(&f)).map_err(io_error(tmp.join(&f)))?;
        sha256.insert(f, format!("{:x}", Sha256::digest(&bytes)));
    }
    let mut manifest = MlmManifest {
        format: 1,
        vocab_size: bpe.vocab_size(),
        max_len: spec.max_len,
        special_tokens: ["<pad>", "<unk>", "<s>", "</s>", MlmSpecials::MASK_TOKEN].map(String::from).to_vec(),
        splits,
        sha256,
        manifest_sha256: None,
    };
    manifest.manifest_sha256 = Some(manifest_digest(&manifest));
    let m = tmp.join(MANIFEST);
    std::fs::write(&m, serde_json::to_string_pretty(&manifest).expect("manifest serializes")).map_err(io_error(&m))?;
    Ok(manifest)
}

/// A prepared MLM folder.
pub struct MlmDataset {
    pub dir: PathBuf,
    pub manifest: MlmManifest,
    pub tokenizer: Bpe,
}

impl MlmDataset {
    pub fn open(dir: &Path) -> Result<MlmDataset> {
        let m = dir.join(MANIFEST);
        if !m.exists() {
            return Err(DataError::Invalid {
                path: dir.into(),
                reason: format!("no {MANIFEST}: not an MLM data folder (make one with `preln prepare-mlm`)"),
            });
        }
        let text = std::fs::read_to_string(&m).map_err(io_error(&m))?;
        let manifest: MlmManifest =
            serde_json::from_str(&text).map_err(|e| DataError::Invalid { path: m.clone(), reason: e.to_string() })?;
        let tok_path = dir.join(TOKENIZER);
        let tok_bytes = std::fs::read(&tok_path).map_err(io_error(&tok_path))?;
        if manifest.sha256.get(TOKENIZER).is_some_and(|want| *want != format!("{:x}", Sha256::digest(&tok_bytes))) {
            return Err(DataError::Invalid { path: tok_path, reason: "checksum differs from the manifest".into() });
        }
        let tokenizer = Bpe::load(&tok_path)?;
        check_manifest(
            &manifest,
            &m,
            manifest.manifest_sha256.as_deref(),
            manifest.vocab_size,
            tokenizer.vocab_size(),
        )?;
        Ok(MlmDataset { dir: dir.into(), manifest, tokenizer })
    }

    /// The segments of a split, checked against the manifest's checksum.
    pub fn split(&self, name: &str) -> Result<Vec<Vec<u32>>> {
        let file = split_file(name);
        let Some(want) = self.manifest.sha256.get(&file) else {
            let known: Vec<&str> = self.manifest.splits.iter().map(|s| s.name.as_str()).collect();
            return Err(DataError::Invalid {
                path: self.dir.clone(),
                reason: format!("no split `{name}` (splits: {})", known.join(", ")),
            });
        };
        let path = self.dir.join(&file);
        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
        if format!("{:x}", Sha256::digest(&bytes)) != *want {
            return Err(DataError::Invalid { path, reason: "checksum differs from the manifest".into() });
        }
        let segments = store::decode(&bytes, &path)?;
        check_ids(&segments, self.manifest.vocab_size, &path)?;
        Ok(segments)
    }
}

/// BERT's share of tokens to predict.
pub const BERT_MASK_PROB: f64 = 0.15;

/// BERT's masking of one segment: each token is chosen with probability `prob` (BERT: 0.15);
/// of those, 80% become `<mask>`, 10% a random token, 10% stay. Returns (input, target): the
/// target holds the original id at the chosen positions and the pad id (ignored by the loss)
/// elsewhere. At least one token is chosen in every non-empty segment.
pub fn mask_segment(ids: &[u32], vocab_size: i64, prob: f64, seed: u64) -> (Vec<i64>, Vec<i64>) {
    let pad = MlmSpecials::BASE.pad;
    let mut rng = SplitMix64::new(seed);
    let mut input: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let mut target = vec![pad; ids.len()];
    let mut chosen: Vec<usize> = (0..ids.len()).filter(|_| rng.next_f64() < prob).collect();
    if chosen.is_empty() && !ids.is_empty() {
        chosen.push(rng.range(0, ids.len() - 1));
    }
    for i in chosen {
        target[i] = input[i];
        let u = rng.next_f64();
        if u < 0.8 {
            input[i] = MlmSpecials::MASK;
        } else if u < 0.9 {
            input[i] = rng.range(MlmSpecials::FIRST_REGULAR as usize, vocab_size as usize - 1) as i64;
        }
    }
    (input, target)
}

/// A padded MLM batch: `<s>` + masked segment + `</s>`.
#[derive(Debug)]
pub struct MlmBatch {
    /// `[B, T]`
    pub tokens: Tensor,
    /// `[B, T]`, all 0 (one segment).
    pub segments: Tensor,
    /// `[B, T]`: original ids at masked positions, pad elsewhere.
    pub target: Tensor,
    /// Masked (predicted) tokens.
    pub masked: i64,
}

/// Masks `segments` ([`mask_segment`] with `prob`) with one seed each and pads them into a batch.
pub fn mlm_batch(segments: &[&[u32]], seeds: &[u64], vocab_size: i64, prob: f64, device: Device) -> MlmBatch {
    let sp = MlmSpecials::BASE;
    let t = segments.iter().map(|s| s.len() + 2).max().unwrap_or(2);
    let (mut tokens, mut target) = (Vec::new(), Vec::new());
    let mut masked = 0;
    for (s, &seed) in segments.iter().zip(seeds) {
        let (inp, tgt) = mask_segment(s, vocab_size, prob, seed);
        masked += tgt.iter().filter(|&&x| x != sp.pad).count() as i64;
        let fill = t - s.len() - 2;
        tokens.push(sp.bos);
        tokens.extend(inp);
        tokens.push(sp.eos);
        tokens.extend(std::iter::repeat_n(sp.pad, fill));
        target.push(sp.pad);
        target.extend(tgt);
        target.push(sp.pad);
        target.extend(std::iter::repeat_n(sp.pad, fill));
    }
    let b = segments.len() as i64;
    let shape = [b, t as i64];
    MlmBatch {
        tokens: Tensor::from_slice(&tokens).reshape(shape).to_device(device),
        segments: Tensor::zeros(shape, (tch::Kind::Int64, device)),
        target: Tensor::from_slice(&target).reshape(shape).to_device(device),
        masked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_fills_segments_and_respects_documents() {
        let l = |n: u32, len: usize| Some(vec![n; len]);
        let segs = pack([l(1, 3), l(2, 3), l(3, 3), None, l(4, 2)], 7);
        assert_eq!(segs, vec![vec![1, 1, 1, 2, 2, 2], vec![3, 3, 3], vec![4, 4]]);
        // A long line is cut; what is left continues the next segment.
        let segs = pack([l(1, 2), l(2, 9), l(3, 1)], 4);
        assert_eq!(segs, vec![vec![1, 1], vec![2, 2, 2, 2], vec![2, 2, 2, 2], vec![2, 3]]);
        assert!(pack([None, None], 4).is_empty());
        let all: usize = pack((0..50).map(|i| l(i, (i % 7 + 1) as usize)), 10)
            .iter()
            .map(|s| {
                assert!(s.len() <= 10);
                s.len()
            })
            .sum();
        assert_eq!(all, (0..50).map(|i| i % 7 + 1).sum::<usize>());
    }

    #[test]
    fn masking_follows_bert_proportions_and_is_deterministic() {
        let ids: Vec<u32> = (0..100_000).map(|i| 5 + (i % 1000)).collect();
        let (input, target) = mask_segment(&ids, 2000, BERT_MASK_PROB, 7);
        assert_eq!(mask_segment(&ids, 2000, BERT_MASK_PROB, 7), (input.clone(), target.clone()));
        assert_ne!(mask_segment(&ids, 2000, BERT_MASK_PROB, 8).0, input);
        let chosen: Vec<usize> = (0..ids.len()).filter(|&i| target[i] != 0).collect();
        let frac = chosen.len() as f64 / ids.len() as f64;
        assert!((frac - 0.15).abs() < 0.005, "chosen {frac}");
        let masked = chosen.iter().filter(|&&i| input[i] == MlmSpecials::MASK).count() as f64 / chosen.len() as f64;
        let kept = chosen.iter().filter(|&&i| input[i] == i64::from(ids[i])).count() as f64 / chosen.len() as f64;
        assert!((masked - 0.8).abs() < 0.01, "masked {masked}");
        // Kept: 10%, plus random replacements that happen to draw the same token (1/1995).
        assert!((kept - 0.1).abs() < 0.01, "kept {kept}");
        for i in 0..ids.len() {
            if target[i] == 0 {
                assert_eq!(input[i], i64::from(ids[i]), "unchosen tokens are untouched");
            } else {
                assert_eq!(target[i], i64::from(ids[i]));
                assert!(input[i] >= MlmSpecials::FIRST_REGULAR || input[i] == MlmSpecials::MASK);
            }
        }
        let (_, t) = mask_segment(&[9], 2000, BERT_MASK_PROB, 1);
        assert_eq!(t, vec![9], "one token is always chosen");
        let (_, t) = mask_segment(&ids, 2000, 0.4, 7);
        let frac = t.iter().filter(|&&x| x != 0).count() as f64 / ids.len() as f64;
        assert!((frac - 0.4).abs() < 0.005, "chosen at 0.4: {frac}");
    }

    #[test]
    fn batches_add_cls_sep_and_padding() {
        let (a, b): (Vec<u32>, Vec<u32>) = (vec![10, 11, 12], vec![20]);
        let batch = mlm_batch(&[&a, &b], &[1, 2], 100, BERT_MASK_PROB, Device::Cpu);
        assert_eq!(batch.tokens.size(), vec![2, 5]);
        let row1 = Vec::<i64>::try_from(batch.tokens.get(1)).unwrap();
        assert_eq!((row1[0], row1[2], row1[3], row1[4]), (2, 3, 0, 0));
        let tgt = Vec::<i64>::try_from(batch.target.get(1)).unwrap();
        assert_eq!(tgt, vec![0, 20, 0, 0, 0]);
        let masked = batch.target.ne(0).sum(tch::Kind::Int64).int64_value(&[]);
        assert_eq!(batch.masked, masked);
    }

    #[test]
    fn hold_out_keeps_every_nth_block_of_each_file_apart() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a.txt"), d.path().join("b.txt"));
        // 100 lines in a (blocks 0-4), 45 in b (blocks 0-2, the last one short).
        let lines = |tag: &str, n: usize| (0..n).map(|i| format!("{tag} line {i} of the text\n")).collect::<String>();
        std::fs::write(&a, lines("alpha", 100)).unwrap();
        std::fs::write(&b, lines("beta", 45)).unwrap();
        let out = d.path().join("mlm");
        let spec = |hold_out, splits| PrepareMlmSpec {
            splits,
            vocab_size: 120,
            max_len: 64,
            hold_out,
            out: out.clone(),
            force: false,
        };
        let m = prepare_mlm(&spec(Some(3), vec![("train".into(), vec![a.clone(), b.clone()])]), |_| {}).unwrap();
        // Held out: block 2 of a (lines 40-59) and block 2 of b (lines 40-44).
        assert_eq!((m.splits[0].name.as_str(), m.splits[0].lines), ("train", 120));
        assert_eq!((m.splits[1].name.as_str(), m.splits[1].lines), ("valid", 25));
        assert_eq!(m.splits[0].files.len(), 2, "each file named once: {:?}", m.splits[0].files);
        let ds = MlmDataset::open(&out).unwrap();
        let text: Vec<String> = ds.split("valid").unwrap().iter().map(|s| ds.tokenizer.decode(s).unwrap()).collect();
        let joined = text.join(" ");
        assert!(joined.contains("alpha line 40 ") && joined.contains("alpha line 59 "), "{joined}");
        assert!(joined.contains("beta line 44 ") && !joined.contains("alpha line 39 "), "{joined}");
        // No segment joins text that was not contiguous: line 39 and line 60 of a are in training
        // segments, never in one with each other.
        for s in ds.split("train").unwrap() {
            let t = ds.tokenizer.decode(&s).unwrap();
            assert!(!(t.contains("alpha line 39 ") && t.contains("alpha line 60 ")), "{t}");
        }
        let e = prepare_mlm(&spec(Some(1), vec![("train".into(), vec![a.clone()])]), |_| {}).unwrap_err();
        assert!(e.to_string().contains("at least 2"), "{e}");
        let both = vec![("train".into(), vec![a.clone()]), ("valid".into(), vec![b])];
        let e = prepare_mlm(&spec(Some(3), both), |_| {}).unwrap_err();
        assert!(e.to_string().contains("do not name one"), "{e}");
    }

    #[test]
    fn prepare_writes_a_checked_folder() {
        let d = tempfile::tempdir().unwrap();
        let text = d.path().join("a.txt");
        let mut body = String::new();
        for i in 0..300 {
            body.push_str(&format!("the cat number {i} sat on the mat and looked at the dog\n\n"));
        }
        std::fs::write(&text, &body).unwrap();
        let held = d.path().join("h.txt");
        std::fs::write(&held, "the dog sat on the cat\n").unwrap();
        let out = d.path().join("mlm");
        let spec = PrepareMlmSpec {
            splits: vec![("train".into(), vec![text.clone()]), ("valid".into(), vec![held])],
            vocab_size: 200,
            max_len: 16,
            hold_out: None,
            out: out.clone(),
            force: false,
        };
        let m = prepare_mlm(&spec, |_| {}).unwrap();
        assert_eq!(m.splits[0].lines, 300);
        let ds = MlmDataset::open(&out).unwrap();
        let train = ds.split("train").unwrap();
        assert_eq!(train.len(), m.splits[0].segments);
        assert!(train.iter().all(|s| s.len() <= 14 && !s.is_empty()));
        assert_eq!(ds.tokenizer.decode(&ds.split("valid").unwrap()[0]).unwrap(), "the dog sat on the cat");
        assert!(prepare_mlm(&spec, |_| {}).unwrap_err().to_string().contains("already exists"));
        std::fs::write(out.join("train.bin"), b"PRELNIDSxxxx").unwrap();
        assert!(ds.split("train").unwrap_err().to_string().contains("checksum"));
        assert!(ds.split("nope").unwrap_err().to_string().contains("splits: train, valid"));
    }
}
