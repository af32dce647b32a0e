//! Multi-head attention.

use tch::nn::{self, Module};
use tch::Tensor;

use crate::config::LayerConfig;
use crate::init::{linear, scale_weight};
use crate::linear::apply;

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
    /// The value and output projections' weights start multiplied by `gain` (DeepNorm's beta).
    pub fn new(p: nn::Path, cfg: &LayerConfig, gain: f64) -> Self {
        let d = cfg.d_model;
        let m = MultiHeadAttention {
            q_proj: linear(&p / "q_proj", d, d, cfg.init),
            k_proj: linear(&p / "k_proj", d, d, cfg.init),
            v_proj: linear(&p / "v_proj", d, d, cfg.init),
            out_proj: linear(&p / "out_proj", d, d, cfg.init),
            heads: cfg.heads,
            dropout: cfg.attention_dropout,
        };
        scale_weight(&m.v_proj, gain);
        scale_weight(&m.out_proj, gain);
        m
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

    /// The query, key and value projections stacked into one weight `[3d, d]` and bias `[3d]`
    /// (a decoding session computes them once; the weights do not change while it runs).
    pub fn stacked_qkv(&self) -> (Tensor, Option<Tensor>) {
        stacked(&[&self.q_proj, &self.k_proj, &self.v_proj])
    }

    /// Self-attention of new positions `x` over the cached past and themselves: their keys and
    /// values (from one product with `qkv`, see [`Self::stacked_qkv`]) are appended to `cache`.
    ///
    /// # Shapes
    /// x: `[B, T, d]` -> `[B, T, d]`
    pub fn self_attend_cached(
        &self,
        x: &Tensor,
        qkv: &(Tensor, Option<Tensor>),
        cache: &mut Option<KvCache>,
    ) -> Tensor {
        let h = preln_ops::linear(x, &qkv.0, qkv.1.as_ref());
        let parts: Vec<Tensor> = h.chunk(3, -1).iter().map(|t| self.split(t)).collect();
        let [q, k, v] = <[Tensor; 3]>::try_from(parts).expect("three chunks");
        let past = match cache {
            Some(c) => {
                c.append((k, v));
                c
            }
            None => cache.insert(KvCache::starting_with((k, v))),
        };
        let (k, v) = past.keys_values();
        self.attend_projected(x, &q, &k, &v, None, false)
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

    /// Attention of `beam` consecutive query rows over one row of keys and values each: the
    /// beams of a sentence share its encoder output, which is kept once (and read once per
    /// step) instead of once per beam. `beam = 1` is [`Self::attend`].
    ///
    /// # Shapes
    /// query: `[B·beam, 1, d]`; k, v: `[B, heads, S, d_head]`; mask: `[B, 1, 1, S]` -> `[B·beam, 1, d]`
    pub fn attend_beams(&self, query: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, beam: i64) -> Tensor {
        if beam == 1 {
            return self.attend(query, k, v, Some(mask), false);
        }
        let (rows, t, d) = query.size3().expect("query must be [B, T, d]");
        assert_eq!(t, 1, "attend_beams takes one position a row");
        let b = rows / beam;
        // [B·beam, 1, d] -> [B, heads, beam, d_head]
        let q = apply(&self.q_proj, query).view([b, beam, self.heads, d / self.heads]).transpose(1, 2);
        let ctx = if q.device() == tch::Device::Cpu {
            three_steps(&q, k, v, Some(mask), 0.0, false)
        } else {
            Tensor::scaled_dot_product_attention(&q, k, v, Some(mask), 0.0, false, None, false)
        };
        // [B, heads, beam, d_head] -> [B·beam, 1, d]
        apply(&self.out_proj, &ctx.transpose(1, 2).reshape([rows, 1, d]))
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
        let ctx = scaled_dot_product(q, k, v, mask, self.dropout, train);
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

/// The longest key sequence for which [`scaled_dot_product`] trains as three steps, in fp32
/// (and other dtypes) and in bf16: beyond them libtorch's fused CPU kernel is faster
/// (`tools/attention_speed.py` on this project's 2-core machine, 2,048 tokens a batch).
pub const THREE_STEP_MAX_KEYS: (i64, i64) = (128, 512);

/// softmax(q k^T / sqrt(d_head)) v, with `mask` (`true` = attend) and dropout on the attention
/// weights in training.
///
/// On the CPU while autograd records, and for up to 128 keys (512 in bf16), it runs as its
/// three steps: two batched products and a softmax in the scores' dtype (which libtorch computes
/// with fp32 statistics). At those lengths that trains up to 1.4x (fp32) and 1.2-4x (bf16)
/// faster than libtorch's fused CPU kernel, whose backward pass dominates; beyond them the
/// fused kernel is faster (`tools/attention_speed.py`). A decoding step on the CPU (one query
/// position, inference) also takes the three steps: for a single query they are 1.4x faster than
/// the fused kernel (320 rows, 4 heads, 20 keys of 64: 0.44 vs 0.63 ms). On the three-step path a
/// query that may attend to no key gets uniform weights rather than NaN. Other inference, and
/// CUDA with its flash and memory-efficient kernels, use the fused kernel.
///
/// # Shapes
/// q: `[B, heads, T, d_head]`; k, v: `[B, heads, S, d_head]`; mask: broadcastable to
/// `[B, heads, T, S]` -> `[B, heads, T, d_head]`
pub fn scaled_dot_product(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    dropout: f64,
    train: bool,
) -> Tensor {
    let (fp32_max, bf16_max) = THREE_STEP_MAX_KEYS;
    let short = k.size()[2] <= if q.kind() == tch::Kind::BFloat16 { bf16_max } else { fp32_max };
    let training = short && preln_ops::grad_enabled();
    let decode_step = q.size()[2] == 1 && !preln_ops::grad_enabled();
    if !(training || decode_step) || q.device() != tch::Device::Cpu {
        let p = if train { dropout } else { 0.0 };
        return Tensor::scaled_dot_product_attention(q, k, v, mask, p, false, None, false);
    }
    three_steps(q, k, v, mask, dropout, train)
}

/// softmax(q k^T / sqrt(d_head)) v as two batched products and a softmax (see
/// [`scaled_dot_product`]); a query that may attend to no key gets uniform weights.
fn three_steps(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, dropout: f64, train: bool) -> Tensor {
    let d_head = *q.size().last().expect("q has a head dimension");
    let scores = q.matmul(&k.transpose(-2, -1)) * (d_head as f64).powf(-0.5);
    let scores = match mask {
        // Finite, so that a fully masked row stays finite; exp underflows to exactly 0.
        Some(m) => scores.where_scalarother(m, -1e30),
        None => scores,
    };
    let weights = scores.softmax(-1, scores.kind());
    preln_ops::dropout(&weights, dropout, train).matmul(v)
}

/// `x` through several linear layers at once: one matrix product with their weights stacked
/// (the outputs side by side in the last dimension), which keeps separate parameters (and
/// checkpoint keys) while doing one larger, faster product.
fn fused_linear(x: &Tensor, layers: &[&nn::Linear]) -> Tensor {
    let (w, b) = stacked(layers);
    preln_ops::linear(x, &w, b.as_ref())
}

/// The weights of several linear layers stacked in their output dimension, and their biases
/// where every layer has one.
fn stacked(layers: &[&nn::Linear]) -> (Tensor, Option<Tensor>) {
    let w = Tensor::cat(&layers.iter().map(|l| &l.ws).collect::<Vec<_>>(), 0);
    let b: Vec<&Tensor> = layers.iter().filter_map(|l| l.bs.as_ref()).collect();
    (w, (b.len() == layers.len()).then(|| Tensor::cat(&b, 0)))
}

/// Keys and values of one attention layer during incremental decoding, in buffers with room
/// for more positions: appending a position writes it in place, and reordering beams copies only
/// the rows that change, over the positions filled so far.
#[derive(Debug)]
pub struct KvCache {
    /// `[B, heads, capacity, d_head]`, positions `..len` filled.
    k: Tensor,
    v: Tensor,
    len: i64,
}

impl KvCache {
    /// A cache holding `k` and `v` (`[B, heads, S, d_head]`), full.
    pub fn new(k: Tensor, v: Tensor) -> Self {
        let len = k.size()[2];
        KvCache { k, v, len }
    }

    /// A cache with room for [`Self::MIN_CAPACITY`] positions, holding `k` and `v`
    /// (`[B, heads, T, d_head]`).
    pub fn starting_with((k, v): (Tensor, Tensor)) -> Self {
        let t = k.size()[2];
        let empty = |x: &Tensor| Self::regrown(x, 0, t.max(Self::MIN_CAPACITY));
        let mut c = KvCache { k: empty(&k), v: empty(&v), len: 0 };
        c.append((k, v));
        c
    }

    /// Positions held.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The keys and values held, `[B, heads, len, d_head]` each (views of the buffers).
    pub fn keys_values(&self) -> (Tensor, Tensor) {
        (self.k.narrow(2, 0, self.len), self.v.narrow(2, 0, self.len))
    }

    /// Appends the keys and values of new positions (`[B, heads, T, d_head]`), growing the
    /// buffers to twice their capacity when they are full.
    pub fn append(&mut self, (k, v): (Tensor, Tensor)) {
        let t = k.size()[2];
        let capacity = self.k.size()[2];
        if self.len + t > capacity {
            let grown = (2 * capacity).max(self.len + t).max(Self::MIN_CAPACITY);
            self.k = Self::regrown(&self.k, self.len, grown);
            self.v = Self::regrown(&self.v, self.len, grown);
        }
        self.k.narrow(2, self.len, t).copy_(&k);
        self.v.narrow(2, self.len, t).copy_(&v);
        self.len += t;
    }

    /// The fewest positions a grown buffer has room for.
    const MIN_CAPACITY: i64 = 16;

    /// A buffer of `capacity` positions holding the first `len` of `buf`.
    fn regrown(buf: &Tensor, len: i64, capacity: i64) -> Tensor {
        let mut size = buf.size();
        size[2] = capacity;
        let grown = Tensor::empty(size.as_slice(), (buf.kind(), buf.device()));
        grown.narrow(2, 0, len).copy_(&buf.narrow(2, 0, len));
        grown
    }

    /// Row `r` of the batch continues old row `rows[r]`, for any `rows`: sentences that leave,
    /// beams reordered or expanded. Where there are no more rows than before, only the rows
    /// that change are copied (over the filled positions) and the buffers keep their memory;
    /// more rows than before take new buffers.
    pub fn select_rows(&mut self, rows: &[i64]) {
        let batch = self.k.size()[0];
        let n = rows.len() as i64;
        if n > batch {
            let index = Tensor::from_slice(rows).to_device(self.k.device());
            let capacity = self.k.size()[2];
            for buf in [&mut self.k, &mut self.v] {
                let kept = buf.narrow(2, 0, self.len).index_select(0, &index);
                *buf = if capacity > self.len { Self::regrown(&kept, self.len, capacity) } else { kept };
            }
            return;
        }
        let (to, from): (Vec<i64>, Vec<i64>) =
            rows.iter().enumerate().map(|(r, &from)| (r as i64, from)).filter(|(to, from)| to != from).unzip();
        if !to.is_empty() {
            let device = self.k.device();
            self.copy_rows(&Tensor::from_slice(&from).to_device(device), &Tensor::from_slice(&to).to_device(device));
        }
        if n < batch {
            self.k = self.k.narrow(0, 0, n);
            self.v = self.v.narrow(0, 0, n);
        }
    }

    /// Row `to[i]` becomes a copy of row `from[i]` (as they were before the call), the other
    /// rows stay.
    fn copy_rows(&mut self, from: &Tensor, to: &Tensor) {
        for buf in [&mut self.k, &mut self.v] {
            let mut filled = buf.narrow(2, 0, self.len);
            let moved = filled.index_select(0, from);
            let _ = filled.index_copy_(0, to, &moved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn inputs(kind: Kind) -> (Tensor, Tensor, Tensor, Tensor) {
        tch::manual_seed(3);
        let opts = (kind, Device::Cpu);
        let (q, k, v) =
            (Tensor::randn([2, 3, 5, 8], opts), Tensor::randn([2, 3, 6, 8], opts), Tensor::randn([2, 3, 6, 8], opts));
        // Key padding: the second sentence has 4 real keys of 6.
        let mask = Tensor::from_slice(&[true, true, true, true, true, true, true, true, true, true, false, false])
            .view([2, 1, 1, 6]);
        (q, k, v, mask)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
    }

    #[test]
    fn kv_cache_appends_past_its_capacity_and_moves_rows_like_plain_tensors() {
        tch::manual_seed(9);
        let step = || {
            (
                Tensor::randn([3, 2, 1, 4], (Kind::Float, Device::Cpu)),
                Tensor::randn([3, 2, 1, 4], (Kind::Float, Device::Cpu)),
            )
        };
        let (k, v) = step();
        let mut cache = KvCache::starting_with((k.shallow_clone(), v.shallow_clone()));
        let (mut want_k, mut want_v) = (k, v);
        let check = |cache: &KvCache, want_k: &Tensor, want_v: &Tensor, what: &str| {
            let (k, v) = cache.keys_values();
            assert!(k.equal(want_k) && v.equal(want_v), "{what}");
        };
        for t in 1..(KvCache::MIN_CAPACITY + 5) {
            let (k, v) = step();
            cache.append((k.shallow_clone(), v.shallow_clone()));
            want_k = Tensor::cat(&[&want_k, &k], 2);
            want_v = Tensor::cat(&[&want_v, &v], 2);
            check(&cache, &want_k, &want_v, &format!("after append {t}"));
        }
        assert_eq!(cache.len(), KvCache::MIN_CAPACITY + 5);
        // Row 0 <- old row 2, row 2 <- old row 0 (a swap reads the rows as they were).
        let mut follow = |cache: &mut KvCache, rows: &[i64], what: &str| {
            cache.select_rows(rows);
            let order = Tensor::from_slice(rows);
            (want_k, want_v) = (want_k.index_select(0, &order), want_v.index_select(0, &order));
            check(cache, &want_k, &want_v, what);
        };
        follow(&mut cache, &[2, 1, 0], "rows swapped");
        // Fewer rows (a sentence leaves, the others reorder): the buffers shrink in place.
        follow(&mut cache, &[1, 1], "rows kept");
        // More rows (expansion to beams): new buffers.
        follow(&mut cache, &[0, 0, 1, 1, 1], "rows expanded");
        assert_eq!(cache.k.size()[2], 2 * KvCache::MIN_CAPACITY, "the capacity survives");
        let (k, v) = (
            Tensor::randn([5, 2, 1, 4], (Kind::Float, Device::Cpu)),
            Tensor::randn([5, 2, 1, 4], (Kind::Float, Device::Cpu)),
        );
        cache.append((k.shallow_clone(), v.shallow_clone()));
        check(&cache, &Tensor::cat(&[&want_k, &k], 2), &Tensor::cat(&[&want_v, &v], 2), "append after select");
        cache.select_rows(&[4, 0]);
        assert_eq!(cache.keys_values().0.size(), [2, 2, KvCache::MIN_CAPACITY + 6, 4]);
    }

    #[test]
    fn training_path_equals_the_fused_kernel() {
        let (q, k, v, mask) = inputs(Kind::Float);
        let fused = tch::no_grad(|| scaled_dot_product(&q, &k, &v, Some(&mask), 0.0, false));
        let q = q.set_requires_grad(true);
        let steps = scaled_dot_product(&q, &k, &v, Some(&mask), 0.0, false);
        assert!(steps.requires_grad());
        assert!(max_diff(&fused, &steps) < 1e-5, "diff {}", max_diff(&fused, &steps));

        let (q, k, v, mask) = inputs(Kind::BFloat16);
        let fused = tch::no_grad(|| scaled_dot_product(&q, &k, &v, Some(&mask), 0.0, false));
        let steps = scaled_dot_product(&q.set_requires_grad(true), &k, &v, Some(&mask), 0.0, false);
        assert_eq!(steps.kind(), Kind::BFloat16);
        assert!(max_diff(&fused, &steps) < 0.05, "bf16 diff {}", max_diff(&fused, &steps));
    }

    #[test]
    fn long_sequences_train_through_the_fused_kernel() {
        tch::manual_seed(5);
        let opts = (Kind::Float, Device::Cpu);
        for (keys, fused) in [(THREE_STEP_MAX_KEYS.0, false), (THREE_STEP_MAX_KEYS.0 + 1, true)] {
            let (q, k, v) = (
                Tensor::randn([1, 2, 3, 8], opts),
                Tensor::randn([1, 2, keys, 8], opts),
                Tensor::randn([1, 2, keys, 8], opts),
            );
            let reference = tch::no_grad(|| scaled_dot_product(&q, &k, &v, None, 0.0, false));
            let training = scaled_dot_product(&q.set_requires_grad(true), &k, &v, None, 0.0, false);
            assert_eq!(training.equal(&reference), fused, "{keys} keys");
            assert!(max_diff(&training, &reference) < 1e-5);
        }
    }

    #[test]
    fn a_query_without_keys_stays_finite() {
        let (q, k, v, _) = inputs(Kind::Float);
        let none = Tensor::zeros([1, 1, 1, 6], (Kind::Bool, Device::Cpu));
        let q = q.set_requires_grad(true);
        let out = scaled_dot_product(&q, &k, &v, Some(&none), 0.0, false);
        // Uniform weights: every query gets the mean of the values.
        let mean = v.mean_dim(2, true, Kind::Float).expand_as(&out);
        assert!(max_diff(&out, &mean) < 1e-5);
        out.sum(Kind::Float).backward();
        assert_eq!(q.grad().isfinite().all().int64_value(&[]), 1);
    }

    #[test]
    fn attention_dropout_acts_in_training_only() {
        let (q, k, v, mask) = inputs(Kind::Float);
        let q = q.set_requires_grad(true);
        let eval = scaled_dot_product(&q, &k, &v, Some(&mask), 0.5, false);
        let train = scaled_dot_product(&q, &k, &v, Some(&mask), 0.5, true);
        assert!(max_diff(&eval, &train) > 1e-3);
        assert!(max_diff(&eval, &scaled_dot_product(&q, &k, &v, Some(&mask), 0.0, true)) < 1e-6);
    }
}
