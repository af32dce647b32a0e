//! Where normalization sits in a Transformer: one enum, resolved in one place into slots.
//!
//! Every sublayer (self-attention, cross-attention, FFN) is the same residual block with three
//! norm slots (before the branch, after the branch, after the residual add) and a way the skip
//! path and the branch meet; a stack may add a final norm and a norm on its embedded input
//! (PAPER.md, Table 1, and the papers cited on each variant):
//!
//! ```text
//! post      y = LN(x + F(x))                                  (Vaswani et al. 2017)
//! pre       y = x + F(LN(x)),             final LN            (Xiong et al. 2020)
//! sandwich  y = x + LN2(F(LN1(x))),       final LN            (CogView, Ding et al. 2021)
//! peri      y = x + LN2(F(LN1(x))),       final LN, LN on the embedded input (Kim et al. 2025)
//! deepnorm  y = LN(alpha x + F(x)),       v/out/fc1/fc2 init x beta   (DeepNet, Wang et al. 2022)
//! admin     y = LN(omega * x + F(x)),     omega a learned vector, set by profiling (Liu et al. 2020)
//! rezero    y = x + a F(x),               no norm, scalar a starts at 0 (Bachlechner et al. 2020)
//! b2t       h = LN1(x + Attn(x)); y = LN2(h + FFN(h) + x)     (Takase et al. 2022)
//! mix       post for the first floor(f L) layers, pre after; final LN  (Mix-LN, Li et al. 2024)
//! ```
//!
//! `norm` chooses LayerNorm or RMSNorm for every slot. Layers never match on
//! [`NormPlacement`]; they read the [`LayerSlots`] and [`StackSlots`] made here.

use serde::{Deserialize, Serialize};

/// The place of normalization in each residual block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormPlacement {
    /// The original Transformer: normalize after the residual add.
    Post,
    /// Normalize the branch input; the stack ends with a final norm.
    Pre,
    /// Pre-LN plus a norm on the branch output.
    Sandwich,
    /// Sandwich plus a norm on each stack's embedded input.
    Peri,
    /// Post-LN with the skip path up-weighted by alpha and the branch init down-weighted by beta.
    DeepNorm,
    /// Post-LN with a learned per-channel skip weight omega, initialized by a profiling pass.
    Admin,
    /// No norm; the branch is gated by a learned scalar that starts at zero.
    ReZero,
    /// Post-LN plus a connection from each layer's input to its last residual add.
    B2t,
    /// Post-LN in the lower layers, Pre-LN above, and a final norm.
    Mix,
}

/// The normalization every slot uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps) * g + b`
    #[default]
    LayerNorm,
    /// `x / sqrt(mean(x^2) + eps) * g` (Zhang and Sennrich 2019), no bias.
    RmsNorm,
}

/// DeepNorm's encoder beta in an encoder-decoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeepNormInit {
    /// The DeepNet paper: beta = 0.87 (N^4 M)^(-1/16).
    #[default]
    Paper,
    /// torchscale 0.3.0, which divides the weights by (N^4 M)^(1/16) / 1.15:
    /// beta = 1.15 (N^4 M)^(-1/16).
    Torchscale,
}

/// Model-wide choices that refine a placement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlacementOptions {
    pub norm: NormKind,
    /// Mix-LN: the fraction of each stack's layers (from the bottom) that are Post-LN.
    pub mix_post_fraction: f64,
    pub deepnorm_init: DeepNormInit,
    /// Peri-LN: normalize each stack's embedded input.
    pub peri_embed_norm: bool,
}

impl Default for PlacementOptions {
    fn default() -> Self {
        PlacementOptions {
            norm: NormKind::LayerNorm,
            mix_post_fraction: 0.25,
            deepnorm_init: DeepNormInit::Paper,
            peri_embed_norm: true,
        }
    }
}

/// Which stack of which model a layer sits in (DeepNorm's constants depend on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackRole {
    /// The one stack of an encoder-only (BERT) or decoder-only model.
    Single { layers: i64 },
    /// The encoder of an encoder-decoder with `encoder` (N) and `decoder` (M) layers.
    Encoder { encoder: i64, decoder: i64 },
    /// The decoder of an encoder-decoder.
    Decoder { encoder: i64, decoder: i64 },
}

impl StackRole {
    pub fn layers(self) -> i64 {
        match self {
            StackRole::Single { layers } => layers,
            StackRole::Encoder { encoder, .. } => encoder,
            StackRole::Decoder { decoder, .. } => decoder,
        }
    }
}

