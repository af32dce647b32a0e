//! `preln prepare`: parallel text files -> a data folder (joint BPE, tokenized splits, manifest).
//! Training reads only this folder. Nothing is written until every input has been read and
//! checked, and the folder appears by a rename, so a failure leaves nothing half-written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{io_error, DataError, Result};
use crate::publish::{check_out, publish_if_ok, staging};
use crate::store;
use crate::text::{lang_file, read_parallel, ParallelText};
use crate::tokenizer::{Bpe, SPECIAL_TOKENS};

pub const MANIFEST: &str = "manifest.json";
pub const TOKENIZER: &str = "tokenizer.json";
const FORMAT: u32 = 1;

#[derive(Clone, Debug)]
pub struct PrepareSpec {
    pub source_lang: String,
    pub target_lang: String,
    /// File prefixes (`PREFIX.SRC`, `PREFIX.TGT`) by split name: `train` first, then any of
    /// `valid`, `test`, `test1`, ...
    pub splits: Vec<(String, PathBuf)>,
    /// Size of the joint BPE vocabulary, special tokens included (the paper used 10k).
    pub vocab_size: usize,
    /// Training pairs with a side longer than this many BPE tokens are dropped and counted.
    pub max_len: usize,
    pub out: PathBuf,
    /// Replace an existing `out`.
    pub force: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub source_lang: String,
    pub target_lang: String,
    pub vocab_size: usize,
    pub special_tokens: Vec<String>,
    pub max_len: usize,
    pub splits: Vec<SplitInfo>,
    /// SHA-256 of every file in the folder but the manifest.
    pub sha256: BTreeMap<String, String>,
    /// SHA-256 of this manifest written without this field: an edited manifest is caught.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_sha256: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitInfo {
    pub name: String,
    pub source_file: PathBuf,
    pub target_file: PathBuf,
    pub lines: usize,
    pub pairs: usize,
    pub source_tokens: usize,
    pub target_tokens: usize,
    pub skipped_empty: usize,
    pub skipped_too_long: usize,
    /// Line numbers (1-based) of the first skipped pairs, to look at.
    pub skipped_lines_sample: Vec<usize>,
}

impl Manifest {
    /// This manifest with its own checksum filled in.
    pub fn sealed(mut self) -> Manifest {
        self.manifest_sha256 = Some(manifest_digest(&self));
        self
    }

    /// Checks the manifest's own checksum (folders written before it existed have none) and
    /// its vocabulary size against the tokenizer's.
    pub fn check(&self, path: &Path, tokenizer_vocab: usize) -> Result<()> {
        check_manifest(self, path, self.manifest_sha256.as_deref(), self.vocab_size, tokenizer_vocab)
    }

    pub fn split(&self, name: &str) -> Option<&SplitInfo> {
        self.splits.iter().find(|s| s.name == name)
    }
}

