//! Export of a trained encoder-decoder to CTranslate2's model directory (`model.bin`,
//! `config.json`, `shared_vocabulary.json`), the inference engine OpenNMT and fairseq users
//! deploy; `ctranslate2.Translator(DIR)` loads it.
//!
//! The layout is CTranslate2's `TransformerSpec` (binary version 6, spec revision 7, as the
//! `ctranslate2` 4.x Python package writes it): per stack `pre_norm`, one LayerNorm per sublayer
//! (before the branch for Pre-LN, after the add for Post-LN), a final LayerNorm only with
//! `pre_norm`, self-attention with the query, key and value projections fused, cross-attention
//! with the key and value projections fused, and `sqrt(d)`-scaled embeddings plus an explicit
//! sinusoid table (ours, fairseq's layout, position 0 first). Only Post-LN and Pre-LN fit that
//! layout, with LayerNorm or RMSNorm (a norm without `beta`, which CTranslate2 reads as RMSNorm
//! with the config's epsilon); every other placement is refused by name. Every variable of the
//! checkpoint must land somewhere, or the export fails naming the ones left over.
//!
//! `int8` quantizes each linear and embedding weight per output row as CTranslate2's own
//! converter does: `scale = 127 / max|w_row|`, `round_half_even(w * scale)` as int8, the scale
//! beside it as `weight_scale`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tch::{Device, Kind, Tensor};

use crate::config::Seq2SeqConfig;
use crate::embedding::sinusoidal;
use crate::error::{ModelError, Result};
use crate::placement::{NormKind, NormPlacement};

/// `model.bin`'s format version and the `TransformerSpec` revision it is written as.
const BINARY_VERSION: u32 = 6;
const SPEC_REVISION: u32 = 7;

/// CTranslate2's data types, numbered as its `DataType` enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DType {
    F32 = 0,
    I8 = 1,
    I16 = 2,
}

/// How the weights of linear layers and embeddings are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Quantization {
    #[default]
    Float32,
    /// Per-row int8 weights with float32 scales; everything else stays float32.
    Int8,
}

impl Quantization {
    pub fn name(self) -> &'static str {
        match self {
            Quantization::Float32 => "float32",
            Quantization::Int8 => "int8",
        }
    }
}

/// One variable of `model.bin`.
#[derive(Clone, Debug, PartialEq)]
pub struct Variable {
    pub name: String,
    pub shape: Vec<i64>,
    dtype: DType,
    bytes: Vec<u8>,
}

impl Variable {
    fn f32(name: String, t: &Tensor) -> Variable {
        let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let values = Vec::<f32>::try_from(t.flatten(0, -1)).expect("a float tensor");
        Variable {
            name,
            shape: t.size(),
            dtype: DType::F32,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn i8_scalar(name: &str, v: i8) -> Variable {
        Variable { name: name.into(), shape: vec![], dtype: DType::I8, bytes: v.to_le_bytes().to_vec() }
    }

    fn i16_scalar(name: &str, v: i16) -> Variable {
        Variable { name: name.into(), shape: vec![], dtype: DType::I16, bytes: v.to_le_bytes().to_vec() }
    }

    /// `w` (`[rows, cols]`) as int8 rows and their float32 scales (`name_scale`).
    fn int8_rows(name: String, w: &Tensor) -> [Variable; 2] {
        let w = w.detach().to_device(Device::Cpu).to_kind(Kind::Float);
        let amax = w.abs().amax([1].as_slice(), false);
        // A row of zeros keeps scale 1 (CTranslate2's converter: amax 127).
        let amax = amax.where_scalarother(&amax.ne(0.0), 127.0);
        let scale = amax.full_like(127.0) / &amax;
        // torch's round is half-to-even, as numpy's rint.
        let q = (&w * scale.unsqueeze(1)).round().to_kind(Kind::Int8).contiguous();
        let values = Vec::<i8>::try_from(q.flatten(0, -1)).expect("int8 values");
        [
            Variable {
                name: name.clone(),
                shape: q.size(),
                dtype: DType::I8,
                bytes: values.iter().map(|v| v.to_le_bytes()[0]).collect(),
            },
            Variable::f32(format!("{name}_scale"), &scale),
        ]
    }

    /// The float32 values of a float variable (for tests and checks).
    pub fn as_f32(&self) -> Option<Vec<f32>> {
        (self.dtype == DType::F32)
            .then(|| self.bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    /// The int8 values of a quantized weight.
    pub fn as_i8(&self) -> Option<Vec<i8>> {
        (self.dtype == DType::I8).then(|| self.bytes.iter().map(|&b| b as i8).collect())
    }
}

/// A CTranslate2 model: variables by name, and aliases (name -> the variable it shares).
#[derive(Debug, Default)]
pub struct Ct2Model {
    pub variables: BTreeMap<String, Variable>,
    pub aliases: BTreeMap<String, String>,
    /// `config.json`.
    pub config: serde_json::Value,
}

/// The checkpoint's variables by key, consumed as the layout takes them.
struct Source<'a> {
    vars: &'a HashMap<String, Tensor>,
    used: BTreeSet<String>,
}

impl Source<'_> {
    fn get(&mut self, key: &str) -> Result<&Tensor> {
        let t = self.vars.get(key).ok_or_else(|| ModelError::Export(format!("the checkpoint has no `{key}`")))?;
        self.used.insert(key.to_string());
        Ok(t)
    }

    /// Keys of several linear layers' weights (or biases) stacked in the first dimension.
    fn stacked(&mut self, keys: &[String]) -> Result<Tensor> {
        let parts = keys.iter().map(|k| self.get(k).map(|t| t.shallow_clone())).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0))
    }
}