/// How the skip path `x` and the branch output `F` meet (before any norm after the add).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Merge {
    /// `x + F`
    Add,
    /// `alpha x + F`, alpha a constant.
    ScaleSkip(f64),
    /// `omega * x + F`, omega a learned vector over channels.
    LearnedSkip,
    /// `x + a F`, a a learned scalar that starts at zero.
    GateBranch,
}

/// The slots of one sublayer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SublayerSlots {
    /// A norm on the branch input: `F(N(x))`.
    pub before_branch: bool,
    /// A norm on the branch output: `N(F(.))`.
    pub after_branch: bool,
    /// A norm after the residual add: `N(x + F)`.
    pub after_add: bool,
    pub merge: Merge,
}

/// The slots of one layer: all its sublayers alike, plus what spans the layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerSlots {
    pub sublayer: SublayerSlots,
    /// The layer's input joins the residual add of its last sublayer (B2T).
    pub layer_skip: bool,
    /// The value, output and FFN weights are multiplied by this at initialization (DeepNorm's
    /// beta; 1 otherwise).
    pub branch_init_gain: f64,
}

/// The norms of a stack outside its layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackSlots {
    /// A norm on the last layer's output.
    pub final_norm: bool,
    /// A norm on the embedded input, before the first layer.
    pub embed_norm: bool,
}

const POST: SublayerSlots =
    SublayerSlots { before_branch: false, after_branch: false, after_add: true, merge: Merge::Add };
const PRE: SublayerSlots =
    SublayerSlots { before_branch: true, after_branch: false, after_add: false, merge: Merge::Add };
const SANDWICH: SublayerSlots =
    SublayerSlots { before_branch: true, after_branch: true, after_add: false, merge: Merge::Add };

impl NormPlacement {
    pub const ALL: [NormPlacement; 9] = [
        NormPlacement::Post,
        NormPlacement::Pre,
        NormPlacement::Sandwich,
        NormPlacement::Peri,
        NormPlacement::DeepNorm,
        NormPlacement::Admin,
        NormPlacement::ReZero,
        NormPlacement::B2t,
        NormPlacement::Mix,
    ];

    /// The slots of layer `index` (0-based, from the bottom) of a stack.
    pub fn layer_slots(self, opts: &PlacementOptions, role: StackRole, index: i64) -> LayerSlots {
        let plain = |sublayer| LayerSlots { sublayer, layer_skip: false, branch_init_gain: 1.0 };
        match self {
            NormPlacement::Post => plain(POST),
            NormPlacement::Pre => plain(PRE),
            NormPlacement::Sandwich | NormPlacement::Peri => plain(SANDWICH),
            NormPlacement::DeepNorm => {
                let (alpha, beta) = deepnorm_constants(role, opts.deepnorm_init);
                LayerSlots {
                    sublayer: SublayerSlots { merge: Merge::ScaleSkip(alpha), ..POST },
                    layer_skip: false,
                    branch_init_gain: beta,
                }
            }
            NormPlacement::Admin => plain(SublayerSlots { merge: Merge::LearnedSkip, ..POST }),
            NormPlacement::ReZero => plain(SublayerSlots {
                before_branch: false,
                after_branch: false,
                after_add: false,
                merge: Merge::GateBranch,
            }),
            NormPlacement::B2t => LayerSlots { sublayer: POST, layer_skip: true, branch_init_gain: 1.0 },
            NormPlacement::Mix => {
                if index < mix_post_layers(role.layers(), opts.mix_post_fraction) {
                    plain(POST)
                } else {
                    plain(PRE)
                }
            }
        }
    }

    /// The norms of a stack outside its layers.
    pub fn stack_slots(self, opts: &PlacementOptions) -> StackSlots {
        let (final_norm, embed_norm) = match self {
            NormPlacement::Post
            | NormPlacement::DeepNorm
            | NormPlacement::Admin
            | NormPlacement::ReZero
            | NormPlacement::B2t => (false, false),
            NormPlacement::Pre | NormPlacement::Sandwich | NormPlacement::Mix => (true, false),
            NormPlacement::Peri => (true, opts.peri_embed_norm),
        };
        StackSlots { final_norm, embed_norm }
    }

