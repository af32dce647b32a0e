//! Forward outputs, loss and every parameter's gradient of tiny models against the independent
//! PyTorch reference in tools/make_golden.py (which wrote tests/golden/), on the paths this
//! machine takes (`golden_fallback.rs` runs them with every fast path off).

mod common;

use common::golden::{check, ModelKind};
use preln_model::NormPlacement;
use tch::Kind;

#[test]
fn seq2seq_matches_pytorch_fp32() {
    for placement in NormPlacement::ALL {
        check(ModelKind::Seq2Seq, placement, Kind::Float, 1e-5);
    }
}

#[test]
fn seq2seq_matches_pytorch_fp64() {
    for placement in NormPlacement::ALL {
        check(ModelKind::Seq2Seq, placement, Kind::Double, 1e-10);
    }
}

#[test]
fn bert_matches_pytorch_fp32() {
    for placement in NormPlacement::ALL {
        check(ModelKind::Bert, placement, Kind::Float, 1e-5);
    }
}

#[test]
fn bert_matches_pytorch_fp64() {
    for placement in NormPlacement::ALL {
        check(ModelKind::Bert, placement, Kind::Double, 1e-10);
    }
}
