//! The encoder-decoder Transformer for translation (PAPER.md, Table 1; fairseq conventions).

use tch::nn;
use tch::Tensor;

use crate::config::Seq2SeqConfig;
use crate::embedding::{lookup, sinusoidal};
use crate::error::Result;
use crate::init::{embedding_std, embedding_weight};
use crate::mask;
use crate::placement::StackRole;
use crate::stack::{Decoder, DecoderCache, Encoder, StackOut};
use crate::sublayer::AdminProfile;

/// Embedding matrices. With sharing, all three are the one variable `embed_tokens.weight`.
#[derive(Debug)]
struct Embeddings {
    encoder: Tensor,
    decoder: Tensor,
    output: Tensor,
}

#[derive(Debug)]
pub struct Seq2Seq {
    cfg: Seq2SeqConfig,
    embed: Embeddings,
    encoder: Encoder,
    decoder: Decoder,
}

/// The encoder's output and the mask the decoder needs to attend over it.
pub struct Encoded {
    pub stack: StackOut,
    /// `[B, 1, 1, S]`, `true` = real token.
    pub mask: Tensor,
}

pub struct Decoded {
    /// `[B, T, V]`
    pub logits: Tensor,
    pub stack: StackOut,
}

impl Seq2Seq {
    /// Creates the variables under `p`; paths are `embed_tokens.weight`,
    /// `encoder.layers.{i}.{self_attn,ffn}.*`, the norm slots of each sublayer
    /// (`encoder.layers.{i}.ffn_norm.*`, ..., see [`crate::sublayer::Residual::new`]), the outer
    /// norms `encoder.{embed_norm,final_norm}.*` where the placement has them, and the same
    /// under `decoder` with `cross_attn`.
    pub fn new(p: &nn::Path, cfg: &Seq2SeqConfig) -> Result<Self> {
        cfg.validate()?;
        let (v, d) = (cfg.vocab_size, cfg.d_model);
        let std = embedding_std(crate::WeightInit::Xavier, d);
        let pad = Some(cfg.pad_id);
        let embed = if cfg.share_embeddings {
            let w = embedding_weight(&(p / "embed_tokens"), "weight", v, d, std, pad);
            Embeddings { encoder: w.shallow_clone(), decoder: w.shallow_clone(), output: w }
        } else {
            Embeddings {
                encoder: embedding_weight(&(p / "encoder" / "embed_tokens"), "weight", v, d, std, pad),
                decoder: embedding_weight(&(p / "decoder" / "embed_tokens"), "weight", v, d, std, pad),
                output: embedding_weight(&(p / "decoder" / "output_projection"), "weight", v, d, std, None),
            }
        };
        let layer = cfg.layer();
        let (encoder, decoder) = (cfg.encoder_layers, cfg.decoder_layers);
        Ok(Seq2Seq {
            cfg: cfg.clone(),
            embed,
            encoder: Encoder::new(p / "encoder", &layer, StackRole::Encoder { encoder, decoder }),
            decoder: Decoder::new(p / "decoder", &layer, StackRole::Decoder { encoder, decoder }),
        })
    }

    /// Finishes initialization on a batch where the placement asks for it (Admin's profiling
    /// pass sets every omega); other placements are left untouched.
    ///
    /// # Shapes
    /// src: `[B, S]`; prev: `[B, T]`
    pub fn profile_init(&self, src: &Tensor, prev: &Tensor) {
        if self.cfg.placement.profiles_init() {
            let stacks: [&AdminProfile; 2] = [self.encoder.profile(), self.decoder.profile()];
            stacks.iter().for_each(|s| s.start());
            tch::no_grad(|| self.forward(src, prev, false));
            stacks.iter().for_each(|s| s.stop());
        }
    }

    pub fn config(&self) -> &Seq2SeqConfig {
        &self.cfg
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// `Dropout(sqrt(d) * E[tokens] + PE[start..])`.
    ///
    /// # Shapes
    /// tokens: `[B, T]` -> `[B, T, d]`
    fn embed(&self, weight: &Tensor, tokens: &Tensor, start: i64, train: bool) -> Tensor {
        let d = self.cfg.d_model;
        let t = tokens.size()[1];
        let x = lookup(weight, tokens, self.cfg.pad_id) * (d as f64).sqrt()
            + sinusoidal(start, t, d, (weight.kind(), tokens.device())).unsqueeze(0);
        preln_ops::dropout(&x, self.cfg.dropout, train)
    }

    /// # Shapes
    /// src: `[B, S]` token ids, right-padded
    pub fn encode(&self, src: &Tensor, train: bool) -> Encoded {
        let mask = mask::key_padding(src, self.cfg.pad_id);
        let x = self.embed(&self.embed.encoder, src, 0, train);
        Encoded { stack: self.encoder.forward(&x, &mask, train), mask }
    }

    /// Teacher-forced decoding of the whole target prefix at once.
    ///
    /// # Shapes
    /// prev: `[B, T]` decoder input (target shifted right, starting with EOS) -> logits `[B, T, V]`
    pub fn decode(&self, enc: &Encoded, prev: &Tensor, train: bool) -> Decoded {
        let self_mask = mask::causal_with_padding(prev, self.cfg.pad_id);
        let x = self.embed(&self.embed.decoder, prev, 0, train);
        let stack = self.decoder.forward(&x, &self_mask, &enc.stack.out, &enc.mask, train);
        let logits = preln_ops::linear(&stack.out, &self.embed.output, None);
        Decoded { logits, stack }
    }

    /// Starts incremental decoding over an encoded batch.
    pub fn start_decoding(&self, enc: &Encoded) -> DecoderCache {
        self.decoder.start_cache(&enc.stack.out, &enc.mask)
    }

    /// Logits for the next position given the last token of each row; keys and values of the
    /// past come from `cache`. Equal to the last row of [`Self::decode`] on the whole prefix.
    ///
    /// # Shapes
    /// last: `[B]` token ids -> logits `[B, V]`
    pub fn decode_step(&self, last: &Tensor, cache: &mut DecoderCache) -> Tensor {
        let x = self.embed(&self.embed.decoder, &last.unsqueeze(1), cache.len, false);
        let h = self.decoder.forward_step(&x, cache);
        preln_ops::linear(&h.squeeze_dim(1), &self.embed.output, None)
    }

    /// # Shapes
    /// src: `[B, S]`; prev: `[B, T]` -> logits `[B, T, V]`
    pub fn forward(&self, src: &Tensor, prev: &Tensor, train: bool) -> (Encoded, Decoded) {
        let enc = self.encode(src, train);
        let dec = self.decode(&enc, prev, train);
        (enc, dec)
    }
}