    /// Whether initialization ends with a profiling pass over a batch (Admin's omegas).
    pub const fn profiles_init(self) -> bool {
        match self {
            NormPlacement::Admin => true,
            NormPlacement::Post
            | NormPlacement::Pre
            | NormPlacement::Sandwich
            | NormPlacement::Peri
            | NormPlacement::DeepNorm
            | NormPlacement::ReZero
            | NormPlacement::B2t
            | NormPlacement::Mix => false,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            NormPlacement::Post => "post",
            NormPlacement::Pre => "pre",
            NormPlacement::Sandwich => "sandwich",
            NormPlacement::Peri => "peri",
            NormPlacement::DeepNorm => "deepnorm",
            NormPlacement::Admin => "admin",
            NormPlacement::ReZero => "rezero",
            NormPlacement::B2t => "b2t",
            NormPlacement::Mix => "mix",
        }
    }

    /// The name papers use.
    pub const fn title(self) -> &'static str {
        match self {
            NormPlacement::Post => "Post-LN",
            NormPlacement::Pre => "Pre-LN",
            NormPlacement::Sandwich => "Sandwich-LN",
            NormPlacement::Peri => "Peri-LN",
            NormPlacement::DeepNorm => "DeepNorm",
            NormPlacement::Admin => "Admin",
            NormPlacement::ReZero => "ReZero",
            NormPlacement::B2t => "B2T",
            NormPlacement::Mix => "Mix-LN",
        }
    }
}

/// How many of a stack's `layers` Mix-LN makes Post-LN: floor(fraction * layers).
pub fn mix_post_layers(layers: i64, fraction: f64) -> i64 {
    (fraction * layers as f64).floor() as i64
}

/// DeepNorm's (alpha, beta) for a stack (DeepNet, Wang et al. 2022, Table 1 and Figure 2).
///
/// One stack of N layers: alpha = (2N)^(1/4), beta = (8N)^(-1/4). An encoder-decoder with N
/// encoder and M decoder layers: encoder alpha = 0.81 (N^4 M)^(1/16), beta = 0.87 (N^4 M)^(-1/16)
/// (1.15 with [`DeepNormInit::Torchscale`]); decoder alpha = (3M)^(1/4), beta = (12M)^(-1/4).
pub fn deepnorm_constants(role: StackRole, init: DeepNormInit) -> (f64, f64) {
    match role {
        StackRole::Single { layers } => {
            let n = layers as f64;
            ((2.0 * n).powf(0.25), (8.0 * n).powf(-0.25))
        }
        StackRole::Encoder { encoder, decoder } => {
            let s = ((encoder as f64).powi(4) * decoder as f64).powf(1.0 / 16.0);
            let beta_factor = match init {
                DeepNormInit::Paper => 0.87,
                DeepNormInit::Torchscale => 1.15,
            };
            (0.81 * s, beta_factor / s)
        }
        StackRole::Decoder { decoder, .. } => {
            let m = decoder as f64;
            ((3.0 * m).powf(0.25), (12.0 * m).powf(-0.25))
        }
    }
}

impl std::fmt::Display for NormPlacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.title())
    }
}

impl std::str::FromStr for NormPlacement {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key: String = s.to_ascii_lowercase().chars().filter(|c| *c != '-' && *c != '_').collect();
        let key = key.strip_suffix("ln").filter(|k| !k.is_empty()).unwrap_or(&key);
        NormPlacement::ALL.into_iter().find(|p| p.name() == key).ok_or_else(|| {
            let names: Vec<&str> = NormPlacement::ALL.iter().map(|p| p.name()).collect();
            format!("unknown norm placement `{s}` (expected one of {})", names.join(", "))
        })
    }
}

/// A comma-separated list of placements, or `all` for every one in [`NormPlacement::ALL`] order.
pub fn parse_placements(s: &str) -> Result<Vec<NormPlacement>, String> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(NormPlacement::ALL.to_vec());
    }
    let list = s.split(',').map(|p| p.trim().parse()).collect::<Result<Vec<NormPlacement>, String>>()?;
    if list.is_empty() {
        return Err("no placement given".into());
    }
    Ok(list)
}

