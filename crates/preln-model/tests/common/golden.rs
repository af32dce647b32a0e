//! The golden comparison shared by the golden test binaries: forward outputs, loss and every
//! parameter's gradient of tiny models against tools/make_golden.py's PyTorch reference.

use std::collections::HashMap;

use preln_model::checkpoint::{self, parameters};
use preln_model::{label_smoothed_nll, Bert, BertConfig, NormKind, NormPlacement, Seq2Seq, Seq2SeqConfig};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

// The shapes of tools/make_golden.py.
const VOCAB: i64 = 40;
const D: i64 = 16;
const FFN: i64 = 32;
const HEADS: i64 = 2;
const LAYERS: i64 = 2;
const SMOOTHING: f64 = 0.1;
const IGNORE: i64 = -100;
/// Mix-LN with 2 layers: layer 0 Post-LN, layer 1 Pre-LN.
const MIX_POST_FRACTION: f64 = 0.5;

/// The cases tools/make_golden.py writes: every placement with LayerNorm, and Pre-LN and
/// Post-LN with RMSNorm.
pub fn cases() -> Vec<(NormPlacement, NormKind)> {
    let mut cases: Vec<_> = NormPlacement::ALL.iter().map(|p| (*p, NormKind::LayerNorm)).collect();
    cases.extend([(NormPlacement::Pre, NormKind::RmsNorm), (NormPlacement::Post, NormKind::RmsNorm)]);
    cases
}

#[derive(Clone, Copy, Debug)]
pub enum ModelKind {
    Seq2Seq,
    Bert,
}

impl ModelKind {
    fn name(self) -> &'static str {
        match self {
            ModelKind::Seq2Seq => "seq2seq",
            ModelKind::Bert => "bert",
        }
    }
}

/// Builds the model, loads the golden weights by path, runs forward and backward in `kind`,
/// and returns logits and loss with the golden values.
pub fn run(
    model: ModelKind,
    (placement, norm): (NormPlacement, NormKind),
    kind: Kind,
) -> (VarStore, Tensor, Tensor, HashMap<String, Tensor>) {
    let suffix = match norm {
        NormKind::LayerNorm => "",
        NormKind::RmsNorm => "_rmsnorm",
    };
    let base = super::golden_dir().join(format!("{}_{}{suffix}", model.name(), placement.name()));
    let weights = base.with_extension("weights.safetensors");
    let golden_path = base.with_extension("golden.safetensors");
    for path in [&weights, &golden_path] {
        assert!(path.exists(), "{} is missing: run tools/make_golden.py", path.display());
    }
    let device = super::device();
    let mut vs = VarStore::new(device);
    let golden = checkpoint::read(&golden_path).unwrap();
    let input = |k: &str| golden[&format!("input.{k}")].to_device(device);
    let forward: Box<dyn Fn() -> (Tensor, Tensor)> = match model {
        ModelKind::Seq2Seq => {
            let cfg = Seq2SeqConfig {
                placement,
                vocab_size: VOCAB,
                pad_id: 0,
                d_model: D,
                ffn_dim: FFN,
                heads: HEADS,
                encoder_layers: LAYERS,
                decoder_layers: LAYERS,
                norm,
                mix_post_fraction: MIX_POST_FRACTION,
                ..Default::default()
            }
            .without_dropout();
            let m = Seq2Seq::new(&vs.root(), &cfg).unwrap();
            let (src, prev, target) = (input("src"), input("prev"), input("target"));
            Box::new(move || {
                let (_, dec) = m.forward(&src, &prev, false);
                let loss = label_smoothed_nll(&dec.logits, &target, SMOOTHING, 0).mean_loss();
                (dec.logits, loss)
            })
        }
        ModelKind::Bert => {
            let cfg = BertConfig {
                placement,
                vocab_size: VOCAB,
                pad_id: 0,
                d_model: D,
                ffn_dim: FFN,
                heads: HEADS,
                layers: LAYERS,
                max_positions: 12,
                segments: 2,
                norm,
                mix_post_fraction: MIX_POST_FRACTION,
                ..Default::default()
            }
            .without_dropout();
            let m = Bert::new(&vs.root(), &cfg).unwrap();
            let (tokens, segments, target) = (input("tokens"), input("segments"), input("target"));
            Box::new(move || {
                let (_, logits) = m.forward(&tokens, &segments, false).unwrap();
                let loss = label_smoothed_nll(&logits, &target, 0.0, IGNORE).mean_loss();
                (logits, loss)
            })
        }
    };
    checkpoint::load(&mut vs, &weights).unwrap();
    vs.set_kind(kind);
    let (logits, loss) = forward();
    loss.backward();
    (vs, logits, loss, golden)
}

pub fn check(model: ModelKind, (placement, norm): (NormPlacement, NormKind), kind: Kind, tol: f64) {
    let case = format!("{} {placement} {norm:?} {kind:?}", model.name());
    let (vs, logits, loss, golden) = run(model, (placement, norm), kind);
    let mut report = vec![
        ("logits".to_string(), super::relative_error(&logits, &golden["output.logits"], 0.0)),
        ("loss".to_string(), super::relative_error(&loss.reshape([1]), &golden["output.loss"], 0.0)),
    ];
    // Gradients that vanish in exact arithmetic (the key-projection bias: softmax ignores a
    // shift shared by all keys) are judged against 1% of the model's largest gradient.
    let floor = 0.01
        * golden.iter().filter(|(k, _)| k.starts_with("grad.")).map(|(_, g)| super::max_abs(g)).fold(0.0, f64::max);
    let params = parameters(&vs);
    let golden_grads = golden.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(params.len(), golden_grads, "{case}: parameter count differs from the reference");
    for (name, var) in &params {
        let want =
            golden.get(&format!("grad.{name}")).unwrap_or_else(|| panic!("{case}: no reference gradient for {name}"));
        report.push((format!("grad {name}"), super::relative_error(&var.grad(), want, floor)));
    }
    let worst = report.iter().cloned().fold(("".to_string(), 0.0f64), |a, b| if b.1 > a.1 { b } else { a });
    assert!(worst.1 <= tol, "{case}: {} differs by {:.3e} relative (tolerance {tol:.0e})", worst.0, worst.1);
    eprintln!("{case}: {} tensors match, worst {} at {:.2e}", report.len(), worst.0, worst.1);
}