/// Builds the model in memory; [`Ct2Model::write`] puts it on disk.
struct Builder<'a> {
    src: Source<'a>,
    quant: Quantization,
    norm: NormKind,
    out: Ct2Model,
}

impl Builder<'_> {
    fn put(&mut self, v: Variable) {
        self.out.variables.insert(v.name.clone(), v);
    }

    /// A weight that CTranslate2 may quantize (linear or embedding).
    fn weight(&mut self, name: String, w: &Tensor) {
        match self.quant {
            Quantization::Float32 => self.put(Variable::f32(name, w)),
            Quantization::Int8 => Variable::int8_rows(name, w).into_iter().for_each(|v| self.put(v)),
        }
    }

    /// Linear layers `ours` (`{key}.weight`, `{key}.bias`), fused in that order, as `theirs`.
    fn linear(&mut self, theirs: &str, ours: &[String]) -> Result<()> {
        let w = self.src.stacked(&ours.iter().map(|k| format!("{k}.weight")).collect::<Vec<_>>())?;
        let b = self.src.stacked(&ours.iter().map(|k| format!("{k}.bias")).collect::<Vec<_>>())?;
        self.weight(format!("{theirs}/weight"), &w);
        self.put(Variable::f32(format!("{theirs}/bias"), &b));
        Ok(())
    }

    /// A LayerNorm (`gamma`, `beta`) or an RMSNorm (`gamma` only).
    fn layer_norm(&mut self, theirs: &str, ours: &str) -> Result<()> {
        let gamma = self.src.get(&format!("{ours}.weight"))?.shallow_clone();
        self.put(Variable::f32(format!("{theirs}/gamma"), &gamma));
        match self.norm {
            NormKind::LayerNorm => {
                let beta = self.src.get(&format!("{ours}.bias"))?.shallow_clone();
                self.put(Variable::f32(format!("{theirs}/beta"), &beta));
            }
            NormKind::RmsNorm => {}
        }
        Ok(())
    }

    /// Self-attention of layer `ours` (`{ours}.self_attn.*`, `{ours}.self_attn_norm`).
    fn self_attention(&mut self, theirs: &str, ours: &str) -> Result<()> {
        let p = |n: &str| format!("{ours}.self_attn.{n}_proj");
        self.linear(&format!("{theirs}/self_attention/linear_0"), &[p("q"), p("k"), p("v")])?;
        self.linear(&format!("{theirs}/self_attention/linear_1"), &[p("out")])?;
        self.layer_norm(&format!("{theirs}/self_attention/layer_norm"), &format!("{ours}.self_attn_norm"))
    }

    fn cross_attention(&mut self, theirs: &str, ours: &str) -> Result<()> {
        let p = |n: &str| format!("{ours}.cross_attn.{n}_proj");
        self.linear(&format!("{theirs}/attention/linear_0"), &[p("q")])?;
        self.linear(&format!("{theirs}/attention/linear_1"), &[p("k"), p("v")])?;
        self.linear(&format!("{theirs}/attention/linear_2"), &[p("out")])?;
        self.layer_norm(&format!("{theirs}/attention/layer_norm"), &format!("{ours}.cross_attn_norm"))
    }

    fn ffn(&mut self, theirs: &str, ours: &str) -> Result<()> {
        self.linear(&format!("{theirs}/ffn/linear_0"), &[format!("{ours}.ffn.fc1")])?;
        self.linear(&format!("{theirs}/ffn/linear_1"), &[format!("{ours}.ffn.fc2")])?;
        self.layer_norm(&format!("{theirs}/ffn/layer_norm"), &format!("{ours}.ffn_norm"))
    }

    /// What both stacks declare besides their layers.
    fn stack_scalars(&mut self, stack: &str, heads: i16, pre_norm: bool) {
        self.put(Variable::i16_scalar(&format!("{stack}/num_heads"), heads));
        self.put(Variable::i8_scalar(&format!("{stack}/pre_norm"), pre_norm as i8));
        // ReLU is CTranslate2's activation 0.
        self.put(Variable::i8_scalar(&format!("{stack}/activation"), 0));
        self.put(Variable::i8_scalar(&format!("{stack}/scale_embeddings"), 1));
    }
}

