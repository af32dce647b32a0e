//! Optimizer trajectories against torch.optim (tools/make_optim_golden.py).

use std::path::PathBuf;

use preln_model::checkpoint;
use preln_train::optim::{Optimizer, OptimizerConfig};
use tch::{Kind, Tensor};

fn golden() -> std::collections::HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/optim.safetensors");
    assert!(path.exists(), "{} is missing: run tools/make_optim_golden.py", path.display());
    checkpoint::read(&path).unwrap()
}

/// Ten updates of two fp64 parameters; Adam and AdamW run through libtorch's fused kernel
/// unless `fused` is false.
fn replay_with(name: &str, cfg: OptimizerConfig, fused: bool) {
    let g = golden();
    let params: Vec<(String, Tensor)> =
        ["a", "b"].iter().map(|k| (k.to_string(), g[&format!("init.{k}")].copy().set_requires_grad(true))).collect();
    let mut opt = Optimizer::new(cfg, params.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect());
    opt.set_fused(fused);
    for k in 1..=10i64 {
        opt.zero_grad().unwrap();
        for (_, p) in &params {
            let idx = Tensor::arange(p.numel() as i64, (Kind::Double, p.device())).reshape(p.size());
            let grad = tch::no_grad(|| p * 0.5 + (idx + k as f64).cos() * 0.1);
            // d/dp sum(p * grad) = grad
            (p * grad).sum(Kind::Double).backward();
        }
        opt.step(0.01 * (1 + k % 3) as f64).unwrap();
        for (pname, p) in &params {
            let want = &g[&format!("{name}.{k}.{pname}")];
            let err = (p - want).abs().max().double_value(&[]);
            assert!(err < 1e-12, "{name} (fused {fused}) step {k} param {pname}: max error {err:e}");
        }
    }
}

fn replay(name: &str, cfg: OptimizerConfig) {
    replay_with(name, cfg.clone(), true);
    replay_with(name, cfg, false);
}

#[test]
fn adam_matches_torch() {
    replay("adam", OptimizerConfig::Adam { betas: (0.9, 0.98), eps: 1e-8, weight_decay: 0.01 });
}

#[test]
fn adamw_matches_torch() {
    replay("adamw", OptimizerConfig::AdamW { betas: (0.9, 0.98), eps: 1e-8, weight_decay: 0.01 });
}

#[test]
fn sgd_matches_torch() {
    replay("sgd", OptimizerConfig::Sgd { momentum: 0.0, weight_decay: 0.0 });
    replay("sgd_momentum", OptimizerConfig::Sgd { momentum: 0.9, weight_decay: 0.001 });
}

#[test]
fn radam_matches_torch_in_both_phases() {
    // With beta2 = 0.98 the rectification starts at step 6 of 10: both branches are replayed.
    replay("radam", OptimizerConfig::RAdam { betas: (0.9, 0.98), eps: 1e-8, weight_decay: 0.01 });
}
