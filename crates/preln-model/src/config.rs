//! Model configurations: plain serde structs with defaults, named presets and one validation.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::placement::{DeepNormInit, NormKind, NormPlacement, PlacementOptions};

/// The FFN non-linearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    /// The exact (erf) GELU, as in BERT.
    Gelu,
}

/// How weights of linear layers and embeddings start.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum WeightInit {
    /// Linear: Xavier uniform; embeddings: N(0, d^-1/2) (fairseq). Biases 0.
    Xavier,
    /// Linear and embeddings: N(0, std^2) (BERT uses 0.02). Biases 0.
    Normal { std: f64 },
}

/// What every layer of a stack needs to know; derived from a model config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerConfig {
    pub placement: NormPlacement,
    pub d_model: i64,
    pub ffn_dim: i64,
    pub heads: i64,
    pub activation: Activation,
    pub dropout: f64,
    pub attention_dropout: f64,
    pub activation_dropout: f64,
    pub layer_norm_eps: f64,
    pub init: WeightInit,
    pub options: PlacementOptions,
}

/// An encoder-decoder Transformer for translation (fairseq conventions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Seq2SeqConfig {
    pub placement: NormPlacement,
    /// Size of the joint vocabulary (source and target share one).
    pub vocab_size: i64,
    pub pad_id: i64,
    pub d_model: i64,
    pub ffn_dim: i64,
    pub heads: i64,
    pub encoder_layers: i64,
    pub decoder_layers: i64,
    /// Dropout on the embeddings and on each sublayer output.
    pub dropout: f64,
    /// Dropout on attention weights.
    pub attention_dropout: f64,
    /// Dropout after the FFN activation.
    pub activation_dropout: f64,
    /// One embedding for encoder input, decoder input and output projection; `false` gives
    /// three separate matrices.
    pub share_embeddings: bool,
    pub layer_norm_eps: f64,
    /// LayerNorm or RMSNorm in every norm slot of the placement.
    pub norm: NormKind,
    /// Mix-LN: the fraction of each stack's layers, from the bottom, that are Post-LN.
    pub mix_post_fraction: f64,
    /// DeepNorm: the encoder's beta in an encoder-decoder (`paper` or `torchscale`).
    pub deepnorm_init: DeepNormInit,
    /// Peri-LN: a norm on each stack's embedded input.
    pub peri_embed_norm: bool,
}

impl Default for Seq2SeqConfig {
    /// The paper's IWSLT14 De-En model (PAPER.md, Experimental settings).
    fn default() -> Self {
        Seq2SeqConfig {
            placement: NormPlacement::Pre,
            vocab_size: 10_000,
            pad_id: 0,
            d_model: 512,
            ffn_dim: 1024,
            heads: 4,
            encoder_layers: 6,
            decoder_layers: 6,
            dropout: 0.1,
            attention_dropout: 0.0,
            activation_dropout: 0.0,
            share_embeddings: true,
            layer_norm_eps: 1e-5,
            norm: NormKind::LayerNorm,
            mix_post_fraction: 0.25,
            deepnorm_init: DeepNormInit::Paper,
            peri_embed_norm: true,
        }
    }
}

impl Seq2SeqConfig {
    /// The paper's IWSLT14 model: 6+6 layers, d 512, FFN 1024, 4 heads.
    pub fn iwslt14(placement: NormPlacement) -> Self {
        Seq2SeqConfig { placement, ..Default::default() }
    }

    /// The CPU-scale model of the reproduction: 6+6 layers, d 256, FFN 1024, 4 heads.
    pub fn cpu(placement: NormPlacement) -> Self {
        Seq2SeqConfig { placement, d_model: 256, ..Default::default() }
    }

    /// Looks up a named preset.
    pub fn preset(name: &str, placement: NormPlacement) -> Option<Self> {
        match name {
            "iwslt14" => Some(Self::iwslt14(placement)),
            "cpu" => Some(Self::cpu(placement)),
            _ => None,
        }
    }

