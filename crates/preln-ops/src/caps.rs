//! What this machine can run, found out once per process: the CPU's features, the linked
//! libtorch's build, and for each fast path whether it works here. Each fast path is probed by
//! running it on a small input and comparing it with libtorch's own result (an exception or a
//! wrong answer means "not here"); where a path is missing the operation falls back to
//! libtorch's op. The environment can only turn paths off:
//!
//! - `PRELN_FAST_PATHS=off`: every fast path off (the oneDNN linear, the AVX2 kernels);
//! - `PRELN_LINEAR=libtorch`: the oneDNN linear off; `PRELN_LINEAR=matmul` or `inner-product`:
//!   only that oneDNN entry is probed (to compare them);
//! - `PRELN_KERNELS=portable`: the shim's element-wise and loss kernels without AVX2;
//! - `PRELN_SDP_CUDNN=on`: allows libtorch's cuDNN attention kernel on CUDA, which preln turns
//!   off: it builds a graph for every new shape (on an H200, 11 s of a 13 s first epoch of
//!   Multi30k in bf16, where the flash / memory-efficient kernels took 2 s).
//!
//! [`force_fallback`] does the same from code (tests run the fallback on any machine with it).

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

use crate::DnnlEntry;

extern "C" {
    fn preln_probe_vector_kernels() -> c_int;
    fn preln_set_vector_kernels(on: c_int) -> c_int;
    fn preln_kernel_calls(avx2: *mut i64, portable: *mut i64);
    fn preln_mkldnn_bf16_supported() -> c_int;
    fn preln_libtorch_build(buf: *mut c_char, len: c_int) -> c_int;
    fn preln_set_sdp_cudnn(on: c_int) -> c_int;
}

/// A fast path's state on this machine: taken, or not and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathState {
    On,
    /// Not supported here (the probe failed, with its reason).
    Unsupported(String),
    /// Turned off by the environment or by [`force_fallback`].
    Off(String),
}

impl PathState {
    pub fn is_on(&self) -> bool {
        *self == PathState::On
    }

    fn reason(&self) -> Option<&str> {
        match self {
            PathState::On => None,
            PathState::Unsupported(r) | PathState::Off(r) => Some(r),
        }
    }
}

/// The CPU features that decide the fast paths, as `/proc/cpuinfo` names them.
pub const CPU_FLAGS: [&str; 10] = [
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_bf16",
    "amx_bf16",
    "amx_tile",
    "avx_ne_convert",
];

/// The CPU: its model name and which of [`CPU_FLAGS`] it has (read by `cpuid`, so an emulated
/// CPU reports what it emulates).
#[derive(Debug, Clone)]
pub struct Cpu {
    pub model: String,
    pub arch: &'static str,
    pub flags: Vec<(&'static str, bool)>,
}

impl Cpu {
    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|&(f, on)| f == flag && on)
    }

    fn present(&self) -> Vec<&'static str> {
        self.flags.iter().filter(|f| f.1).map(|f| f.0).collect()
    }
}

/// What was probed, once per process.
#[derive(Debug)]
struct Probed {
    cpu: Cpu,
    libtorch: String,
    dnnl_linear: PathState,
    /// The oneDNN entry the linear layer uses where `dnnl_linear` is on.
    dnnl_entry: Option<DnnlEntry>,
    vector_kernels: PathState,
    bf16: PathState,
}

static PROBED: OnceLock<Probed> = OnceLock::new();
static FORCED_OFF: AtomicBool = AtomicBool::new(false);

fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == value)
}

fn probed() -> &'static Probed {
    PROBED.get_or_init(|| {
        let cpu = cpu();
        let all_off = env_is("PRELN_FAST_PATHS", "off");
        let linear_env = std::env::var("PRELN_LINEAR").unwrap_or_default();
        let (dnnl_linear, dnnl_entry) = if all_off {
            (PathState::Off("PRELN_FAST_PATHS=off".into()), None)
        } else if linear_env == "libtorch" {
            (PathState::Off("PRELN_LINEAR=libtorch".into()), None)
        } else {
            let entries: &[DnnlEntry] = match linear_env.as_str() {
                "matmul" => &[DnnlEntry::Matmul],
                "inner-product" => &[DnnlEntry::InnerProduct],
                // The matmul entry first: faster where it works (AVX-512), see linear_speed.
                other => {
                    if !other.is_empty() {
                        eprintln!("preln: PRELN_LINEAR={other} is none of libtorch, matmul, inner-product; ignored");
                    }
                    &[DnnlEntry::Matmul, DnnlEntry::InnerProduct]
                }
            };
            probe_dnnl_linear(entries)
        };
        let vector_kernels = probe_vector_kernels(if all_off {
            Some("PRELN_FAST_PATHS=off")
        } else if env_is("PRELN_KERNELS", "portable") {
            Some("PRELN_KERNELS=portable")
        } else {
            None
        });
        let bf16 = probe_bf16(&cpu);
        // SAFETY: a plain setter.
        unsafe { preln_set_sdp_cudnn(c_int::from(env_is("PRELN_SDP_CUDNN", "on"))) };
        Probed { libtorch: libtorch_build(), cpu, dnnl_linear, dnnl_entry, vector_kernels, bf16 }
    })
}