impl std::str::FromStr for NormKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "layernorm" | "ln" => Ok(NormKind::LayerNorm),
            "rmsnorm" | "rms" => Ok(NormKind::RmsNorm),
            _ => Err(format!("unknown norm `{s}` (expected `layernorm` or `rmsnorm`)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: StackRole = StackRole::Single { layers: 8 };

    fn slots(p: NormPlacement, index: i64) -> LayerSlots {
        p.layer_slots(&PlacementOptions::default(), ONE, index)
    }

    #[test]
    fn pre_has_final_norm_post_has_none() {
        let opts = PlacementOptions::default();
        assert!(NormPlacement::Pre.stack_slots(&opts).final_norm);
        assert!(!NormPlacement::Post.stack_slots(&opts).final_norm);
        assert_eq!(slots(NormPlacement::Pre, 0).sublayer, PRE);
        assert_eq!(slots(NormPlacement::Post, 0).sublayer, POST);
    }

    #[test]
    fn every_placement_has_a_norm_where_its_paper_puts_one() {
        let opts = PlacementOptions::default();
        for p in NormPlacement::ALL {
            let s = slots(p, 7).sublayer;
            let stack = p.stack_slots(&opts);
            let norms = [s.before_branch, s.after_branch, s.after_add].iter().filter(|b| **b).count();
            let (want_norms, want_final) = match p {
                NormPlacement::Post | NormPlacement::DeepNorm | NormPlacement::Admin | NormPlacement::B2t => (1, false),
                NormPlacement::Pre | NormPlacement::Mix => (1, true),
                NormPlacement::Sandwich | NormPlacement::Peri => (2, true),
                NormPlacement::ReZero => (0, false),
            };
            assert_eq!((norms, stack.final_norm), (want_norms, want_final), "{p}");
            assert_eq!(stack.embed_norm, p == NormPlacement::Peri, "{p}");
            assert_eq!(slots(p, 0).layer_skip, p == NormPlacement::B2t, "{p}");
        }
    }

    #[test]
    fn mix_is_post_below_a_quarter_and_pre_above() {
        // 8 layers, fraction 0.25: layers 0 and 1 are Post-LN.
        let kinds: Vec<bool> = (0..8).map(|i| slots(NormPlacement::Mix, i).sublayer == POST).collect();
        assert_eq!(kinds, [true, true, false, false, false, false, false, false]);
        assert_eq!(mix_post_layers(6, 0.25), 1);
        assert_eq!(mix_post_layers(3, 0.25), 0);
    }

    #[test]
    fn deepnorm_constants_follow_deepnet() {
        // One stack of 18 layers: alpha = 36^(1/4), beta = 144^(-1/4).
        let (a, b) = deepnorm_constants(StackRole::Single { layers: 18 }, DeepNormInit::Paper);
        assert!((a - 6f64.sqrt()).abs() < 1e-12 && (b - 1.0 / 12f64.sqrt()).abs() < 1e-12);
        // 6-6 encoder-decoder: (N^4 M)^(1/16) = 6^(5/16).
        let s = 6f64.powf(5.0 / 16.0);
        let enc = StackRole::Encoder { encoder: 6, decoder: 6 };
        let (a, b) = deepnorm_constants(enc, DeepNormInit::Paper);
        assert!((a - 0.81 * s).abs() < 1e-12 && (b - 0.87 / s).abs() < 1e-12);
        let (_, b) = deepnorm_constants(enc, DeepNormInit::Torchscale);
        assert!((b - 1.15 / s).abs() < 1e-12);
        let (a, b) = deepnorm_constants(StackRole::Decoder { encoder: 6, decoder: 6 }, DeepNormInit::Paper);
        assert!((a - 18f64.powf(0.25)).abs() < 1e-12 && (b - 72f64.powf(-0.25)).abs() < 1e-12);
        let deep = slots(NormPlacement::DeepNorm, 0);
        assert_eq!(deep.sublayer.merge, Merge::ScaleSkip(16f64.powf(0.25)));
        assert_eq!(deep.branch_init_gain, 64f64.powf(-0.25));
    }

    #[test]
    fn parses_names() {
        assert_eq!("Pre-LN".parse::<NormPlacement>().unwrap(), NormPlacement::Pre);
        assert_eq!("post".parse::<NormPlacement>().unwrap(), NormPlacement::Post);
        assert_eq!("Mix-LN".parse::<NormPlacement>().unwrap(), NormPlacement::Mix);
        assert_eq!("deepnorm".parse::<NormPlacement>().unwrap(), NormPlacement::DeepNorm);
        for p in NormPlacement::ALL {
            assert_eq!(p.name().parse::<NormPlacement>().unwrap(), p);
            assert_eq!(p.title().parse::<NormPlacement>().unwrap(), p, "{}", p.title());
        }
        let err = "resi".parse::<NormPlacement>().unwrap_err();
        assert!(err.contains("sandwich") && err.contains("b2t"), "{err}");
        assert_eq!("rmsnorm".parse::<NormKind>().unwrap(), NormKind::RmsNorm);
        assert_eq!(parse_placements("all").unwrap(), NormPlacement::ALL.to_vec());
        assert_eq!(parse_placements("post, Pre-LN").unwrap(), [NormPlacement::Post, NormPlacement::Pre]);
        assert!(parse_placements("post,nope").unwrap_err().contains("`nope`"));
    }
}