    pub const PRESETS: [&'static str; 2] = ["iwslt14", "cpu"];

    pub fn validate(&self) -> Result<()> {
        check_dims(self.vocab_size, self.pad_id, self.d_model, self.ffn_dim, self.heads)?;
        check_depth("encoder_layers", self.encoder_layers)?;
        check_depth("decoder_layers", self.decoder_layers)?;
        if self.d_model % 2 != 0 {
            return Err(invalid("d_model", "must be even for sinusoidal positions"));
        }
        check_probability("dropout", self.dropout)?;
        check_probability("attention_dropout", self.attention_dropout)?;
        check_probability("activation_dropout", self.activation_dropout)?;
        check_eps(self.layer_norm_eps)?;
        check_fraction(self.mix_post_fraction)
    }

    pub fn layer(&self) -> LayerConfig {
        LayerConfig {
            placement: self.placement,
            d_model: self.d_model,
            ffn_dim: self.ffn_dim,
            heads: self.heads,
            activation: Activation::Relu,
            dropout: self.dropout,
            attention_dropout: self.attention_dropout,
            activation_dropout: self.activation_dropout,
            layer_norm_eps: self.layer_norm_eps,
            init: WeightInit::Xavier,
            options: PlacementOptions {
                norm: self.norm,
                mix_post_fraction: self.mix_post_fraction,
                deepnorm_init: self.deepnorm_init,
                peri_embed_norm: self.peri_embed_norm,
            },
        }
    }

    /// Turns every dropout off (for analysis at initialization and golden tests).
    pub fn without_dropout(mut self) -> Self {
        self.dropout = 0.0;
        self.attention_dropout = 0.0;
        self.activation_dropout = 0.0;
        self
    }
}

/// An encoder-only Transformer for masked language modelling (BERT conventions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BertConfig {
    pub placement: NormPlacement,
    pub vocab_size: i64,
    pub pad_id: i64,
    pub d_model: i64,
    pub ffn_dim: i64,
    pub heads: i64,
    pub layers: i64,
    /// Learned positions: the longest sequence the model accepts.
    pub max_positions: i64,
    /// Number of segment (token type) embeddings.
    pub segments: i64,
    pub dropout: f64,
    pub attention_dropout: f64,
    pub layer_norm_eps: f64,
    /// Standard deviation of the normal init of linear layers and embeddings.
    pub init_std: f64,
    /// LayerNorm or RMSNorm in every norm slot of the placement (the embedding and MLM-head
    /// norms stay LayerNorm, as in BERT).
    pub norm: NormKind,
    /// Mix-LN: the fraction of the layers, from the bottom, that are Post-LN.
    pub mix_post_fraction: f64,
}

impl Default for BertConfig {
    /// A CPU-scale BERT: 6 layers, d 256, FFN 1024, 4 heads.
    fn default() -> Self {
        BertConfig {
            placement: NormPlacement::Pre,
            vocab_size: 16_000,
            pad_id: 0,
            d_model: 256,
            ffn_dim: 1024,
            heads: 4,
            layers: 6,
            max_positions: 128,
            segments: 2,
            dropout: 0.1,
            attention_dropout: 0.1,
            layer_norm_eps: 1e-12,
            init_std: 0.02,
            norm: NormKind::LayerNorm,
            mix_post_fraction: 0.25,
        }
    }
}

impl BertConfig {
    pub fn validate(&self) -> Result<()> {
        check_dims(self.vocab_size, self.pad_id, self.d_model, self.ffn_dim, self.heads)?;
        check_depth("layers", self.layers)?;
        check_positive("max_positions", self.max_positions)?;
        check_positive("segments", self.segments)?;
        check_probability("dropout", self.dropout)?;
        check_probability("attention_dropout", self.attention_dropout)?;
        check_eps(self.layer_norm_eps)?;
        if self.init_std.is_nan() || self.init_std <= 0.0 {
            return Err(invalid("init_std", "must be > 0"));
        }
        check_fraction(self.mix_post_fraction)
    }