/// Whether `cfg` fits CTranslate2's Transformer, and if so whether it is pre-norm.
fn pre_norm(cfg: &Seq2SeqConfig) -> Result<bool> {
    match cfg.placement {
        NormPlacement::Post => Ok(false),
        NormPlacement::Pre => Ok(true),
        p @ (NormPlacement::Sandwich
        | NormPlacement::Peri
        | NormPlacement::DeepNorm
        | NormPlacement::Admin
        | NormPlacement::ReZero
        | NormPlacement::B2t
        | NormPlacement::Mix) => Err(ModelError::Export(format!(
            "placement `{}` ({}) cannot be expressed in CTranslate2's Transformer, which has one \
             norm per sublayer, before the branch (pre_norm) or after the add, the same in every \
             layer, and a plain residual add; export `post` or `pre` models",
            p.name(),
            p.title()
        ))),
    }
}

impl Ct2Model {
    /// The CTranslate2 layout of a trained encoder-decoder: `vars` are its checkpoint's
    /// variables by key, `vocab` its tokens by id, `max_positions` the rows of the sinusoid
    /// table (the longest source or output CTranslate2 can then handle).
    pub fn from_seq2seq(
        cfg: &Seq2SeqConfig,
        vars: &HashMap<String, Tensor>,
        vocab: &[String],
        quant: Quantization,
        max_positions: i64,
    ) -> Result<Ct2Model> {
        let pre = pre_norm(cfg)?;
        if vocab.len() as i64 != cfg.vocab_size {
            return Err(ModelError::Export(format!(
                "the tokenizer has {} tokens but the model {} (`model.vocab_size`)",
                vocab.len(),
                cfg.vocab_size
            )));
        }
        if max_positions < 1 {
            return Err(ModelError::Export(format!("max positions must be at least 1, got {max_positions}")));
        }
        let heads = i16::try_from(cfg.heads).map_err(|_| ModelError::Export(format!("{} heads", cfg.heads)))?;
        let mut b =
            Builder { src: Source { vars, used: BTreeSet::new() }, quant, norm: cfg.norm, out: Ct2Model::default() };

        b.stack_scalars("encoder", heads, pre);
        b.put(Variable::i8_scalar("encoder/embeddings_merge", 0));
        b.put(Variable::i8_scalar("encoder/multi_query_attention", 0));
        b.stack_scalars("decoder", heads, pre);
        for (name, v) in [("alibi", 0), ("alibi_use_positive_positions", 0), ("scale_alibi", 0)] {
            b.put(Variable::i8_scalar(&format!("decoder/{name}"), v));
        }
        b.put(Variable::i8_scalar("decoder/start_from_zero_embedding", 0));
        b.put(Variable::i16_scalar("decoder/alignment_layer", -1));
        b.put(Variable::i16_scalar("decoder/alignment_heads", 1));

        let table = sinusoidal(0, max_positions, cfg.d_model, (Kind::Float, Device::Cpu));
        b.put(Variable::f32("decoder/position_encodings/encodings".into(), &table));
        b.out
            .aliases
            .insert("encoder/position_encodings/encodings".into(), "decoder/position_encodings/encodings".into());

        if cfg.share_embeddings {
            let w = b.src.get("embed_tokens.weight")?.shallow_clone();
            b.weight("decoder/embeddings/weight".into(), &w);
            for alias in ["decoder/projection/weight", "encoder/embeddings_0/weight"] {
                b.out.aliases.insert(alias.into(), "decoder/embeddings/weight".into());
            }
        } else {
            for (theirs, ours) in [
                ("encoder/embeddings_0/weight", "encoder.embed_tokens.weight"),
                ("decoder/embeddings/weight", "decoder.embed_tokens.weight"),
                ("decoder/projection/weight", "decoder.output_projection.weight"),
            ] {
                let w = b.src.get(ours)?.shallow_clone();
                b.weight(theirs.into(), &w);
            }
        }

        for i in 0..cfg.encoder_layers {
            let (theirs, ours) = (format!("encoder/layer_{i}"), format!("encoder.layers.{i}"));
            b.self_attention(&theirs, &ours)?;
            b.ffn(&theirs, &ours)?;
        }
        for i in 0..cfg.decoder_layers {
            let (theirs, ours) = (format!("decoder/layer_{i}"), format!("decoder.layers.{i}"));
            b.self_attention(&theirs, &ours)?;
            b.cross_attention(&theirs, &ours)?;
            b.ffn(&theirs, &ours)?;
        }
        if pre {
            b.layer_norm("encoder/layer_norm", "encoder.final_norm")?;
            b.layer_norm("decoder/layer_norm", "decoder.final_norm")?;
        }

        let unused: Vec<&String> = vars.keys().filter(|k| !b.src.used.contains(*k)).collect();
        if !unused.is_empty() {
            let mut unused: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
            unused.sort_unstable();
            return Err(ModelError::Export(format!(
                "checkpoint variables with no place in CTranslate2's Transformer: {}",
                unused.join(", ")
            )));
        }
        b.out.config = serde_json::json!({
            "add_source_bos": false,
            "add_source_eos": true,
            "bos_token": vocab[2],
            "decoder_start_token": vocab[2],
            "eos_token": vocab[3],
            "unk_token": vocab[1],
            "layer_norm_epsilon": cfg.layer_norm_eps,
            "multi_query_attention": false,
        });
        Ok(b.out)
    }

