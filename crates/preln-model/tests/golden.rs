//! Forward outputs, loss and every parameter's gradient of tiny models against the independent
//! PyTorch reference in tools/make_golden.py (which wrote tests/golden/), on the paths this
//! machine takes (`golden_fallback.rs` runs them with every fast path off).

mod common;

use common::golden::{cases, check, ModelKind};
use tch::Kind;

/// fp32 against the fp64 reference. The loosest tensor is ReZero's scalar gate, whose gradient
/// sums a few hundred fp32 products through un-normalized activations (measured 1.2e-5; every
/// placement matches to 1e-10 in fp64).
const FP32_TOL: f64 = 2e-5;

#[test]
fn seq2seq_matches_pytorch_fp32() {
    for case in cases() {
        check(ModelKind::Seq2Seq, case, Kind::Float, FP32_TOL);
    }
}

#[test]
fn seq2seq_matches_pytorch_fp64() {
    for case in cases() {
        check(ModelKind::Seq2Seq, case, Kind::Double, 1e-10);
    }
}

#[test]
fn bert_matches_pytorch_fp32() {
    for case in cases() {
        check(ModelKind::Bert, case, Kind::Float, FP32_TOL);
    }
}

#[test]
fn bert_matches_pytorch_fp64() {
    for case in cases() {
        check(ModelKind::Bert, case, Kind::Double, 1e-10);
    }
}