/// Probes every path now (otherwise the first operation that needs one does).
pub fn init() {
    probed();
}

/// Turns every fast path off for the rest of the process (the oneDNN linear and the AVX2
/// kernels): every operation takes libtorch's op or the portable kernels. For tests of the
/// fallback, on any machine.
pub fn force_fallback() {
    probed();
    FORCED_OFF.store(true, Ordering::SeqCst);
    // SAFETY: a plain setter.
    unsafe { preln_set_vector_kernels(0) };
}

/// The state of the oneDNN fp32 linear on this machine.
pub fn dnnl_linear() -> PathState {
    if FORCED_OFF.load(Ordering::Relaxed) {
        return PathState::Off("forced off".into());
    }
    probed().dnnl_linear.clone()
}

/// The oneDNN entry [`crate::linear`] uses, if any (cheap: read on every call).
pub fn dnnl_entry() -> Option<DnnlEntry> {
    if FORCED_OFF.load(Ordering::Relaxed) {
        return None;
    }
    probed().dnnl_entry
}

/// The state of the shim's AVX2 kernels (dropout, residual dropout, the fused loss).
pub fn vector_kernels() -> PathState {
    if FORCED_OFF.load(Ordering::Relaxed) {
        return PathState::Off("forced off".into());
    }
    probed().vector_kernels.clone()
}

/// Whether bf16 matrix products run natively on this CPU (oneDNN's bf16 paths), so that
/// `precision = "bf16"` pays on the CPU. Where it is not, libtorch emulates bf16 products tens
/// of times slower than fp32.
pub fn cpu_bf16() -> PathState {
    probed().bf16.clone()
}

/// The CPU this process runs on.
pub fn cpu_info() -> Cpu {
    probed().cpu.clone()
}

/// Kernel calls so far that ran the AVX2 build and the portable build of the shim's kernels.
pub fn kernel_calls() -> (i64, i64) {
    let (mut a, mut p) = (0, 0);
    // SAFETY: the shim writes two integers.
    unsafe { preln_kernel_calls(&mut a, &mut p) };
    (a, p)
}

/// The linked libtorch: version, ATen's CPU capability, MKL / oneDNN.
pub fn libtorch() -> String {
    probed().libtorch.clone()
}

