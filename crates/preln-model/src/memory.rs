//! What training a model will need in memory, worked out from its config before anything is
//! allocated, so that a config no machine can hold (a `d_model` of two million, a hundred
//! thousand layers) gets a sentence instead of an allocation failure or a crash in libtorch.
//!
//! The estimate counts, in fp32: the parameters, their gradients and two optimizer moments
//! (Adam's), a bookkeeping cost per tensor, and the activations autograd keeps for one batch.
//! It is a floor, not a forecast: a run refused by it could not have fit.

use crate::config::{BertConfig, Seq2SeqConfig};
use crate::error::{ModelError, Result};

/// Bytes libtorch and our variable store spend per tensor besides its data (measured order of
/// magnitude: tensor impl, autograd meta, storage, the store's map entry).
const PER_TENSOR_BYTES: f64 = 1024.0;
const FP32: f64 = 4.0;

/// A model's size and its training needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Need {
    pub parameters: f64,
    pub tensors: f64,
    /// Parameters, gradients, optimizer moments and per-tensor bookkeeping.
    pub state_bytes: f64,
    /// Activations kept for the backward pass of one batch.
    pub activation_bytes: f64,
}

impl Need {
    pub fn total_bytes(&self) -> f64 {
        self.state_bytes + self.activation_bytes
    }

    fn new(parameters: f64, tensors: f64, activation_bytes: f64) -> Need {
        // Weights, gradients, two moments: four copies of every tensor.
        Need {
            parameters,
            tensors,
            state_bytes: 4.0 * (parameters * FP32 + tensors * PER_TENSOR_BYTES),
            activation_bytes,
        }
    }
}

/// (parameters, tensors) of one Transformer layer with `attentions` attention blocks.
fn layer_size(d: f64, ffn: f64, attentions: f64) -> (f64, f64) {
    let attention = 4.0 * (d * d + d);
    let feed_forward = 2.0 * d * ffn + ffn + d;
    let norms = (attentions + 1.0) * 2.0 * d;
    (attentions * attention + feed_forward + norms, attentions * 8.0 + 4.0 + (attentions + 1.0) * 2.0)
}

/// Activations per token and layer that autograd keeps (inputs of every matrix product, the
/// FFN's hidden units, norms, dropout masks), in fp32.
fn activations_per_token_layer(d: f64, ffn: f64) -> f64 {
    (12.0 * d + 3.0 * ffn) * FP32
}

/// The training needs of an encoder-decoder with batches of `tokens` tokens per side.
pub fn seq2seq(cfg: &Seq2SeqConfig, tokens: f64) -> Need {
    let (d, ffn, v) = (cfg.d_model as f64, cfg.ffn_dim as f64, cfg.vocab_size as f64);
    let (enc, dec) = (cfg.encoder_layers as f64, cfg.decoder_layers as f64);
    let (pe, te) = layer_size(d, ffn, 1.0);
    let (pd, td) = layer_size(d, ffn, 2.0);
    let embeddings = if cfg.share_embeddings { 1.0 } else { 3.0 };
    let parameters = embeddings * v * d + enc * pe + dec * pd + 4.0 * d;
    let tensors = embeddings + enc * te + dec * td + 4.0;
    let per_layer = activations_per_token_layer(d, ffn);
    // Decoder layers hold two attentions; the logits, their log-softmax and its gradient.
    let activations = tokens * (enc * per_layer + dec * per_layer * 1.5 + 3.0 * v * FP32);
    Need::new(parameters, tensors, activations)
}

/// The training needs of BERT with batches of `tokens` tokens.
pub fn bert(cfg: &BertConfig, tokens: f64) -> Need {
    let (d, ffn, v) = (cfg.d_model as f64, cfg.ffn_dim as f64, cfg.vocab_size as f64);
    let layers = cfg.layers as f64;
    let (pl, tl) = layer_size(d, ffn, 1.0);
    let parameters = (v + cfg.max_positions as f64 + cfg.segments as f64) * d + layers * pl + d * d + 6.0 * d + v;
    let tensors = 3.0 + layers * tl + 8.0;
    let activations = tokens * (layers * activations_per_token_layer(d, ffn) + 3.0 * v * FP32);
    Need::new(parameters, tensors, activations)
}

/// Memory this process could still take: `MemAvailable` plus free swap, from `/proc/meminfo`
/// (`None` where that file does not exist).
pub fn host_available_bytes() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |key: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024.0)
    };
    Some(field("MemAvailable:")? + field("SwapFree:").unwrap_or(0.0))
}

/// `bytes` for people: `1.5 GiB`, `12 TiB`.
pub fn human_bytes(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut x = bytes;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < units.len() {
        x /= 1024.0;
        u += 1;
    }
    if x < 10.0 && u > 0 {
        format!("{x:.1} {}", units[u])
    } else {
        format!("{x:.0} {}", units[u])
    }
}

/// Refuses a model whose training cannot fit in `available` bytes, saying how much it needs.
pub fn check_fits(what: &str, need: &Need, available: f64) -> Result<()> {
    if need.total_bytes() <= available {
        return Ok(());
    }
    Err(ModelError::TooLarge(format!(
            "the model is too large to train here: {what} has {:.3e} parameters in {:.0} tensors; training needs at least {} \
             ({} for parameters, gradients and Adam's moments, {} for the activations of one batch) but this \
             machine has {} available",
            need.parameters,
            need.tensors,
            human_bytes(need.total_bytes()),
            human_bytes(need.state_bytes),
            human_bytes(need.activation_bytes),
            human_bytes(available)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seq2seq::Seq2Seq;
    use crate::NormPlacement;

    #[test]
    fn parameter_count_matches_the_built_model() {
        for placement in [NormPlacement::Post, NormPlacement::Pre] {
            let cfg = Seq2SeqConfig {
                vocab_size: 100,
                d_model: 16,
                ffn_dim: 24,
                heads: 2,
                encoder_layers: 2,
                decoder_layers: 3,
                ..Seq2SeqConfig::iwslt14(placement)
            };
            let vs = tch::nn::VarStore::new(tch::Device::Cpu);
            Seq2Seq::new(&vs.root(), &cfg).unwrap();
            let built = crate::checkpoint::count(&vs) as f64;
            let est = seq2seq(&cfg, 100.0).parameters;
            // Post-LN has no final norms; the estimate counts them: within 2%.
            assert!((est - built).abs() / built < 0.02, "{placement:?}: estimated {est}, built {built}");
        }
    }

    #[test]
    fn a_model_too_large_is_refused_with_what_it_needs() {
        let cfg = Seq2SeqConfig { d_model: 2_000_000, ..Seq2SeqConfig::iwslt14(NormPlacement::Pre) };
        let need = seq2seq(&cfg, 4096.0);
        let e = check_fits("the encoder-decoder", &need, 16.0 * (1u64 << 30) as f64).unwrap_err().to_string();
        assert!(e.contains("too large") && e.contains("TiB") && e.contains("16 GiB available"), "{e}");
        let small = seq2seq(&Seq2SeqConfig::iwslt14(NormPlacement::Pre), 4096.0);
        assert!(small.total_bytes() < 4.0 * (1u64 << 30) as f64, "{small:?}");
        check_fits("the paper's model", &small, 16.0 * (1u64 << 30) as f64).unwrap();
        assert_eq!(human_bytes(1536.0 * 1024.0 * 1024.0), "1.5 GiB");
    }
}
