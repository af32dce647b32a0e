//! Helpers shared by the model's integration tests.
#![allow(dead_code)]

pub mod golden;

use std::path::PathBuf;

use tch::{Device, Kind, Tensor};

/// The device tests run on: `PRELN_TEST_DEVICE=cuda` runs them on a GPU.
pub fn device() -> Device {
    match std::env::var("PRELN_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        Ok("cpu") | Err(_) => Device::Cpu,
        Ok(other) => panic!("PRELN_TEST_DEVICE must be cpu or cuda, got {other}"),
    }
}

pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("golden")
}

/// max |got - want| / max(max |want|, floor): the error relative to the tensor's scale, or to
/// `floor` where the reference is smaller (a gradient that is zero in exact arithmetic).
pub fn relative_error(got: &Tensor, want: &Tensor, floor: f64) -> f64 {
    let got = got.to_device(Device::Cpu).to_kind(Kind::Double);
    let want = want.to_device(Device::Cpu).to_kind(Kind::Double);
    assert_eq!(got.size(), want.size(), "shapes differ");
    let scale = max_abs(&want).max(floor).max(1e-30);
    (got - want).abs().max().double_value(&[]) / scale
}

pub fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().to_kind(Kind::Double).double_value(&[])
}
