//! Multi-head attention through libtorch's fused `scaled_dot_product_attention`.

use tch::nn::{self, Module};
use tch::Tensor;

use crate::config::LayerConfig;
use crate::init::linear;

#[derive(Debug)]
pub struct MultiHeadAttention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    heads: i64,
    dropout: f64,
}

impl MultiHeadAttention {
    pub fn new(p: nn::Path, cfg: &LayerConfig) -> Self {
        let d = cfg.d_model;
        MultiHeadAttention {
            q_proj: linear(&p / "q_proj", d, d, cfg.init),
            k_proj: linear(&p / "k_proj", d, d, cfg.init),
            v_proj: linear(&p / "v_proj", d, d, cfg.init),
            out_proj: linear(&p / "out_proj", d, d, cfg.init),
            heads: cfg.heads,
            dropout: cfg.attention_dropout,
        }
    }

    /// Splits the last dimension into heads.
    ///
    /// # Shapes
    /// `[B, T, d]` -> `[B, heads, T, d / heads]`
    fn split(&self, x: &Tensor) -> Tensor {
        let (b, t, d) = x.size3().expect("attention input must be [B, T, d]");
        x.view([b, t, self.heads, d / self.heads]).transpose(1, 2)
    }

    /// Keys and values of `memory`, split into heads (what a decoding cache keeps).
    ///
    /// # Shapes
    /// memory: `[B, S, d]` -> (k, v), each `[B, heads, S, d / heads]`
    pub fn keys_values(&self, memory: &Tensor) -> (Tensor, Tensor) {
        (self.split(&self.k_proj.forward(memory)), self.split(&self.v_proj.forward(memory)))
    }

    /// softmax(Q K^T / sqrt(d_head)) V over all heads, then the output projection, with keys
    /// and values already projected.
    ///
    /// # Shapes
    /// query: `[B, T, d]`; k, v: `[B, heads, S, d_head]`; mask: bool, broadcastable to
    /// `[B, heads, T, S]`, `true` = attend -> `[B, T, d]`
    pub fn attend(&self, query: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let (b, t, d) = query.size3().expect("query must be [B, T, d]");
        let q = self.split(&self.q_proj.forward(query));
        let dropout = if train { self.dropout } else { 0.0 };
        let ctx = Tensor::scaled_dot_product_attention(&q, k, v, mask, dropout, false, None, false);
        // [B, heads, T, d_head] -> [B, T, d]
        self.out_proj.forward(&ctx.transpose(1, 2).reshape([b, t, d]))
    }

    /// Attention of `query` over `memory`.
    ///
    /// # Shapes
    /// query: `[B, T, d]`; memory: `[B, S, d]`; mask: bool, broadcastable to `[B, heads, T, S]`,
    /// `true` = attend -> `[B, T, d]`
    pub fn forward(&self, query: &Tensor, memory: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let (k, v) = self.keys_values(memory);
        self.attend(query, &k, &v, mask, train)
    }
}

/// Keys and values of one attention layer during incremental decoding.
#[derive(Debug)]
pub struct KvCache {
    /// `[B, heads, S, d_head]`
    pub k: Tensor,
    pub v: Tensor,
}

impl KvCache {
    /// Appends the keys and values of new positions.
    pub fn append(&mut self, (k, v): (Tensor, Tensor)) {
        self.k = Tensor::cat(&[&self.k, &k], 2);
        self.v = Tensor::cat(&[&self.v, &v], 2);
    }

    /// Keeps rows `index` of the batch (beam search reordering).
    pub fn select(&mut self, index: &Tensor) {
        self.k = self.k.index_select(0, index);
        self.v = self.v.index_select(0, index);
    }
}
