//! With every fast path forced off (as on a CPU that has none of them), the operations take
//! libtorch's ops and the portable kernels, never the fast paths, and give the same results.
//! This process forces the fallback before anything else; it passes on any CPU.

use preln_ops::caps::{self, PathState};
use tch::{Device, Kind, Tensor};

fn fallback() {
    caps::force_fallback();
    assert!(matches!(caps::dnnl_linear(), PathState::Off(_)));
    assert!(matches!(caps::vector_kernels(), PathState::Off(_)));
}

#[test]
fn linear_records_libtorch_ops_not_the_onednn_node() {
    fallback();
    tch::manual_seed(1);
    let opts = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([6, 5], opts).set_requires_grad(true);
    let w = Tensor::randn([4, 5], opts).set_requires_grad(true);
    let b = Tensor::randn([4], opts).set_requires_grad(true);
    let y = preln_ops::linear(&x, &w, Some(&b));
    let node = preln_ops::grad_fn_name(&y).unwrap();
    assert_eq!(node, "AddmmBackward0", "fallback linear recorded {node}");
    let want = x.matmul(&w.transpose(0, 1)) + &b;
    assert!((&y - want).abs().max().double_value(&[]) < 1e-6);
}

#[test]
fn kernels_run_the_portable_build_only() {
    fallback();
    let (avx2_before, portable_before) = caps::kernel_calls();
    tch::manual_seed(2);
    let opts = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([64, 300], opts).set_requires_grad(true);
    let y = Tensor::randn([64, 300], opts).set_requires_grad(true);
    let out = preln_ops::residual_dropout(&x, &preln_ops::dropout(&y, 0.1, true), 0.1, true);
    let target = Tensor::randint(300, [64], (Kind::Int64, Device::Cpu));
    let (loss, _) = preln_ops::smoothed_ce(&out, &target, 0.1, -100).unwrap();
    loss.backward();
    let (avx2, portable) = caps::kernel_calls();
    assert_eq!(avx2, avx2_before, "an AVX2 kernel ran with the fast paths off");
    assert!(portable > portable_before, "no portable kernel ran");
    // The portable loss equals libtorch's formula.
    let lp = out.detach().log_softmax(-1, Kind::Double);
    let nll = -lp.gather(1, &target.unsqueeze(1), false).sum(Kind::Double);
    let smooth = -lp.sum(Kind::Double);
    let eps_i = 0.1 / 299.0;
    let want = &nll * (1.0 - 0.1 - eps_i) + smooth * eps_i;
    let err = (loss.to_kind(Kind::Double) - &want).abs().double_value(&[]) / want.double_value(&[]);
    assert!(err < 1e-5, "loss off by {err:e} relative");
}
