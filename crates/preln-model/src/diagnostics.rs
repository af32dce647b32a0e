//! What the paper measures inside a model, as plain numbers: the gradient norm of every
//! parameter (Figure 3, Theorem 1) and the mean squared norm of hidden states (Lemma 2). Used by
//! the analysis studies and by the training loop's diagnostics.

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::parameters;

/// The Frobenius norm of every parameter's gradient, read back in one transfer.
pub fn grad_norms(vs: &VarStore) -> Vec<(String, f64)> {
    let params = parameters(vs);
    let norms: Vec<Tensor> = params
        .iter()
        .map(|(_, p)| {
            let g = p.grad();
            if g.defined() {
                g.to_kind(Kind::Float).norm()
            } else {
                Tensor::zeros([], (Kind::Float, p.device()))
            }
        })
        .collect();
    let values = Vec::<f64>::try_from(Tensor::stack(&norms, 0).to_kind(Kind::Double).to_device(Device::Cpu))
        .expect("norms are a 1-d tensor");
    params.into_iter().map(|(n, _)| n).zip(values).collect()
}

/// `E ||x||^2 / d` over the tokens where `keep` is true, for each tensor, in fp64 and read back
/// in one transfer.
///
/// # Shapes
/// each x: `[B, T, d]`; keep: `[B, T]` bool
pub fn sq_norms_over_d(xs: &[&Tensor], keep: &Tensor) -> Vec<f64> {
    if xs.is_empty() {
        return Vec::new();
    }
    tch::no_grad(|| {
        let keep = keep.to_kind(Kind::Double);
        let count = keep.sum(Kind::Double);
        let vals: Vec<Tensor> = xs
            .iter()
            .map(|x| {
                let d = x.size()[2] as f64;
                let per_token = x.to_kind(Kind::Double).square().sum_dim_intlist(-1, false, Kind::Double) / d;
                (per_token * &keep).sum(Kind::Double) / &count
            })
            .collect();
        Vec::<f64>::try_from(Tensor::stack(&vals, 0).to_device(Device::Cpu)).expect("norms are a 1-d tensor")
    })
}

/// The group a parameter belongs to: its layer (`encoder.layers.3.ffn.fc2.weight` ->
/// `encoder.layers.3`), else its module (`embed_tokens.weight` -> `embed_tokens`).
pub fn param_group(path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    match parts.iter().position(|p| *p == crate::stack::LAYERS) {
        Some(i) if i + 1 < parts.len() => parts[..i + 2].join("."),
        _ => parts[..parts.len().saturating_sub(1).max(1)].join("."),
    }
}

/// Per-group gradient norms (root of the summed squares of the group's parameter norms), in
/// the order the groups first appear.
pub fn group_norms(norms: &[(String, f64)]) -> Vec<(String, f64)> {
    let mut groups: Vec<(String, f64)> = Vec::new();
    for (path, n) in norms {
        let g = param_group(path);
        match groups.iter_mut().find(|(name, _)| *name == g) {
            Some((_, sq)) => *sq += n * n,
            None => groups.push((g, n * n)),
        }
    }
    groups.into_iter().map(|(g, sq)| (g, sq.sqrt())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_layer() {
        assert_eq!(param_group("encoder.layers.3.ffn.fc2.weight"), "encoder.layers.3");
        assert_eq!(param_group("embed_tokens.weight"), "embed_tokens");
        assert_eq!(param_group("decoder.final_norm.bias"), "decoder.final_norm");
        let g = group_norms(&[
            ("encoder.layers.0.a.weight".into(), 3.0),
            ("encoder.layers.0.b.bias".into(), 4.0),
            ("embed_tokens.weight".into(), 1.0),
        ]);
        assert_eq!(g, vec![("encoder.layers.0".to_string(), 5.0), ("embed_tokens".to_string(), 1.0)]);
    }
}