    /// `model.bin`: the version, spec name and revision, the variables in name order, then the
    /// aliases; little-endian, strings as `u16` length (with the NUL) + bytes + NUL.
    pub fn model_bin(&self) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend(((s.len() + 1) as u16).to_le_bytes());
            out.extend(s.as_bytes());
            out.push(0);
        }
        let mut out = Vec::new();
        out.extend(BINARY_VERSION.to_le_bytes());
        string(&mut out, "TransformerSpec");
        out.extend(SPEC_REVISION.to_le_bytes());
        out.extend((self.variables.len() as u32).to_le_bytes());
        for v in self.variables.values() {
            string(&mut out, &v.name);
            out.push(v.shape.len() as u8);
            for &d in &v.shape {
                out.extend((d as u32).to_le_bytes());
            }
            out.push(v.dtype as u8);
            out.extend((v.bytes.len() as u32).to_le_bytes());
            out.extend(&v.bytes);
        }
        out.extend((self.aliases.len() as u32).to_le_bytes());
        for (alias, target) in &self.aliases {
            string(&mut out, alias);
            string(&mut out, target);
        }
        out
    }

    /// Reads back a `model.bin` (variables and aliases; for tests and `preln` checks).
    pub fn read_model_bin(bytes: &[u8]) -> std::result::Result<Ct2Model, String> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.u32()?;
        if version != BINARY_VERSION {
            return Err(format!("binary version {version}, expected {BINARY_VERSION}"));
        }
        let (_spec, _revision) = (r.string()?, r.u32()?);
        let mut m = Ct2Model::default();
        for _ in 0..r.u32()? {
            let name = r.string()?;
            let rank = r.take(1)?[0] as usize;
            let shape = (0..rank).map(|_| r.u32().map(i64::from)).collect::<std::result::Result<Vec<_>, _>>()?;
            let dtype = match r.take(1)?[0] {
                0 => DType::F32,
                1 => DType::I8,
                2 => DType::I16,
                t => return Err(format!("{name}: data type {t}")),
            };
            let n = r.u32()? as usize;
            let bytes = r.take(n)?.to_vec();
            m.variables.insert(name.clone(), Variable { name, shape, dtype, bytes });
        }
        for _ in 0..r.u32()? {
            let (alias, target) = (r.string()?, r.string()?);
            m.aliases.insert(alias, target);
        }
        if r.at != bytes.len() {
            return Err(format!("{} bytes after the aliases", bytes.len() - r.at));
        }
        Ok(m)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], String> {
        let s = self.bytes.get(self.at..self.at + n).ok_or_else(|| format!("truncated at byte {}", self.at))?;
        self.at += n;
        Ok(s)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let b = self.take(2)?;
        let n = u16::from_le_bytes([b[0], b[1]]) as usize;
        let s = self.take(n)?;
        String::from_utf8(s[..n.saturating_sub(1)].to_vec()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;

    use crate::Seq2Seq;

    fn tiny(placement: NormPlacement, share: bool) -> (Seq2SeqConfig, VarStore, Vec<String>) {
        tiny_with(placement, share, NormKind::LayerNorm)
    }

    fn tiny_with(placement: NormPlacement, share: bool, norm: NormKind) -> (Seq2SeqConfig, VarStore, Vec<String>) {
        let cfg = Seq2SeqConfig {
            placement,
            norm,
            vocab_size: 12,
            d_model: 8,
            ffn_dim: 16,
            heads: 2,
            encoder_layers: 2,
            decoder_layers: 1,
            share_embeddings: share,
            ..Default::default()
        };
        let vs = VarStore::new(Device::Cpu);
        Seq2Seq::new(&vs.root(), &cfg).unwrap();
        let vocab =
            ["<pad>", "<unk>", "<s>", "</s>"].iter().map(|s| s.to_string()).chain((4..12).map(|i| format!("t{i}")));
        (cfg, vs, vocab.collect())
    }

    #[test]
    fn post_and_pre_lay_out_every_variable_and_read_back() {
        for placement in [NormPlacement::Post, NormPlacement::Pre] {
            let (cfg, vs, vocab) = tiny(placement, true);
            let m = Ct2Model::from_seq2seq(&cfg, &vs.variables(), &vocab, Quantization::Float32, 20).unwrap();
            let back = Ct2Model::read_model_bin(&m.model_bin()).unwrap();
            assert_eq!(back.variables, m.variables);
            assert_eq!(back.aliases, m.aliases);
            let v = &m.variables;
            // The final LayerNorm exists exactly for Pre-LN.
            let pre = placement == NormPlacement::Pre;
            assert_eq!(v.contains_key("encoder/layer_norm/gamma"), pre);
            assert_eq!(v.contains_key("decoder/layer_norm/beta"), pre);
            assert_eq!(v["encoder/pre_norm"].bytes, vec![pre as u8]);
            // q, k, v fused in that order.
            let fused = v["encoder/layer_1/self_attention/linear_0/weight"].as_f32().unwrap();
            let vars = vs.variables();
            let k = Vec::<f32>::try_from(vars["encoder.layers.1.self_attn.k_proj.weight"].flatten(0, -1)).unwrap();
            assert_eq!(v["encoder/layer_1/self_attention/linear_0/weight"].shape, vec![24, 8]);
            assert_eq!(&fused[64..128], k.as_slice());
            assert_eq!(v["decoder/layer_0/attention/linear_1/weight"].shape, vec![16, 8]);
            assert_eq!(m.aliases["decoder/projection/weight"], "decoder/embeddings/weight");
            // Position 0 of the table: sin 0 = 0 in the first half, cos 0 = 1 in the second.
            let table = v["decoder/position_encodings/encodings"].as_f32().unwrap();
            assert_eq!(&table[..8], &[0., 0., 0., 0., 1., 1., 1., 1.]);
        }
    }

    #[test]
    fn rmsnorm_slots_are_norms_without_beta() {
        let (cfg, vs, vocab) = tiny_with(NormPlacement::Pre, true, NormKind::RmsNorm);
        let m = Ct2Model::from_seq2seq(&cfg, &vs.variables(), &vocab, Quantization::Float32, 4).unwrap();
        assert!(m.variables.contains_key("decoder/layer_0/ffn/layer_norm/gamma"));
        assert!(m.variables.contains_key("encoder/layer_norm/gamma"));
        assert!(!m.variables.keys().any(|k| k.ends_with("/beta")), "{:?}", m.variables.keys());
    }

    #[test]
    fn separate_embeddings_are_three_variables() {
        let (cfg, vs, vocab) = tiny(NormPlacement::Pre, false);
        let m = Ct2Model::from_seq2seq(&cfg, &vs.variables(), &vocab, Quantization::Float32, 4).unwrap();
        for name in ["encoder/embeddings_0/weight", "decoder/embeddings/weight", "decoder/projection/weight"] {
            assert_eq!(m.variables[name].shape, vec![12, 8], "{name}");
        }
        assert_eq!(m.aliases.len(), 1, "{:?}", m.aliases);
    }

    #[test]
    fn int8_rows_round_half_to_even_with_scale_127_over_the_row_max() {
        let w = Tensor::from_slice(&[1.27f32, -0.5, 0.005, 0.0, 0.0, 0.0]).view([2, 3]);
        let [q, s] = Variable::int8_rows("w".into(), &w);
        // 0.5 * 100 = 50; 0.005 * 100 = 0.5 -> 0 (half to even).
        assert_eq!(q.as_i8().unwrap(), vec![127, -50, 0, 0, 0, 0]);
        assert_eq!(s.name, "w_scale");
        let s = s.as_f32().unwrap();
        assert!((s[0] - 100.0).abs() < 1e-4 && s[1] == 1.0, "{s:?}");
    }

    #[test]
    fn quantized_export_stores_int8_linears_and_float_norms() {
        let (cfg, vs, vocab) = tiny(NormPlacement::Post, true);
        let m = Ct2Model::from_seq2seq(&cfg, &vs.variables(), &vocab, Quantization::Int8, 8).unwrap();
        let v = &m.variables;
        assert!(v["decoder/layer_0/ffn/linear_0/weight"].as_i8().is_some());
        assert_eq!(v["decoder/layer_0/ffn/linear_0/weight_scale"].shape, vec![16]);
        assert!(v["decoder/embeddings/weight"].as_i8().is_some());
        assert!(v["decoder/layer_0/ffn/layer_norm/gamma"].as_f32().is_some());
        assert!(v["decoder/layer_0/ffn/linear_0/bias"].as_f32().is_some());
    }

    #[test]
    fn other_placements_and_stray_variables_are_refused_by_name() {
        for placement in NormPlacement::ALL {
            if matches!(placement, NormPlacement::Post | NormPlacement::Pre) {
                continue;
            }
            let (cfg, vs, vocab) = tiny(placement, true);
            let err = Ct2Model::from_seq2seq(&cfg, &vs.variables(), &vocab, Quantization::Float32, 4).unwrap_err();
            assert!(err.to_string().contains(&format!("placement `{}`", placement.name())), "{err}");
        }
        let (cfg, vs, vocab) = tiny(NormPlacement::Pre, true);
        let mut vars = vs.variables();
        vars.insert("encoder.layers.0.extra".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu)));
        let err = Ct2Model::from_seq2seq(&cfg, &vars, &vocab, Quantization::Float32, 4).unwrap_err();
        assert!(err.to_string().contains("encoder.layers.0.extra"), "{err}");
        let err = Ct2Model::from_seq2seq(&cfg, &vs.variables(), &vocab[..10], Quantization::Float32, 4).unwrap_err();
        assert!(err.to_string().contains("10 tokens"), "{err}");
    }
}
