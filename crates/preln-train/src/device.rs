//! Where training runs, checked before anything is allocated: the device, whether its
//! precision is fast there, and whether the model fits in memory.

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::TrainError;

/// The arithmetic of the training step's forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl Precision {
    pub fn is_bf16(self) -> bool {
        self == Precision::Bf16
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown precision `{s}` (known: fp32, bf16)")),
        }
    }
}

/// Where to run, as a config (`train.device`) or the command line (`--device`) says it: the one
/// device choice of every command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            _ => Err(format!("unknown device `{s}` (known: auto, cpu, cuda)")),
        }
    }
}

impl DeviceChoice {
    /// The libtorch device; asking for CUDA without a GPU is an error, not a silent fallback.
    pub fn resolve(self) -> Result<Device, TrainError> {
        match self {
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            DeviceChoice::Cuda => Err(TrainError::Config(
                "device cuda: libtorch sees no CUDA device (is this a CUDA build of libtorch on a GPU machine?)".into(),
            )),
        }
    }
}

/// The device of `choice` (`train.device`), checked against `precision` (`train.precision`).
pub fn resolve_device(choice: DeviceChoice, precision: Precision) -> Result<Device, TrainError> {
    let device = choice.resolve()?;
    check_precision(precision, device)?;
    Ok(device)
}

/// Refuses bf16 on a CPU without fast bf16 matrix products (where libtorch emulates them tens
/// of times slower than fp32), naming the missing CPU features, before anything runs.
pub fn check_precision(precision: Precision, device: Device) -> Result<(), TrainError> {
    if !precision.is_bf16() || device != Device::Cpu {
        return Ok(());
    }
    match preln_ops::caps::cpu_bf16() {
        preln_ops::caps::PathState::On => Ok(()),
        preln_ops::caps::PathState::Unsupported(why) | preln_ops::caps::PathState::Off(why) => {
            Err(TrainError::Config(format!(
                "train.precision = \"bf16\" on the CPU: {why} ({}); bf16 would run tens of times slower than fp32 \
                 here. Use train.precision = \"fp32\" (or train.device = \"cuda\")",
                preln_ops::caps::cpu_info().model
            )))
        }
    }
}

/// Refuses, before anything is allocated, a model whose training cannot fit in this machine's
/// memory (on the CPU; a GPU's own memory is left to CUDA's allocator to report).
pub fn check_memory(what: &str, need: &preln_model::memory::Need, device: Device) -> Result<(), TrainError> {
    if device != Device::Cpu {
        return Ok(());
    }
    match preln_model::memory::host_available_bytes() {
        Some(available) => Ok(preln_model::memory::check_fits(what, need, available)?),
        None => Ok(()),
    }
}
