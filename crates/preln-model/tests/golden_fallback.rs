//! The golden tests (`golden.rs`) with every fast path forced off, as on a CPU that has none of
//! them: libtorch's linear instead of oneDNN, the portable kernels instead of AVX2. Passes on
//! any CPU; with `PRELN_TEST_DEVICE=cuda` it checks the GPU as `golden.rs` does.

mod common;

use common::golden::{cases, check, ModelKind};
use preln_ops::caps::{self, PathState};
use tch::Kind;

/// fp32 against the fp64 reference. The loosest tensor is ReZero's scalar gate, whose gradient
/// sums a few hundred fp32 products through un-normalized activations (measured 1.2e-5; every
/// placement matches to 1e-10 in fp64).
const FP32_TOL: f64 = 2e-5;

/// Forces the fallback for this whole process (every test here calls it first), and after the
/// checks asserts that no AVX2 kernel ran.
fn with_fallback(f: impl FnOnce()) {
    caps::force_fallback();
    assert!(matches!(caps::dnnl_linear(), PathState::Off(_)));
    f();
    assert_eq!(caps::kernel_calls().0, 0, "an AVX2 kernel ran with the fast paths off");
}

#[test]
fn seq2seq_matches_pytorch_fp32_on_the_fallback_paths() {
    with_fallback(|| {
        for case in cases() {
            check(ModelKind::Seq2Seq, case, Kind::Float, FP32_TOL);
        }
    });
}

#[test]
fn bert_matches_pytorch_fp32_on_the_fallback_paths() {
    with_fallback(|| {
        for case in cases() {
            check(ModelKind::Bert, case, Kind::Float, FP32_TOL);
        }
    });
}