fn libtorch_build() -> String {
    let mut buf = [0 as c_char; 256];
    // SAFETY: the shim writes a NUL-terminated string of at most `len` bytes.
    let rc = unsafe { preln_libtorch_build(buf.as_mut_ptr(), buf.len() as c_int) };
    if rc < 0 {
        return "unknown".into();
    }
    // SAFETY: NUL-terminated by snprintf.
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

/// The first of `entries` whose oneDNN linear works here, by [`probe_entry`].
fn probe_dnnl_linear(entries: &[DnnlEntry]) -> (PathState, Option<DnnlEntry>) {
    let mut refusals = Vec::new();
    for &entry in entries {
        match probe_entry(entry) {
            Ok(()) => return (PathState::On, Some(entry)),
            Err(why) => refusals.push(format!("{}: {}", entry.name(), first_line(&why))),
        }
    }
    (PathState::Unsupported(refusals.join("; ")), None)
}

/// Runs the oneDNN linear (forward and both gradients) through `entry` on a small input and
/// compares it with a float64 reference.
fn probe_entry(entry: DnnlEntry) -> Result<(), String> {
    tch::with_grad(|| -> Result<(), String> {
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::arange(2 * 3 * 5, opts).view([2, 3, 5]).sin().set_requires_grad(true);
        let w = Tensor::arange(4 * 5, opts).view([4, 5]).cos().set_requires_grad(true);
        let b = Tensor::arange(4, opts).set_requires_grad(true);
        let y = crate::dnnl_linear(&x, &w, Some(&b), entry).map_err(|e| e.0)?;
        let up = Tensor::arange(2 * 3 * 4, opts).view([2, 3, 4]).tanh();
        (&y * &up).sum(Kind::Float).backward();
        let d = |t: &Tensor| t.detach().to_kind(Kind::Double);
        let want = d(&x).matmul(&d(&w).transpose(0, 1)) + d(&b);
        let up = d(&up);
        let want_gx = up.matmul(&d(&w));
        let want_gw = up.reshape([-1, 4]).transpose(0, 1).matmul(&d(&x).reshape([-1, 5]));
        let want_gb = up.reshape([-1, 4]).sum_dim_intlist(0, false, Kind::Double);
        for (got, want, what) in [
            (d(&y), want, "output"),
            (d(&x.grad()), want_gx, "input gradient"),
            (d(&w.grad()), want_gw, "weight gradient"),
            (d(&b.grad()), want_gb, "bias gradient"),
        ] {
            let err = (got - &want).abs().max().double_value(&[]);
            if !(err < 1e-4) {
                return Err(format!("wrong {what} (off by {err:e})"));
            }
        }
        Ok(())
    })
}

fn probe_vector_kernels(off: Option<&str>) -> PathState {
    // SAFETY: a self-contained check in the shim.
    let rc = unsafe { preln_probe_vector_kernels() };
    let state = match rc {
        1 => off.map_or(PathState::On, |why| PathState::Off(why.into())),
        0 => PathState::Unsupported("the CPU lacks AVX2 or FMA".into()),
        _ => PathState::Unsupported(first_line(&crate::last_error())),
    };
    // SAFETY: a plain setter.
    unsafe { preln_set_vector_kernels(c_int::from(state.is_on())) };
    state
}

fn probe_bf16(cpu: &Cpu) -> PathState {
    // SAFETY: a plain query.
    let rc = unsafe { preln_mkldnn_bf16_supported() };
    let native = ["avx512_bf16", "amx_bf16", "avx_ne_convert"];
    let emulated_ok = ["avx512bw", "avx512vl", "avx512dq"].iter().all(|f| cpu.has(f));
    let supported = match rc {
        1 => true,
        0 => false,
        _ => native.iter().any(|f| cpu.has(f)) || emulated_ok,
    };
    if supported {
        return PathState::On;
    }
    PathState::Unsupported(format!(
        "libtorch's oneDNN has no fast bf16 on this CPU: it needs one of {} or AVX-512 BW/VL/DQ",
        native.join(", ")
    ))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

#[cfg(target_arch = "x86_64")]
fn cpu() -> Cpu {
    use std::arch::x86_64::__cpuid_count;
    // cpuid exists on every x86-64 CPU; leaves beyond the maximum are not read.
    let (max, leaf7, leaf7_1, brand) = {
        let max = __cpuid_count(0, 0).eax;
        let l7 = if max >= 7 { __cpuid_count(7, 0) } else { __cpuid_count(0, 0) };
        let l7_1 = if max >= 7 { __cpuid_count(7, 1) } else { __cpuid_count(0, 0) };
        let ext = __cpuid_count(0x8000_0000, 0).eax;
        let mut brand = Vec::new();
        if ext >= 0x8000_0004 {
            for leaf in 0x8000_0002..=0x8000_0004u32 {
                let r = __cpuid_count(leaf, 0);
                for word in [r.eax, r.ebx, r.ecx, r.edx] {
                    brand.extend_from_slice(&word.to_le_bytes());
                }
            }
        }
        (max, l7, l7_1, brand)
    };
    let bit = |reg: u32, n: u32| max >= 7 && reg >> n & 1 == 1;
    let flags = vec![
        ("avx2", std::arch::is_x86_feature_detected!("avx2")),
        ("fma", std::arch::is_x86_feature_detected!("fma")),
        ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ("avx512bw", std::arch::is_x86_feature_detected!("avx512bw")),
        ("avx512vl", std::arch::is_x86_feature_detected!("avx512vl")),
        ("avx512dq", std::arch::is_x86_feature_detected!("avx512dq")),
        ("avx512_bf16", std::arch::is_x86_feature_detected!("avx512f") && bit(leaf7_1.eax, 5)),
        ("amx_bf16", bit(leaf7.edx, 22)),
        ("amx_tile", bit(leaf7.edx, 24)),
        ("avx_ne_convert", bit(leaf7_1.edx, 5)),
    ];
    let model = String::from_utf8_lossy(&brand).trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_string();
    Cpu { model: if model.is_empty() { proc_cpuinfo_model() } else { model }, arch: "x86_64", flags }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu() -> Cpu {
    Cpu {
        model: proc_cpuinfo_model(),
        arch: std::env::consts::ARCH,
        flags: CPU_FLAGS.iter().map(|&f| (f, false)).collect(),
    }
}

fn proc_cpuinfo_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// One line for benchmarks and logs: the CPU, its relevant flags, libtorch, and each path.
pub fn summary() -> String {
    let cpu = cpu_info();
    let threads = tch::get_num_threads();
    let state = |s: PathState, on: &str, off: &str| if s.is_on() { on.to_string() } else { off.to_string() };
    let linear = dnnl_entry().map_or("libtorch", DnnlEntry::name);
    format!(
        "CPU: {} ({} threads; {}); libtorch {}; fp32 linear: {}; kernels: {}; CPU bf16: {}",
        cpu.model,
        threads,
        cpu.present().join(" "),
        libtorch(),
        linear,
        state(vector_kernels(), "AVX2", "portable"),
        state(cpu_bf16(), "native", "emulated (slow)"),
    )
}

/// The paths, one per line with the reason where a path is not taken, for `preln info`.
pub fn report() -> Vec<String> {
    let cpu = cpu_info();
    let mut lines = vec![
        format!("CPU: {} ({})", cpu.model, cpu.arch),
        format!(
            "CPU flags: {}",
            cpu.flags
                .iter()
                .map(|(f, on)| format!("{f}{}", if *on { "" } else { " (no)" }))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!("libtorch: {} (version, ATen CPU kernels, BLAS / oneDNN)", libtorch()),
    ];
    let line = |op: &str, s: PathState, on: &str, off: &str| match s.reason() {
        None => format!("path: {op}: {on}"),
        Some(why) => format!("path: {op}: {off} ({why})"),
    };
    let linear_on = format!("{} (probed against libtorch)", dnnl_entry().map_or("", DnnlEntry::name));
    lines.push(line("fp32 linear in training (CPU)", dnnl_linear(), &linear_on, "libtorch's linear (MKL)"));
    lines.push(line(
        "dropout, residual dropout, label-smoothed loss (CPU)",
        vector_kernels(),
        "shim kernels, AVX2 + FMA",
        "shim kernels, portable",
    ));
    lines.push(line(
        "bf16 autocast (CPU)",
        cpu_bf16(),
        "native bf16 matrix products (oneDNN)",
        "refused: train.precision = \"bf16\" stops at start on this CPU",
    ));
    lines.push("path: attention in training (CPU): three steps up to 128 keys (512 in bf16), libtorch's fused kernel beyond; decoding steps (one query, CPU): three steps; other inference and CUDA: fused kernel".into());
    lines.push(format!(
        "path: attention on CUDA: flash / memory-efficient kernels, cuDNN's {}",
        if env_is("PRELN_SDP_CUDNN", "on") {
            "allowed (PRELN_SDP_CUDNN=on)"
        } else {
            "off (a graph build per new shape)"
        }
    ));
    lines.push(format!(
        "torch.distributed (c10d) Gloo groups: {}; NCCL groups (GPUs): {}",
        if crate::dist::available() {
            "built in"
        } else {
            "left out (Gloo's headers were missing at build time: libgloo-dev)"
        },
        if crate::dist::nccl_available() {
            "built in"
        } else {
            "left out (no CUDA libtorch with the CUDA runtime's and NCCL's headers at build time; GPUs use Gloo)"
        }
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_flags_are_the_listed_ones_and_consistent() {
        let cpu = cpu_info();
        let names: Vec<&str> = cpu.flags.iter().map(|f| f.0).collect();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(names, CPU_FLAGS);
        assert!(!cpu.model.is_empty());
        // AVX-512 sub-features imply the foundation.
        for f in ["avx512bw", "avx512vl", "avx512dq", "avx512_bf16"] {
            assert!(!cpu.has(f) || cpu.has("avx512f"), "{f} without avx512f");
        }
        // The shim's kernels agree with the CPU: AVX2 is only ever on where the CPU has it.
        if vector_kernels().is_on() {
            assert!(cpu.has("avx2") && cpu.has("fma"));
        }
    }

    #[test]
    fn report_names_every_path() {
        let text = report().join("\n");
        for what in ["CPU:", "libtorch:", "fp32 linear", "label-smoothed loss", "bf16 autocast", "attention"] {
            assert!(text.contains(what), "{what} missing from\n{text}");
        }
        assert!(summary().starts_with("CPU: "));
    }
}
