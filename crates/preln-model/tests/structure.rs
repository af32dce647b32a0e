//! Structural guarantees: where the norms are, parameter paths, checkpoints, dropout.

mod common;

use preln_model::checkpoint::{self, parameters};
use preln_model::{Bert, BertConfig, NormPlacement, Seq2Seq, Seq2SeqConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn tiny(placement: NormPlacement) -> Seq2SeqConfig {
    Seq2SeqConfig {
        placement,
        vocab_size: 30,
        d_model: 8,
        ffn_dim: 16,
        heads: 2,
        encoder_layers: 3,
        decoder_layers: 2,
        ..Default::default()
    }
}

fn param_names(vs: &VarStore) -> Vec<String> {
    parameters(vs).into_iter().map(|(n, _)| n).collect()
}

fn norm_weights(names: &[String]) -> Vec<&str> {
    names.iter().filter(|n| n.ends_with("norm.weight")).map(|n| n.as_str()).collect()
}

#[test]
fn pre_ln_has_exactly_one_final_norm_per_stack_and_post_ln_none() {
    for placement in [NormPlacement::Pre, NormPlacement::Post] {
        let vs = VarStore::new(Device::Cpu);
        let model = Seq2Seq::new(&vs.root(), &tiny(placement)).unwrap();
        let names = param_names(&vs);
        let finals: Vec<&str> = names.iter().filter(|n| n.contains("final_norm")).map(|n| n.as_str()).collect();
        // 3 encoder layers x 2 sublayers + 2 decoder layers x 3 sublayers = 12 sublayer norms.
        let sublayer_norms = norm_weights(&names).len() - finals.len() / 2;
        assert_eq!(sublayer_norms, 12, "{placement}: {names:?}");
        if placement == NormPlacement::Pre {
            assert_eq!(
                finals,
                vec![
                    "decoder.final_norm.bias",
                    "decoder.final_norm.weight",
                    "encoder.final_norm.bias",
                    "encoder.final_norm.weight"
                ]
            );
            assert!(model.encoder().has_final_norm() && model.decoder().has_final_norm());
        } else {
            assert!(finals.is_empty(), "Post-LN must not have a final norm: {finals:?}");
            assert!(!model.encoder().has_final_norm() && !model.decoder().has_final_norm());
        }
    }
}

/// Every norm-like variable of layer 0 of the encoder and of the stacks, by placement: the
/// checkpoint keys each placement adds (README, "Norm placements").
#[test]
fn each_placement_has_exactly_its_norms_and_checkpoint_keys() {
    for placement in NormPlacement::ALL {
        let vs = VarStore::new(Device::Cpu);
        let cfg = Seq2SeqConfig { encoder_layers: 4, decoder_layers: 4, ..tiny(placement) };
        Seq2Seq::new(&vs.root(), &cfg).unwrap();
        let names = param_names(&vs);
        let of = |prefix: &str| -> Vec<String> {
            let mut v: Vec<String> = names
                .iter()
                .filter_map(|n| n.strip_prefix(prefix))
                .filter(|n| !n.starts_with("self_attn.") && !n.starts_with("ffn.") && !n.starts_with("layers."))
                .map(String::from)
                .collect();
            v.sort();
            v
        };
        let (layer0, stack) = (of("encoder.layers.0."), of("encoder."));
        let ln = |name: &str| vec![format!("{name}.bias"), format!("{name}.weight")];
        let both = |a: Vec<String>, b: Vec<String>| [a, b].concat();
        let (want_layer0, want_stack): (Vec<String>, Vec<String>) = match placement {
            NormPlacement::Post | NormPlacement::DeepNorm | NormPlacement::B2t | NormPlacement::Mix => {
                (both(ln("ffn_norm"), ln("self_attn_norm")), vec![])
            }
            NormPlacement::Pre => (both(ln("ffn_norm"), ln("self_attn_norm")), ln("final_norm")),
            NormPlacement::Sandwich => (
                [ln("ffn_norm"), ln("ffn_out_norm"), ln("self_attn_norm"), ln("self_attn_out_norm")].concat(),
                ln("final_norm"),
            ),
            NormPlacement::Peri => (
                [ln("ffn_norm"), ln("ffn_out_norm"), ln("self_attn_norm"), ln("self_attn_out_norm")].concat(),
                both(ln("embed_norm"), ln("final_norm")),
            ),
            NormPlacement::Admin => (
                [
                    ln("ffn_norm"),
                    vec!["ffn_residual.omega".into()],
                    ln("self_attn_norm"),
                    vec!["self_attn_residual.omega".into()],
                ]
                .concat(),
                vec![],
            ),
            NormPlacement::ReZero => (vec!["ffn_residual.alpha".into(), "self_attn_residual.alpha".into()], vec![]),
        };
        // Mix-LN's final norm: 4 layers x 0.25 puts layer 0 in Post-LN and the rest in Pre-LN.
        let want_stack = if placement == NormPlacement::Mix { ln("final_norm") } else { want_stack };
        assert_eq!(layer0, want_layer0, "{placement}");
        assert_eq!(stack, want_stack, "{placement}");
    }
}

#[test]
fn rmsnorm_slots_have_a_gain_and_no_bias() {
    let vs = VarStore::new(Device::Cpu);
    let cfg = Seq2SeqConfig { norm: preln_model::NormKind::RmsNorm, ..tiny(NormPlacement::Pre) };
    Seq2Seq::new(&vs.root(), &cfg).unwrap();
    let names = param_names(&vs);
    assert!(names.iter().any(|n| n == "encoder.layers.0.ffn_norm.weight"));
    assert!(names.iter().any(|n| n == "decoder.final_norm.weight"));
    assert!(!names.iter().any(|n| n.contains("norm.bias")), "{names:?}");
}

#[test]
fn deepnorm_scales_value_output_and_ffn_weights_by_beta_and_nothing_else() {
    let cfg = |placement| Seq2SeqConfig { encoder_layers: 6, decoder_layers: 6, ..tiny(placement) };
    let build = |placement| {
        let vs = VarStore::new(Device::Cpu);
        preln_model::init::seeded(11, || Seq2Seq::new(&vs.root(), &cfg(placement)).unwrap());
        vs
    };
    let (post, deep) = (build(NormPlacement::Post), build(NormPlacement::DeepNorm));
    let (pv, dv) = (post.variables(), deep.variables());
    let s = 6f64.powf(5.0 / 16.0);
    let (enc_beta, dec_beta) = (0.87 / s, 72f64.powf(-0.25));
    for (name, p) in &pv {
        let scaled = ["v_proj.weight", "out_proj.weight", "fc1.weight", "fc2.weight"].iter().any(|w| name.ends_with(w));
        let beta = if !scaled {
            1.0
        } else if name.starts_with("encoder.") {
            enc_beta
        } else {
            dec_beta
        };
        let want = p * beta;
        assert!(dv[name].allclose(&want, 1e-6, 1e-7, false), "{name}: want x{beta}");
    }
}

#[test]
fn bert_final_norm_follows_placement() {
    for placement in NormPlacement::ALL {
        let vs = VarStore::new(Device::Cpu);
        let cfg = BertConfig {
            placement,
            vocab_size: 30,
            d_model: 8,
            ffn_dim: 16,
            heads: 2,
            layers: 2,
            ..Default::default()
        };
        Bert::new(&vs.root(), &cfg).unwrap();
        let has_final = param_names(&vs).iter().any(|n| n == "encoder.final_norm.weight");
        let want = matches!(
            placement,
            NormPlacement::Pre | NormPlacement::Sandwich | NormPlacement::Peri | NormPlacement::Mix
        );
        assert_eq!(has_final, want, "{placement}");
    }
}

#[test]
fn parameter_paths_are_stable() {
    let vs = VarStore::new(Device::Cpu);
    Seq2Seq::new(&vs.root(), &tiny(NormPlacement::Pre)).unwrap();
    let names = param_names(&vs);
    for expected in [
        "embed_tokens.weight",
        "encoder.layers.0.self_attn.q_proj.weight",
        "encoder.layers.2.ffn.fc2.weight",
        "encoder.layers.2.ffn_norm.bias",
        "decoder.layers.1.cross_attn.out_proj.bias",
        "decoder.layers.1.cross_attn_norm.weight",
    ] {
        assert!(names.iter().any(|n| n == expected), "missing {expected} in {names:?}");
    }
    // Shared embeddings: one matrix only.
    assert_eq!(names.iter().filter(|n| n.contains("embed")).count(), 1);
    let vs = VarStore::new(Device::Cpu);
    Seq2Seq::new(&vs.root(), &Seq2SeqConfig { share_embeddings: false, ..tiny(NormPlacement::Post) }).unwrap();
    let names = param_names(&vs);
    for expected in ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight"] {
        assert!(names.iter().any(|n| n == expected), "missing {expected}");
    }
}

