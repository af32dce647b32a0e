//! One forward and backward pass of a freshly initialized model: the gradient norm of every
//! parameter and the squared norm of the hidden state after every layer.

use preln_data::Batch;
use preln_model::diagnostics::{grad_norms, sq_norms_over_d};
use preln_model::init::seeded;
use preln_model::stack::StackOut;
use preln_model::{label_smoothed_nll, Result, Seq2Seq, Seq2SeqConfig};
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// What one seed of one model shows at initialization.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The training loss (label-smoothed, mean over target tokens), averaged over the batches.
    pub loss: f64,
    /// `(path, ||dL/dW||_F)` for every parameter, in natural path order.
    pub grad_norms: Vec<(String, f64)>,
    pub encoder: HiddenNorms,
    pub decoder: HiddenNorms,
}

/// `E ||x||^2 / d` over real (non-padding) tokens.
#[derive(Clone, Debug, Default)]
pub struct HiddenNorms {
    /// The stack input `x_1` (embedding plus positions).
    pub input: f64,
    /// After each layer: its last residual sum before any norm (Post-LN `x5`, Pre-LN `x_{l+1}`).
    pub layers: Vec<f64>,
}

fn add_hidden(acc: &mut HiddenNorms, stack: &StackOut, keep: &Tensor, weight: f64) {
    let mut xs = vec![&stack.input];
    xs.extend(stack.layer_sums.iter());
    let norms = sq_norms_over_d(&xs, keep);
    acc.input += weight * norms[0];
    acc.layers.resize(stack.layer_sums.len(), 0.0);
    for (a, n) in acc.layers.iter_mut().zip(&norms[1..]) {
        *a += weight * n;
    }
}

/// Initializes `cfg` (dropout off) with `seed` (Admin's profiling pass on the first batch) and runs forward and backward over `batches`,
/// accumulating the gradient of the loss averaged over all their target tokens (as if they
/// were one batch). Hidden norms are averaged over batches, weighted by their tokens.
pub fn probe(cfg: &Seq2SeqConfig, batches: &[Batch], seed: u64, smoothing: f64, device: Device) -> Result<Probe> {
    assert!(!batches.is_empty(), "probe needs at least one batch");
    let vs = VarStore::new(device);
    let model = seeded(seed, || Seq2Seq::new(&vs.root(), &cfg.clone().without_dropout()))?;
    model.profile_init(&batches[0].src.to_device(device), &batches[0].prev.to_device(device));
    let total_target: i64 = batches.iter().map(|b| b.target_tokens).sum();
    let total_src: i64 = batches.iter().map(|b| b.src_tokens).sum();
    let (mut loss_sum, mut encoder, mut decoder) = (0.0, HiddenNorms::default(), HiddenNorms::default());
    for b in batches {
        let (src, prev, target) = (b.src.to_device(device), b.prev.to_device(device), b.target.to_device(device));
        let (enc, dec) = model.forward(&src, &prev, false);
        let loss = label_smoothed_nll(&dec.logits, &target, smoothing, cfg.pad_id).loss / total_target as f64;
        loss.backward();
        loss_sum += loss.double_value(&[]);
        tch::no_grad(|| {
            add_hidden(&mut encoder, &enc.stack, &src.ne(cfg.pad_id), b.src_tokens as f64 / total_src as f64);
            add_hidden(&mut decoder, &dec.stack, &prev.ne(cfg.pad_id), b.target_tokens as f64 / total_target as f64);
        });
    }
    Ok(Probe { loss: loss_sum, grad_norms: grad_norms(&vs), encoder, decoder })
}

#[cfg(test)]
mod tests {
    use super::*;
    use preln_data::{Specials, SyntheticTask};
    use preln_model::NormPlacement;

    fn tiny(placement: NormPlacement) -> Seq2SeqConfig {
        Seq2SeqConfig {
            placement,
            vocab_size: 50,
            d_model: 16,
            ffn_dim: 32,
            heads: 2,
            encoder_layers: 2,
            decoder_layers: 3,
            ..Default::default()
        }
    }

    fn batch() -> Batch {
        let task = SyntheticTask::new(50, 3, 8, 1);
        Batch::from_pairs(&task.pairs(6, 0), Specials::DEFAULT, Device::Cpu)
    }

    #[test]
    fn gradient_norm_two_ways() {
        // The reported norm equals sqrt(sum g^2) computed element by element.
        let vs = VarStore::new(Device::Cpu);
        let cfg = tiny(NormPlacement::Post);
        let model = seeded(3, || Seq2Seq::new(&vs.root(), &cfg)).unwrap();
        let b = batch();
        let (_, dec) = model.forward(&b.src, &b.prev, false);
        label_smoothed_nll(&dec.logits, &b.target, 0.1, 0).mean_loss().backward();
        let norms = grad_norms(&vs);
        let vars = vs.variables();
        for (name, norm) in &norms {
            let g = Vec::<f32>::try_from(vars[name].grad().flatten(0, -1)).unwrap();
            let by_hand = g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            assert!((norm - by_hand).abs() <= 1e-5 * by_hand.max(1e-12), "{name}: {norm} vs {by_hand}");
        }
        assert_eq!(norms.len(), vars.len());
    }

    #[test]
    fn probe_is_deterministic_per_seed() {
        let cfg = tiny(NormPlacement::Pre);
        let a = probe(&cfg, &[batch()], 5, 0.1, Device::Cpu).unwrap();
        let b = probe(&cfg, &[batch()], 5, 0.1, Device::Cpu).unwrap();
        let c = probe(&cfg, &[batch()], 6, 0.1, Device::Cpu).unwrap();
        assert_eq!(a.grad_norms, b.grad_norms);
        assert_ne!(a.grad_norms, c.grad_norms);
        assert_eq!((a.encoder.layers.len(), a.decoder.layers.len()), (2, 3));
        // Near uniform predictions at init: the loss is close to ln(V).
        assert!((a.loss - 50f64.ln()).abs() < 1.5, "loss {}", a.loss);
    }

    #[test]
    fn two_batches_act_as_one() {
        let cfg = tiny(NormPlacement::Post);
        let task = SyntheticTask::new(50, 3, 8, 1);
        let b1 = Batch::from_pairs(&task.pairs(4, 1), Specials::DEFAULT, Device::Cpu);
        let b2 = Batch::from_pairs(&task.pairs(4, 2), Specials::DEFAULT, Device::Cpu);
        let both = probe(&cfg, &[b1, b2], 1, 0.1, Device::Cpu).unwrap();
        let mut pairs = task.pairs(4, 1);
        pairs.extend(task.pairs(4, 2));
        let one =
            probe(&cfg, &[Batch::from_pairs(&pairs, Specials::DEFAULT, Device::Cpu)], 1, 0.1, Device::Cpu).unwrap();
        assert!((both.loss - one.loss).abs() < 1e-5, "{} vs {}", both.loss, one.loss);
        for ((name, a), (_, b)) in both.grad_norms.iter().zip(&one.grad_norms) {
            assert!((a - b).abs() <= 1e-4 * b.max(1e-3), "{name}: {a} vs {b}");
        }
    }
}
