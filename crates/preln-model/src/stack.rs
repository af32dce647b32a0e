//! Encoder and decoder layers and the stacks built from them.

use tch::nn::{self, Module};
use tch::Tensor;

use crate::attention::{KvCache, MultiHeadAttention};
use crate::config::LayerConfig;
use crate::ffn::FeedForward;
use crate::init::layer_norm;
use crate::sublayer::{Residual, ResidualOut};

/// The path segment under which a stack keeps its layers: `encoder.layers.3`.
pub const LAYERS: &str = "layers";

/// The output of a stack of layers.
pub struct StackOut {
    /// `[B, T, d]`: the stack's input (the embedded tokens), the paper's `x_1`.
    pub input: Tensor,
    /// `[B, T, d]`: the last layer's output, after the final norm when the placement has one.
    pub out: Tensor,
    /// For each layer, `[B, T, d]`: its last residual sum before any norm after the add (the
    /// paper's `x5` for Post-LN, `x_{l+1}` for Pre-LN), for the hidden-norm diagnostics.
    pub layer_sums: Vec<Tensor>,
}

/// Self-attention then FFN.
#[derive(Debug)]
pub struct EncoderLayer {
    self_attn: MultiHeadAttention,
    self_attn_res: Residual,
    ffn: FeedForward,
    ffn_res: Residual,
}

impl EncoderLayer {
    pub fn new(p: nn::Path, cfg: &LayerConfig) -> Self {
        EncoderLayer {
            self_attn: MultiHeadAttention::new(&p / "self_attn", cfg),
            self_attn_res: Residual::new(&p / "self_attn_norm", cfg),
            ffn: FeedForward::new(&p / "ffn", cfg),
            ffn_res: Residual::new(&p / "ffn_norm", cfg),
        }
    }

    /// # Shapes
    /// x: `[B, S, d]`; mask: `[B, 1, 1, S]` -> `[B, S, d]`
    pub fn forward(&self, x: &Tensor, mask: &Tensor, train: bool) -> ResidualOut {
        let a = self.self_attn_res.forward(x, train, |h| self.self_attn.forward(h, h, Some(mask), train));
        self.ffn_res.forward(&a.out, train, |h| self.ffn.forward(h, train))
    }
}

/// Masked self-attention, attention over the encoder output, then FFN.
#[derive(Debug)]
pub struct DecoderLayer {
    self_attn: MultiHeadAttention,
    self_attn_res: Residual,
    cross_attn: MultiHeadAttention,
    cross_attn_res: Residual,
    ffn: FeedForward,
    ffn_res: Residual,
}

impl DecoderLayer {
    pub fn new(p: nn::Path, cfg: &LayerConfig) -> Self {
        DecoderLayer {
            self_attn: MultiHeadAttention::new(&p / "self_attn", cfg),
            self_attn_res: Residual::new(&p / "self_attn_norm", cfg),
            cross_attn: MultiHeadAttention::new(&p / "cross_attn", cfg),
            cross_attn_res: Residual::new(&p / "cross_attn_norm", cfg),
            ffn: FeedForward::new(&p / "ffn", cfg),
            ffn_res: Residual::new(&p / "ffn_norm", cfg),
        }
    }

    /// # Shapes
    /// x: `[B, T, d]`; self_mask: `[B, 1, T, T]`; memory: `[B, S, d]`; memory_mask:
    /// `[B, 1, 1, S]` -> `[B, T, d]`
    pub fn forward(
        &self,
        x: &Tensor,
        self_mask: &Tensor,
        memory: &Tensor,
        memory_mask: &Tensor,
        train: bool,
    ) -> ResidualOut {
        let a = self.self_attn_res.forward(x, train, |h| self.self_attn.forward(h, h, Some(self_mask), train));
        let c = self
            .cross_attn_res
            .forward(&a.out, train, |h| self.cross_attn.forward(h, memory, Some(memory_mask), train));
        self.ffn_res.forward(&c.out, train, |h| self.ffn.forward(h, train))
    }

    /// One new position, attending over the cached past (inference: no dropout).
    ///
    /// # Shapes
    /// x: `[B, 1, d]`; memory_mask: `[B, 1, 1, S]` -> `[B, 1, d]`
    pub fn forward_step(&self, x: &Tensor, cache: &mut LayerCache, memory_mask: &Tensor) -> Tensor {
        let a = self.self_attn_res.forward(x, false, |h| {
            let kv = self.self_attn.keys_values(h);
            let past = match cache.self_kv.take() {
                Some(mut c) => {
                    c.append(kv);
                    c
                }
                None => KvCache { k: kv.0, v: kv.1 },
            };
            let out = self.self_attn.attend(h, &past.k, &past.v, None, false);
            cache.self_kv = Some(past);
            out
        });
        let cross = &cache.cross_kv;
        let c = self
            .cross_attn_res
            .forward(&a.out, false, |h| self.cross_attn.attend(h, &cross.k, &cross.v, Some(memory_mask), false));
        self.ffn_res.forward(&c.out, false, |h| self.ffn.forward(h, false)).out
    }
}

