//! The encoder-only Transformer for masked language modelling (BERT conventions).
//!
//! Embeddings are token + learned position + segment, followed by BERT's embedding LayerNorm
//! (part of the embedding in both placements). The MLM head is dense -> GELU -> LayerNorm ->
//! the token embedding transposed, plus an output bias.

use tch::nn::{self, Module};
use tch::Tensor;

use crate::config::BertConfig;
use crate::embedding::lookup;
use crate::error::{ModelError, Result};
use crate::init::{embedding_weight, layer_norm, linear};
use crate::linear::apply;
use crate::mask;
use crate::placement::StackRole;
use crate::stack::{Encoder, StackOut};

#[derive(Debug)]
pub struct Bert {
    cfg: BertConfig,
    tokens: Tensor,
    positions: Tensor,
    segments: Tensor,
    embed_norm: nn::LayerNorm,
    encoder: Encoder,
    head_dense: nn::Linear,
    head_norm: nn::LayerNorm,
    head_bias: Tensor,
}

impl Bert {
    /// Paths: `embeddings.{tokens,positions,segments}.weight`, `embeddings.norm.*`,
    /// `encoder.layers.{i}.*`, `encoder.final_norm.*` (where the placement has one), `mlm_head.{dense,norm}.*`,
    /// `mlm_head.bias`.
    pub fn new(p: &nn::Path, cfg: &BertConfig) -> Result<Self> {
        cfg.validate()?;
        let (v, d, std) = (cfg.vocab_size, cfg.d_model, cfg.init_std);
        let e = p / "embeddings";
        let layer = cfg.layer();
        let h = p / "mlm_head";
        Ok(Bert {
            cfg: cfg.clone(),
            tokens: embedding_weight(&(&e / "tokens"), "weight", v, d, std, Some(cfg.pad_id)),
            positions: embedding_weight(&(&e / "positions"), "weight", cfg.max_positions, d, std, None),
            segments: embedding_weight(&(&e / "segments"), "weight", cfg.segments, d, std, None),
            embed_norm: layer_norm(&e / "norm", d, cfg.layer_norm_eps),
            encoder: Encoder::new(p / "encoder", &layer, StackRole::Single { layers: cfg.layers }),
            head_dense: linear(&h / "dense", d, d, layer.init),
            head_norm: layer_norm(&h / "norm", d, cfg.layer_norm_eps),
            head_bias: h.zeros("bias", &[v]),
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// # Shapes
    /// tokens, segments: `[B, T]` -> out `[B, T, d]`
    pub fn encode(&self, tokens: &Tensor, segments: &Tensor, train: bool) -> Result<StackOut> {
        let t = tokens.size()[1];
        if t > self.cfg.max_positions {
            return Err(ModelError::InvalidConfig {
                key: "max_positions",
                reason: format!("is {} but the batch has sequences of length {t}", self.cfg.max_positions),
            });
        }
        let x = lookup(&self.tokens, tokens, self.cfg.pad_id)
            + self.positions.narrow(0, 0, t).unsqueeze(0)
            + Tensor::embedding(&self.segments, segments, -1, false, false);
        let x = preln_ops::dropout(&self.embed_norm.forward(&x), self.cfg.dropout, train);
        Ok(self.encoder.forward(&x, &mask::key_padding(tokens, self.cfg.pad_id), train))
    }

    /// Finishes initialization on a batch where the placement asks for it (Admin's profiling
    /// pass sets every omega); other placements are left untouched.
    ///
    /// # Shapes
    /// tokens, segments: `[B, T]`
    pub fn profile_init(&self, tokens: &Tensor, segments: &Tensor) -> Result<()> {
        if self.cfg.placement.profiles_init() {
            let profile = self.encoder.profile();
            profile.start();
            let run = tch::no_grad(|| self.encode(tokens, segments, false).map(|_| ()));
            profile.stop();
            run?;
        }
        Ok(())
    }

    /// MLM logits for hidden states.
    ///
    /// # Shapes
    /// hidden: `[..., d]` -> `[..., V]`
    pub fn mlm_logits(&self, hidden: &Tensor) -> Tensor {
        let h = apply(&self.head_dense, hidden).gelu("none");
        preln_ops::linear(&self.head_norm.forward(&h), &self.tokens, Some(&self.head_bias))
    }

    /// # Shapes
    /// tokens, segments: `[B, T]` -> logits `[B, T, V]`
    pub fn forward(&self, tokens: &Tensor, segments: &Tensor, train: bool) -> Result<(StackOut, Tensor)> {
        let stack = self.encode(tokens, segments, train)?;
        let logits = self.mlm_logits(&stack.out);
        Ok((stack, logits))
    }
}