pub fn ids_file(split: &str, lang: &str) -> String {
    format!("{split}.{lang}.bin")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Prepares the folder; `progress` hears a line per stage.
pub fn prepare(spec: &PrepareSpec, mut progress: impl FnMut(&str)) -> Result<Manifest> {
    if spec.splits.first().map(|s| s.0.as_str()) != Some("train") {
        return Err(DataError::Invalid { path: spec.out.clone(), reason: "the first split must be `train`".into() });
    }
    check_out(&spec.out, spec.force)?;
    if spec.vocab_size <= SPECIAL_TOKENS.len() {
        return Err(DataError::Invalid {
            path: spec.out.clone(),
            reason: format!("vocabulary size {} is too small", spec.vocab_size),
        });
    }
    let mut texts: Vec<(String, PathBuf, PathBuf, ParallelText)> = Vec::new();
    for (name, prefix) in &spec.splits {
        let (s, t) = (lang_file(prefix, &spec.source_lang), lang_file(prefix, &spec.target_lang));
        let text = read_parallel(&s, &t)?;
        progress(&format!("{name}: {} pairs from {} and {}", text.pairs.len(), s.display(), t.display()));
        texts.push((name.clone(), s, t, text));
    }
    let train = &texts[0].3;
    let bpe = Bpe::train(train.pairs.iter().flat_map(|(a, b)| [a.as_str(), b.as_str()]), spec.vocab_size)?;
    progress(&format!("joint BPE: {} entries", bpe.vocab_size()));

    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut splits = Vec::new();
    for (name, s, t, text) in &texts {
        let mut src_ids = Vec::new();
        let mut tgt_ids = Vec::new();
        let mut too_long = Vec::new();
        for (k, (a, b)) in text.pairs.iter().enumerate() {
            let (x, y) = (bpe.encode(a)?, bpe.encode(b)?);
            if name == "train" && (x.len() > spec.max_len || y.len() > spec.max_len) {
                too_long.push(k);
                continue;
            }
            src_ids.push(x);
            tgt_ids.push(y);
        }
        let mut skipped: Vec<usize> = text.skipped_empty.clone();
        skipped.extend(too_long.iter().map(|&k| line_of_pair(text, k)));
        skipped.sort();
        skipped.truncate(20);
        let info = SplitInfo {
            name: name.clone(),
            source_file: s.clone(),
            target_file: t.clone(),
            lines: text.pairs.len() + text.skipped_empty.len(),
            pairs: src_ids.len(),
            source_tokens: src_ids.iter().map(Vec::len).sum(),
            target_tokens: tgt_ids.iter().map(Vec::len).sum(),
            skipped_empty: text.skipped_empty.len(),
            skipped_too_long: too_long.len(),
            skipped_lines_sample: skipped,
        };
        progress(&format!(
            "{name}: {} pairs kept, {} skipped as empty, {} longer than {} tokens",
            info.pairs, info.skipped_empty, info.skipped_too_long, spec.max_len
        ));
        files.push((ids_file(name, &spec.source_lang), store::encode(&src_ids)));
        files.push((ids_file(name, &spec.target_lang), store::encode(&tgt_ids)));
        splits.push(info);
    }

    let tmp = staging(&spec.out)?;
    let result = write_folder(&tmp, spec, &bpe, splits, &files);
    publish_if_ok(result, &tmp, &spec.out, spec.force, Some(MANIFEST))
}

/// Writes the tokenizer, the split files and the sealed manifest into the staging folder.
fn write_folder(
    tmp: &Path,
    spec: &PrepareSpec,
    bpe: &Bpe,
    splits: Vec<SplitInfo>,
    files: &[(String, Vec<u8>)],
) -> Result<Manifest> {
    bpe.save(&tmp.join(TOKENIZER))?;
    let tok_bytes = std::fs::read(tmp.join(TOKENIZER)).map_err(io_error(tmp.join(TOKENIZER)))?;
    let mut sha256 = BTreeMap::from([(TOKENIZER.to_string(), sha256_hex(&tok_bytes))]);
    for (name, bytes) in files {
        std::fs::write(tmp.join(name), bytes).map_err(io_error(tmp.join(name)))?;
        sha256.insert(name.clone(), sha256_hex(bytes));
    }
    let manifest = Manifest {
        format: FORMAT,
        source_lang: spec.source_lang.clone(),
        target_lang: spec.target_lang.clone(),
        vocab_size: bpe.vocab_size(),
        special_tokens: SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect(),
        max_len: spec.max_len,
        splits,
        sha256,
        manifest_sha256: None,
    }
    .sealed();
    let json = serde_json::to_string_pretty(&manifest).expect("manifest serializes");
    std::fs::write(tmp.join(MANIFEST), json).map_err(io_error(tmp.join(MANIFEST)))?;
    Ok(manifest)
}

/// The 1-based line number of the `k`-th kept pair (before length filtering).
fn line_of_pair(text: &ParallelText, k: usize) -> usize {
    let mut line = k + 1;
    for &skipped in &text.skipped_empty {
        if skipped <= line {
            line += 1;
        }
    }
    line
}

/// One checksum for a whole data folder: the SHA-256 of its files' checksums (file names
/// included), so that the same data prepared again (or moved) has the same fingerprint.
pub fn fingerprint(sha256: &BTreeMap<String, String>) -> String {
    sha256_hex(serde_json::to_string(sha256).expect("serializes").as_bytes())
}

/// The SHA-256 of a manifest as JSON without its `manifest_sha256` field.
pub(crate) fn manifest_digest<T: Serialize>(manifest: &T) -> String {
    let mut v = serde_json::to_value(manifest).expect("manifest serializes");
    if let Some(m) = v.as_object_mut() {
        m.remove("manifest_sha256");
    }
    sha256_hex(serde_json::to_string(&v).expect("serializes").as_bytes())
}

/// Checks a manifest's own checksum (folders written before it existed have none) and its
/// vocabulary size against the tokenizer's.
pub(crate) fn check_manifest<T: Serialize>(
    manifest: &T,
    path: &Path,
    own_sha256: Option<&str>,
    vocab_size: usize,
    tokenizer_vocab: usize,
) -> Result<()> {
    let bad = |reason: String| DataError::Invalid { path: path.into(), reason };
    if own_sha256.is_some_and(|want| manifest_digest(manifest) != want) {
        return Err(bad(
            "its content does not match its checksum `manifest_sha256` (edited or corrupt); prepare the folder again"
                .into(),
        ));
    }
    if vocab_size != tokenizer_vocab {
        return Err(bad(format!("`vocab_size` is {vocab_size} but tokenizer.json has {tokenizer_vocab} entries")));
    }
    Ok(())
}

/// Checks that every id of a split file lies in the vocabulary.
pub(crate) fn check_ids(sentences: &[Vec<u32>], vocab_size: usize, path: &Path) -> Result<()> {
    for (i, s) in sentences.iter().enumerate() {
        if let Some(&id) = s.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(DataError::Invalid {
                path: path.into(),
                reason: format!("sentence {} holds token id {id}, outside the vocabulary of {vocab_size}", i + 1),
            });
        }
    }
    Ok(())
}

/// Checks a file of the folder against the manifest's checksum.
pub fn verify(dir: &Path, manifest: &Manifest, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    match manifest.sha256.get(name) {
        Some(expected) if *expected == sha256_hex(bytes) => Ok(()),
        Some(_) => Err(DataError::Invalid {
            path,
            reason: "checksum differs from manifest.json (file changed or corrupt)".into(),
        }),
        None => Err(DataError::Invalid { path, reason: "not listed in manifest.json".into() }),
    }
}