#[test]
fn init_follows_the_paper() {
    let vs = VarStore::new(Device::Cpu);
    tch::manual_seed(0);
    let cfg = Seq2SeqConfig { d_model: 64, ffn_dim: 128, heads: 4, ..tiny(NormPlacement::Post) };
    Seq2Seq::new(&vs.root(), &cfg).unwrap();
    let vars = vs.variables();
    let emb = &vars["embed_tokens.weight"];
    assert_eq!(emb.get(cfg.pad_id).abs().sum(Kind::Float).double_value(&[]), 0.0, "padding row must be zero");
    let std = emb.narrow(0, 1, 29).std(true).double_value(&[]);
    assert!((std - 64f64.powf(-0.5)).abs() < 0.02, "embedding std {std}");
    // Xavier uniform on fc1 [128, 64]: bound sqrt(6 / 192).
    let w = &vars["encoder.layers.0.ffn.fc1.weight"];
    let bound = (6.0f64 / 192.0).sqrt();
    assert!(w.abs().max().double_value(&[]) <= bound + 1e-6);
    assert!(w.abs().max().double_value(&[]) > 0.9 * bound);
    assert_eq!(vars["encoder.layers.0.ffn.fc1.bias"].abs().sum(Kind::Float).double_value(&[]), 0.0);
}

