//! Encoder and decoder layers and the stacks built from them.

use tch::nn;
use tch::Tensor;

use crate::attention::{KvCache, MultiHeadAttention};
use crate::config::LayerConfig;
use crate::ffn::FeedForward;
use crate::norm::Norm;
use crate::placement::{LayerSlots, StackRole};
use crate::sublayer::{AdminProfile, Residual, ResidualOut};

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
    pub fn new(p: nn::Path, cfg: &LayerConfig, slots: &LayerSlots, profile: &AdminProfile) -> Self {
        let gain = slots.branch_init_gain;
        EncoderLayer {
            self_attn: MultiHeadAttention::new(&p / "self_attn", cfg, gain),
            self_attn_res: Residual::new(&p, "self_attn", cfg, slots, false, profile),
            ffn: FeedForward::new(&p / "ffn", cfg, gain),
            ffn_res: Residual::new(&p, "ffn", cfg, slots, true, profile),
        }
    }

    /// # Shapes
    /// x: `[B, S, d]`; mask: `[B, 1, 1, S]` -> `[B, S, d]`
    pub fn forward(&self, x: &Tensor, mask: &Tensor, train: bool) -> ResidualOut {
        let a = self.self_attn_res.forward(x, train, |h| self.self_attn.forward(h, h, Some(mask), train));
        self.ffn_res.forward_last(&a.out, x, train, |h| self.ffn.forward(h, train))
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
    pub fn new(p: nn::Path, cfg: &LayerConfig, slots: &LayerSlots, profile: &AdminProfile) -> Self {
        let gain = slots.branch_init_gain;
        DecoderLayer {
            self_attn: MultiHeadAttention::new(&p / "self_attn", cfg, gain),
            self_attn_res: Residual::new(&p, "self_attn", cfg, slots, false, profile),
            cross_attn: MultiHeadAttention::new(&p / "cross_attn", cfg, gain),
            cross_attn_res: Residual::new(&p, "cross_attn", cfg, slots, false, profile),
            ffn: FeedForward::new(&p / "ffn", cfg, gain),
            ffn_res: Residual::new(&p, "ffn", cfg, slots, true, profile),
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
        self.ffn_res.forward_last(&c.out, x, train, |h| self.ffn.forward(h, train))
    }

    /// One new position, attending over the cached past (inference: no dropout).
    ///
    /// # Shapes
    /// x: `[B·beam, 1, d]`; memory_mask: `[B, 1, 1, S]`; the encoder's keys and values in
    /// `cache` have `B` rows, each shared by `beam` consecutive rows of `x` -> `[B·beam, 1, d]`
    pub fn forward_step(&self, x: &Tensor, cache: &mut LayerCache, memory_mask: &Tensor, beam: i64) -> Tensor {
        let a = self
            .self_attn_res
            .forward(x, false, |h| self.self_attn.self_attend_cached(h, &cache.self_qkv, &mut cache.self_kv));
        let (k, v) = cache.cross_kv.keys_values();
        let c = self
            .cross_attn_res
            .forward(&a.out, false, |h| self.cross_attn.attend_beams(h, &k, &v, memory_mask, beam));
        self.ffn_res.forward_last(&c.out, x, false, |h| self.ffn.forward(h, false)).out
    }
}

/// What one decoder layer keeps between decoding steps.
#[derive(Debug)]
pub struct LayerCache {
    /// Keys and values of the positions decoded so far.
    pub self_kv: Option<KvCache>,
    /// Keys and values of the encoder output (computed once).
    pub cross_kv: KvCache,
    /// The self-attention's stacked query, key and value projections (computed once).
    pub self_qkv: (Tensor, Option<Tensor>),
}

/// The state of incremental decoding.
#[derive(Debug)]
pub struct DecoderCache {
    pub layers: Vec<LayerCache>,
    /// `[B, 1, 1, S]`, one row per source sentence.
    pub memory_mask: Tensor,
    /// Positions decoded so far.
    pub len: i64,
    /// Decoded rows per source sentence (the beams), consecutive: row `r` attends over the
    /// encoder output of sentence `r / beam`.
    pub beam: i64,
}

impl DecoderCache {
    /// Row `r` of the batch continues old row `rows[r]`: expansion to beams, beams reordered,
    /// finished sentences leaving. Where every group of `beam` new rows continues rows of one
    /// sentence, the encoder's keys and values stay one row per sentence (only rows that change
    /// are copied); otherwise each row gets its own.
    pub fn select(&mut self, rows: &[i64], beam: usize) {
        let old = self.beam;
        let beam = beam.max(1) as i64;
        let sentence = |r: &i64| r / old;
        let grouped = rows.len() as i64 % beam == 0
            && rows.chunks(beam as usize).all(|g| g.iter().all(|r| sentence(r) == sentence(&g[0])));
        let (sentences, beam): (Vec<i64>, i64) = if grouped {
            (rows.iter().step_by(beam as usize).map(sentence).collect(), beam)
        } else {
            (rows.iter().map(sentence).collect(), 1)
        };
        for l in &mut self.layers {
            if let Some(c) = &mut l.self_kv {
                c.select_rows(rows);
            }
            l.cross_kv.select_rows(&sentences);
        }
        let identity = sentences.iter().enumerate().all(|(i, &s)| s == i as i64);
        if !identity || sentences.len() as i64 != self.memory_mask.size()[0] {
            let index = Tensor::from_slice(&sentences).to_device(self.memory_mask.device());
            self.memory_mask = self.memory_mask.index_select(0, &index);
        }
        self.beam = beam;
    }
}

/// What every stack holds besides its layers: its placement's outer norms and Admin's profile.
#[derive(Debug)]
struct Outer {
    embed_norm: Option<Norm>,
    final_norm: Option<Norm>,
    profile: AdminProfile,
}

impl Outer {
    /// Variables `{p}.embed_norm` and `{p}.final_norm` where the placement has them.
    fn new(p: &nn::Path, cfg: &LayerConfig) -> Self {
        let slots = cfg.placement.stack_slots(&cfg.options);
        let norm = |name: &str| Norm::new(p / name, cfg.options.norm, cfg.d_model, cfg.layer_norm_eps);
        Outer {
            embed_norm: slots.embed_norm.then(|| norm("embed_norm")),
            final_norm: slots.final_norm.then(|| norm("final_norm")),
            profile: AdminProfile::default(),
        }
    }

    fn slots(cfg: &LayerConfig, role: StackRole) -> impl Iterator<Item = (i64, LayerSlots)> + '_ {
        (0..role.layers()).map(move |i| (i, cfg.placement.layer_slots(&cfg.options, role, i)))
    }

    fn embedded(&self, x: &Tensor) -> Tensor {
        match &self.embed_norm {
            Some(n) => n.forward(x),
            None => x.shallow_clone(),
        }
    }

    fn finish(&self, x: Tensor) -> Tensor {
        match &self.final_norm {
            Some(n) => n.forward(&x),
            None => x,
        }
    }
}

