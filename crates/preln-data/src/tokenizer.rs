//! The joint BPE vocabulary (Hugging Face `tokenizers`), with SentencePiece-style word-boundary
//! markers (Metaspace `▁`), so that decoding gives back the exact text, spacing included (one
//! leading space of a line is the exception: it merges with the word-boundary marker).

use std::path::Path;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::batch::Specials;
use crate::error::{DataError, Result};

/// Special tokens in id order: they take ids 0..4, matching [`Specials::DEFAULT`].
pub const SPECIAL_TOKENS: [&str; 4] = ["<pad>", "<unk>", "<s>", "</s>"];

pub struct Bpe {
    inner: Tokenizer,
}

fn tk_error(e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer(e.to_string())
}

fn metaspace() -> Metaspace {
    Metaspace::new('▁', PrependScheme::Always, true)
}

impl Bpe {
    /// Learns a BPE of (at most) `vocab_size` entries, specials included, from `texts`.
    pub fn train<'a>(texts: impl Iterator<Item = &'a str> + Send, vocab_size: usize) -> Result<Bpe> {
        Self::train_with_specials(texts, vocab_size, &[])
    }

    /// As [`Self::train`], with `extra` special tokens after the four standard ones (ids 4, 5, ...).
    pub fn train_with_specials<'a>(
        texts: impl Iterator<Item = &'a str> + Send,
        vocab_size: usize,
        extra: &[&str],
    ) -> Result<Bpe> {
        let model = BPE::builder().unk_token(SPECIAL_TOKENS[1].to_string()).build().map_err(tk_error)?;
        let mut tokenizer =
            TokenizerBuilder::<BPE, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>::new(
            )
            .with_model(model)
            .with_normalizer(None)
            .with_pre_tokenizer(Some(PreTokenizerWrapper::Metaspace(metaspace())))
            .with_post_processor(None)
            .with_decoder(Some(DecoderWrapper::Metaspace(metaspace())))
            .build()
            .map_err(tk_error)?;
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(SPECIAL_TOKENS.iter().chain(extra).map(|t| AddedToken::from(t.to_string(), true)).collect())
            .build();
        tokenizer.train(&mut trainer, texts).map_err(tk_error)?;
        let bpe = Bpe { inner: tokenizer.into() };
        bpe.check_specials()?;
        Ok(bpe)
    }

    pub fn load(path: &Path) -> Result<Bpe> {
        let inner =
            Tokenizer::from_file(path).map_err(|e| DataError::Invalid { path: path.into(), reason: e.to_string() })?;
        let bpe = Bpe { inner };
        bpe.check_specials().map_err(|e| DataError::Invalid { path: path.into(), reason: e.to_string() })?;
        Ok(bpe)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, false).map_err(tk_error)
    }

    fn check_specials(&self) -> Result<()> {
        let sp = Specials::DEFAULT;
        for (token, id) in SPECIAL_TOKENS.iter().zip([sp.pad, sp.unk, sp.bos, sp.eos]) {
            if self.inner.token_to_id(token) != Some(id as u32) {
                return Err(DataError::Tokenizer(format!("special token {token} must have id {id}")));
            }
        }
        Ok(())
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, without specials.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, false).map_err(tk_error)?.get_ids().to_vec())
    }

    /// The text of `ids`; special tokens are dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tk_error)
    }

    /// The id of a token, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The pieces of `ids`, for display.
    pub fn pieces(&self, ids: &[u32]) -> Vec<String> {
        ids.iter().map(|&i| self.inner.id_to_token(i).unwrap_or_else(|| "<?>".into())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        let words = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "in", "park", "Straße", "über"];
        (0..400).map(|i| (0..6).map(|j| words[(i * 7 + j * 3) % words.len()]).collect::<Vec<_>>().join(" ")).collect()
    }

    #[test]
    fn unseen_characters_become_unk() {
        let text = corpus();
        let bpe = Bpe::train(text.iter().map(String::as_str), 60).unwrap();
        assert!(bpe.vocab_size() <= 60);
        assert!(bpe.encode("the 猫").unwrap().contains(&(Specials::DEFAULT.unk as u32)));
    }

    fn s_decoded(bpe: &Bpe, s: &str) -> String {
        bpe.decode(&bpe.encode(s).unwrap()).unwrap()
    }

    #[test]
    fn known_text_round_trips_exactly() {
        let text = corpus();
        let bpe = Bpe::train(text.iter().map(String::as_str), 80).unwrap();
        for s in ["the cat sat on the mat", "a  dog ran in the park", "über  Straße ", "Straße"] {
            assert_eq!(s_decoded(&bpe, s), s, "{:?}", bpe.pieces(&bpe.encode(s).unwrap()));
        }
    }

    #[test]
    fn specials_take_the_first_ids_and_save_load() {
        let text = corpus();
        let bpe = Bpe::train(text.iter().map(String::as_str), 50).unwrap();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tokenizer.json");
        bpe.save(&p).unwrap();
        let again = Bpe::load(&p).unwrap();
        assert_eq!(again.encode("the dog").unwrap(), bpe.encode("the dog").unwrap());
        assert_eq!(bpe.pieces(&[0, 1, 2, 3]), vec!["<pad>", "<unk>", "<s>", "</s>"]);
    }
}