fn batch() -> (Tensor, Tensor) {
    let src = Tensor::from_slice(&[5i64, 6, 7, 8, 3, 4, 0, 0]).view([2, 4]);
    let prev = Tensor::from_slice(&[2i64, 9, 10, 2, 11, 0]).view([2, 3]);
    (src, prev)
}

#[test]
fn dropout_acts_in_training_only() {
    let cfg =
        Seq2SeqConfig { dropout: 0.3, attention_dropout: 0.1, activation_dropout: 0.1, ..tiny(NormPlacement::Pre) };
    let vs = VarStore::new(Device::Cpu);
    let m = Seq2Seq::new(&vs.root(), &cfg).unwrap();
    let (src, prev) = batch();
    let eval1 = m.forward(&src, &prev, false).1.logits;
    let eval2 = m.forward(&src, &prev, false).1.logits;
    assert!(eval1.equal(&eval2), "evaluation must be deterministic");
    let train = m.forward(&src, &prev, true).1.logits;
    assert!(!train.allclose(&eval1, 1e-4, 1e-4, false), "dropout must change training outputs");
}

#[test]
fn padding_does_not_change_real_positions() {
    for placement in NormPlacement::ALL {
        let vs = VarStore::new(Device::Cpu);
        let m = Seq2Seq::new(&vs.root(), &tiny(placement)).unwrap();
        let (src, prev) = batch();
        let full = m.forward(&src, &prev, false).1.logits;
        // Sentence 2 alone, without its padding.
        let alone =
            m.forward(&src.narrow(0, 1, 1).narrow(1, 0, 2), &prev.narrow(0, 1, 1).narrow(1, 0, 2), false).1.logits;
        let padded = full.narrow(0, 1, 1).narrow(1, 0, 2);
        assert!(padded.allclose(&alone, 1e-5, 1e-5, false), "{placement}");
    }
}

#[test]
fn causal_mask_hides_the_future() {
    let vs = VarStore::new(Device::Cpu);
    let m = Seq2Seq::new(&vs.root(), &tiny(NormPlacement::Post)).unwrap();
    let (src, prev) = batch();
    let a = m.forward(&src, &prev, false).1.logits;
    let changed = prev.copy();
    let _ = changed.get(0).get(2).fill_(20);
    let b = m.forward(&src, &changed, false).1.logits;
    assert!(a.narrow(1, 0, 2).allclose(&b.narrow(1, 0, 2), 1e-6, 1e-6, false));
    assert!(!a.narrow(1, 2, 1).allclose(&b.narrow(1, 2, 1), 1e-6, 1e-6, false));
}

#[test]
fn checkpoint_round_trip_and_strict_errors() {
    let dir = std::env::temp_dir().join(format!("preln-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let vs = VarStore::new(Device::Cpu);
    Seq2Seq::new(&vs.root(), &tiny(NormPlacement::Pre)).unwrap();
    checkpoint::save(&vs, &path).unwrap();
    assert!(!dir.join("model.safetensors.tmp").exists());

    let mut other = VarStore::new(Device::Cpu);
    Seq2Seq::new(&other.root(), &tiny(NormPlacement::Pre)).unwrap();
    checkpoint::load(&mut other, &path).unwrap();
    for ((n, a), (_, b)) in parameters(&vs).iter().zip(parameters(&other).iter()) {
        assert!(a.equal(b), "{n} differs after load");
    }

    // A Post-LN model has no final norms: loading a Pre-LN file names the unexpected keys.
    let mut post = VarStore::new(Device::Cpu);
    Seq2Seq::new(&post.root(), &tiny(NormPlacement::Post)).unwrap();
    let err = checkpoint::load(&mut post, &path).unwrap_err().to_string();
    assert!(err.contains("unexpected keys") && err.contains("encoder.final_norm.weight"), "{err}");

    // A wider model: the shape error names the key.
    let mut wide = VarStore::new(Device::Cpu);
    Seq2Seq::new(&wide.root(), &Seq2SeqConfig { ffn_dim: 32, ..tiny(NormPlacement::Pre) }).unwrap();
    let err = checkpoint::load(&mut wide, &path).unwrap_err().to_string();
    assert!(err.contains("ffn.fc1.") && err.contains("shape"), "{err}");

    let err = checkpoint::load(&mut wide, &dir.join("nope.safetensors")).unwrap_err().to_string();
    assert!(err.contains("nope.safetensors") && err.contains("not found"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
