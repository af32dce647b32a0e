//! The golden tests (`golden.rs`) with every fast path forced off, as on a CPU that has none of
//! them: libtorch's linear instead of oneDNN, the portable kernels instead of AVX2. Passes on
//! any CPU; with `PRELN_TEST_DEVICE=cuda` it checks the GPU as `golden.rs` does.

mod common;

use common::golden::{check, ModelKind};
use preln_model::NormPlacement;
use preln_ops::caps::{self, PathState};
use tch::Kind;

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
        for placement in NormPlacement::ALL {
            check(ModelKind::Seq2Seq, placement, Kind::Float, 1e-5);
        }
    });
}

#[test]
fn bert_matches_pytorch_fp32_on_the_fallback_paths() {
    with_fallback(|| {
        for placement in NormPlacement::ALL {
            check(ModelKind::Bert, placement, Kind::Float, 1e-5);
        }
    });
}