#[derive(Debug)]
pub struct Encoder {
    layers: Vec<EncoderLayer>,
    outer: Outer,
}

impl Encoder {
    /// Variables `{p}.layers.{i}.*` and the outer norms of the placement.
    pub fn new(p: nn::Path, cfg: &LayerConfig, role: StackRole) -> Self {
        let lp = &p / LAYERS;
        let outer = Outer::new(&p, cfg);
        let layers =
            Outer::slots(cfg, role).map(|(i, s)| EncoderLayer::new(&lp / i, cfg, &s, &outer.profile)).collect();
        Encoder { layers, outer }
    }

    pub fn has_final_norm(&self) -> bool {
        self.outer.final_norm.is_some()
    }

    /// Admin's profiling pass runs while this is alive (see [`AdminProfile`]).
    pub fn profile(&self) -> &AdminProfile {
        &self.outer.profile
    }

    /// # Shapes
    /// x: `[B, S, d]` (embedded input); mask: `[B, 1, 1, S]` -> out `[B, S, d]`
    pub fn forward(&self, x: &Tensor, mask: &Tensor, train: bool) -> StackOut {
        let mut h = self.outer.embedded(x);
        let mut sums = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let r = layer.forward(&h, mask, train);
            sums.push(r.sum);
            h = r.out;
        }
        StackOut { input: x.shallow_clone(), out: self.outer.finish(h), layer_sums: sums }
    }
}

#[derive(Debug)]
pub struct Decoder {
    layers: Vec<DecoderLayer>,
    outer: Outer,
}

impl Decoder {
    /// Variables `{p}.layers.{i}.*` and the outer norms of the placement.
    pub fn new(p: nn::Path, cfg: &LayerConfig, role: StackRole) -> Self {
        let lp = &p / LAYERS;
        let outer = Outer::new(&p, cfg);
        let layers =
            Outer::slots(cfg, role).map(|(i, s)| DecoderLayer::new(&lp / i, cfg, &s, &outer.profile)).collect();
        Decoder { layers, outer }
    }

    pub fn has_final_norm(&self) -> bool {
        self.outer.final_norm.is_some()
    }

    pub fn profile(&self) -> &AdminProfile {
        &self.outer.profile
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
        let mut h = self.outer.embedded(x);
        let mut sums = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let r = layer.forward(&h, self_mask, memory, memory_mask, train);
            sums.push(r.sum);
            h = r.out;
        }
        StackOut { input: x.shallow_clone(), out: self.outer.finish(h), layer_sums: sums }
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
                LayerCache { self_kv: None, cross_kv: KvCache::new(k.contiguous(), v.contiguous()), self_qkv: l.self_attn.stacked_qkv() }
            })
            .collect();
        DecoderCache { layers, memory_mask: memory_mask.shallow_clone(), len: 0, beam: 1 }
    }

    /// One new position through every layer (and the outer norms).
    ///
    /// # Shapes
    /// x: `[B·beam, 1, d]` (embedded) -> `[B·beam, 1, d]`
    pub fn forward_step(&self, x: &Tensor, cache: &mut DecoderCache) -> Tensor {
        let mut h = self.outer.embedded(x);
        for (layer, c) in self.layers.iter().zip(cache.layers.iter_mut()) {
            h = layer.forward_step(&h, c, &cache.memory_mask, cache.beam);
        }
        cache.len += 1;
        self.outer.finish(h)
    }
}