    pub fn layer(&self) -> LayerConfig {
        LayerConfig {
            placement: self.placement,
            d_model: self.d_model,
            ffn_dim: self.ffn_dim,
            heads: self.heads,
            activation: Activation::Gelu,
            dropout: self.dropout,
            attention_dropout: self.attention_dropout,
            activation_dropout: 0.0,
            layer_norm_eps: self.layer_norm_eps,
            init: WeightInit::Normal { std: self.init_std },
            options: PlacementOptions {
                norm: self.norm,
                mix_post_fraction: self.mix_post_fraction,
                // Peri-LN's embedding norm is BERT's own embedding LayerNorm.
                peri_embed_norm: false,
                ..Default::default()
            },
        }
    }

    pub fn without_dropout(mut self) -> Self {
        self.dropout = 0.0;
        self.attention_dropout = 0.0;
        self
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ModelError {
    ModelError::InvalidConfig { key, reason: reason.into() }
}

/// The deepest stack accepted. 20000 layers of width 8 train here (41 s an update); 100000
/// layers of width 2 took over ten minutes for their first update (whose gradients overflowed)
/// and the process had not exited after fifteen, and a user saw such a stack crash libtorch.
/// The deepest Transformers published (DeepNet) have 1000 layers.
pub const MAX_LAYERS: i64 = 10_000;

fn check_depth(key: &'static str, v: i64) -> Result<()> {
    check_positive(key, v)?;
    if v > MAX_LAYERS {
        return Err(invalid(
            key,
            format!("must be at most {MAX_LAYERS}, got {v} (deeper stacks are untested: 100000 layers took over ten minutes for one update and would not exit)"),
        ));
    }
    Ok(())
}

fn check_positive(key: &'static str, v: i64) -> Result<()> {
    if v < 1 {
        return Err(invalid(key, format!("must be at least 1, got {v}")));
    }
    Ok(())
}

fn check_dims(vocab: i64, pad: i64, d: i64, ffn: i64, heads: i64) -> Result<()> {
    check_positive("vocab_size", vocab)?;
    check_positive("d_model", d)?;
    check_positive("ffn_dim", ffn)?;
    check_positive("heads", heads)?;
    if pad < 0 || pad >= vocab {
        return Err(invalid("pad_id", format!("must lie in 0..{vocab}, got {pad}")));
    }
    if d % heads != 0 {
        return Err(invalid("heads", format!("must divide d_model {d}, got {heads}")));
    }
    Ok(())
}

fn check_probability(key: &'static str, p: f64) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(invalid(key, format!("must lie in [0, 1), got {p}")));
    }
    Ok(())
}

fn check_fraction(f: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&f) {
        return Err(invalid("mix_post_fraction", format!("must lie in [0, 1], got {f}")));
    }
    Ok(())
}

fn check_eps(eps: f64) -> Result<()> {
    if eps.is_nan() || eps <= 0.0 {
        return Err(invalid("layer_norm_eps", format!("must be > 0, got {eps}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        for name in Seq2SeqConfig::PRESETS {
            for p in NormPlacement::ALL {
                Seq2SeqConfig::preset(name, p).unwrap().validate().unwrap();
            }
        }
        BertConfig::default().validate().unwrap();
    }

    #[test]
    fn heads_must_divide_d_model() {
        let cfg = Seq2SeqConfig { heads: 3, ..Default::default() };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("`heads`"), "{err}");
    }

    #[test]
    fn pad_must_be_in_vocab() {
        let cfg = Seq2SeqConfig { vocab_size: 10, pad_id: 10, ..Default::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("`pad_id`"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_json::from_str::<Seq2SeqConfig>(r#"{"d_modle": 8}"#).unwrap_err();
        assert!(err.to_string().contains("d_modle"), "{err}");
    }
}
