//! A prepared data folder, opened for training and analysis.

use std::path::{Path, PathBuf};

use crate::error::{io_error, DataError, Result};
use crate::prepare::{check_ids, ids_file, verify, Manifest, MANIFEST, TOKENIZER};
use crate::store;
use crate::tokenizer::Bpe;

pub struct Dataset {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub tokenizer: Bpe,
}

/// Sentence pairs as regular token ids (no specials).
pub type Pairs = Vec<(Vec<i64>, Vec<i64>)>;

impl Dataset {
    pub fn open(dir: &Path) -> Result<Dataset> {
        let path = dir.join(MANIFEST);
        if !path.exists() {
            return Err(DataError::Invalid {
                path: dir.into(),
                reason: format!("no {MANIFEST}: not a prepared data folder (make one with `preln prepare`)"),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| DataError::Invalid { path: path.clone(), reason: e.to_string() })?;
        let tok_path = dir.join(TOKENIZER);
        let tok_bytes = std::fs::read(&tok_path).map_err(io_error(&tok_path))?;
        verify(dir, &manifest, TOKENIZER, &tok_bytes)?;
        let tokenizer = Bpe::load(&tok_path)?;
        manifest.check(&path, tokenizer.vocab_size())?;
        Ok(Dataset { dir: dir.into(), manifest, tokenizer })
    }

    pub fn split_names(&self) -> Vec<&str> {
        self.manifest.splits.iter().map(|s| s.name.as_str()).collect()
    }

    /// Reads a split, checking its files against the manifest.
    pub fn split(&self, name: &str) -> Result<Pairs> {
        if self.manifest.split(name).is_none() {
            return Err(DataError::Invalid {
                path: self.dir.clone(),
                reason: format!("no split `{name}` (has: {})", self.split_names().join(", ")),
            });
        }
        let side = |lang: &str| -> Result<Vec<Vec<u32>>> {
            let file = ids_file(name, lang);
            let path = self.dir.join(&file);
            let bytes = std::fs::read(&path).map_err(io_error(&path))?;
            verify(&self.dir, &self.manifest, &file, &bytes)?;
            let sentences = store::decode(&bytes, &path)?;
            check_ids(&sentences, self.manifest.vocab_size, &path)?;
            Ok(sentences)
        };
        let (src, tgt) = (side(&self.manifest.source_lang)?, side(&self.manifest.target_lang)?);
        let widen = |v: Vec<u32>| v.into_iter().map(i64::from).collect::<Vec<i64>>();
        Ok(src.into_iter().map(widen).zip(tgt.into_iter().map(widen)).collect())
    }
}