/// What one decoder layer keeps between decoding steps.
#[derive(Debug)]
pub struct LayerCache {
    /// Keys and values of the positions decoded so far.
    pub self_kv: Option<KvCache>,
    /// Keys and values of the encoder output (computed once).
    pub cross_kv: KvCache,
}

/// The state of incremental decoding.
#[derive(Debug)]
pub struct DecoderCache {
    pub layers: Vec<LayerCache>,
    /// `[B, 1, 1, S]`
    pub memory_mask: Tensor,
    /// Positions decoded so far.
    pub len: i64,
}

impl DecoderCache {
    /// Keeps rows `index` of the batch (beam search reordering, or expansion to beams).
    pub fn select(&mut self, index: &Tensor) {
        for l in &mut self.layers {
            if let Some(c) = &mut l.self_kv {
                c.select(index);
            }
            l.cross_kv.select(index);
        }
        self.memory_mask = self.memory_mask.index_select(0, index);
    }
}

/// Variables `{p}.layers.{i}.*` and, when the placement has one, `{p}.final_norm`.
fn final_norm(p: &nn::Path, cfg: &LayerConfig) -> Option<nn::LayerNorm> {
    cfg.placement.slots().final_norm.then(|| layer_norm(p / "final_norm", cfg.d_model, cfg.layer_norm_eps))
}

fn finish(input: &Tensor, x: Tensor, layer_sums: Vec<Tensor>, norm: &Option<nn::LayerNorm>) -> StackOut {
    let out = match norm {
        Some(ln) => ln.forward(&x),
        None => x,
    };
    StackOut { input: input.shallow_clone(), out, layer_sums }
}

#[derive(Debug)]
pub struct Encoder {
    layers: Vec<EncoderLayer>,
    final_norm: Option<nn::LayerNorm>,
}

impl Encoder {
    pub fn new(p: nn::Path, cfg: &LayerConfig, layers: i64) -> Self {
        let lp = &p / LAYERS;
        Encoder {
            layers: (0..layers).map(|i| EncoderLayer::new(&lp / i, cfg)).collect(),
            final_norm: final_norm(&p, cfg),
        }
    }

    pub fn has_final_norm(&self) -> bool {
        self.final_norm.is_some()
    }

    /// # Shapes
    /// x: `[B, S, d]` (embedded input); mask: `[B, 1, 1, S]` -> out `[B, S, d]`
    pub fn forward(&self, x: &Tensor, mask: &Tensor, train: bool) -> StackOut {
        let mut h = x.shallow_clone();
        let mut sums = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let r = layer.forward(&h, mask, train);
            sums.push(r.sum);
            h = r.out;
        }
        finish(x, h, sums, &self.final_norm)
    }
}

#[derive(Debug)]
pub struct Decoder {
    layers: Vec<DecoderLayer>,
    final_norm: Option<nn::LayerNorm>,
}

impl Decoder {
    pub fn new(p: nn::Path, cfg: &LayerConfig, layers: i64) -> Self {
        let lp = &p / LAYERS;
        Decoder {
            layers: (0..layers).map(|i| DecoderLayer::new(&lp / i, cfg)).collect(),
            final_norm: final_norm(&p, cfg),
        }
    }

    pub fn has_final_norm(&self) -> bool {
        self.final_norm.is_some()
    }

    /// # Shapes
    /// x: `[B, T, d]` (embedded input); self_mask: `[B, 1, T, T]`; memory: `[B, S, d]`;
    /// memory_mask: `[B, 1, 1, S]` -> out `[B, T, d]`
    pub fn forward(
        &self,
        x: &Tensor,
        self_mask: &Tensor,
        memory: &Tensor,
        memory_mask: &Tensor,
        train: bool,
    ) -> StackOut {
        let mut h = x.shallow_clone();
        let mut sums = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let r = layer.forward(&h, self_mask, memory, memory_mask, train);
            sums.push(r.sum);
            h = r.out;
        }
        finish(x, h, sums, &self.final_norm)
    }

    /// A cache for incremental decoding over `memory`.
    ///
    /// # Shapes
    /// memory: `[B, S, d]`; memory_mask: `[B, 1, 1, S]`
    pub fn start_cache(&self, memory: &Tensor, memory_mask: &Tensor) -> DecoderCache {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let (k, v) = l.cross_attn.keys_values(memory);
                LayerCache { self_kv: None, cross_kv: KvCache { k, v } }
            })
            .collect();
        DecoderCache { layers, memory_mask: memory_mask.shallow_clone(), len: 0 }
    }

    /// One new position through every layer (and the final norm).
    ///
    /// # Shapes
    /// x: `[B, 1, d]` (embedded) -> `[B, 1, d]`
    pub fn forward_step(&self, x: &Tensor, cache: &mut DecoderCache) -> Tensor {
        let mut h = x.shallow_clone();
        for (layer, c) in self.layers.iter().zip(cache.layers.iter_mut()) {
            h = layer.forward_step(&h, c, &cache.memory_mask);
        }
        cache.len += 1;
        match &self.final_norm {
            Some(ln) => ln.forward(&h),
            None => h,
        }
    }
}
