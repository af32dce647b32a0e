//! Multi-head attention through libtorch's fused `scaled_dot_product_attention`.

use tch::nn::{self, Module};
use tch::Tensor;

use crate::config::LayerConfig;
use crate::init::{apply, linear};

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
        let kv = fused_linear(memory, &[&self.k_proj, &self.v_proj]);
        let mut kv = kv.chunk(2, -1).into_iter().map(|t| self.split(&t));
        (kv.next().expect("two chunks"), kv.next().expect("two chunks"))
    }

    /// softmax(Q K^T / sqrt(d_head)) V over all heads, then the output projection, with keys
    /// and values already projected.
    ///
    /// # Shapes
    /// query: `[B, T, d]`; k, v: `[B, heads, S, d_head]`; mask: bool, broadcastable to
    /// `[B, heads, T, S]`, `true` = attend -> `[B, T, d]`
    pub fn attend(&self, query: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let q = self.split(&self.q_proj.forward(query));
        self.attend_projected(query, &q, k, v, mask, train)
    }

    /// As [`Self::attend`] with the queries already projected and split.
    fn attend_projected(
        &self,
        query: &Tensor,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let (b, t, d) = query.size3().expect("query must be [B, T, d]");
        let dropout = if train { self.dropout } else { 0.0 };
        let ctx = Tensor::scaled_dot_product_attention(q, k, v, mask, dropout, false, None, false);
        // [B, heads, T, d_head] -> [B, T, d]
        apply(&self.out_proj, &ctx.transpose(1, 2).reshape([b, t, d]))
    }

    /// Attention of `query` over `memory`.
    ///
    /// # Shapes
    /// query: `[B, T, d]`; memory: `[B, S, d]`; mask: bool, broadcastable to `[B, heads, T, S]`,
    /// `true` = attend -> `[B, T, d]`
    pub fn forward(&self, query: &Tensor, memory: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        if query.data_ptr() == memory.data_ptr() && query.size() == memory.size() {
            // Self-attention: one product with the three projections side by side.
            let qkv = fused_linear(query, &[&self.q_proj, &self.k_proj, &self.v_proj]);
            let parts: Vec<Tensor> = qkv.chunk(3, -1).iter().map(|t| self.split(t)).collect();
            return self.attend_projected(query, &parts[0], &parts[1], &parts[2], mask, train);
        }
        let (k, v) = self.keys_values(memory);
        self.attend(query, &k, &v, mask, train)
    }
}

/// `x` through several linear layers at once: one matrix product with their weights stacked
/// (the outputs side by side in the last dimension), which keeps separate parameters (and
/// checkpoint keys) while doing one larger, faster product.
fn fused_linear(x: &Tensor, layers: &[&nn::Linear]) -> Tensor {
    let w = Tensor::cat(&layers.iter().map(|l| &l.ws).collect::<Vec<_>>(), 0);
    let b: Vec<&Tensor> = layers.iter().filter_map(|l| l.bs.as_ref()).collect();
    let b = (b.len() == layers.len()).then(|| Tensor::cat(&b, 0));
    preln_ops::linear(x, &w, b.as_ref())
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
