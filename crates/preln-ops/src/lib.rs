//! libtorch operations that `tch 0.24` does not bind, through a small C++ shim
//! (`csrc/preln_ops.cpp`): bfloat16 autocast on the CPU (and CUDA), the fused Adam / AdamW
//! kernels, setting a gradient to None, and an fp32 linear layer on oneDNN. Which fast paths
//! this machine can take is probed once per process ([`caps`]); where one is missing, or fails
//! at run time, the operation falls back to libtorch's own op.

pub mod caps;
pub mod dist;

use std::ffi::CStr;
use std::os::raw::{c_char, c_double, c_int};
use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn preln_last_error() -> *const c_char;
    fn preln_autocast_enter(cuda: c_int) -> c_int;
    fn preln_autocast_exit(cuda: c_int, was_enabled: c_int) -> c_int;
    fn preln_autocast_is_enabled(cuda: c_int) -> c_int;
    fn preln_fused_adam(
        params: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        exp_avgs: *const *mut C_tensor,
        exp_avg_sqs: *const *mut C_tensor,
        step: *mut C_tensor,
        n: c_int,
        lr: c_double,
        beta1: c_double,
        beta2: c_double,
        weight_decay: c_double,
        eps: c_double,
        decoupled: c_int,
    ) -> c_int;
    fn preln_clear_grad(t: *mut C_tensor) -> c_int;
    fn preln_set_grad(t: *mut C_tensor, g: *mut C_tensor) -> c_int;
    fn preln_profile_start(path: *const c_char) -> *mut std::ffi::c_void;
    fn preln_profile_stop(handle: *mut std::ffi::c_void) -> c_int;
    fn preln_grad_enabled() -> c_int;
    fn preln_smoothed_ce(
        loss: *mut *mut C_tensor,
        nll: *mut *mut C_tensor,
        logits: *mut C_tensor,
        target: *mut C_tensor,
        epsilon: c_double,
        ignore: i64,
    ) -> c_int;
    fn preln_hash_dropout(out: *mut *mut C_tensor, x: *mut C_tensor, p: c_double) -> c_int;
    fn preln_residual_dropout(out: *mut *mut C_tensor, x: *mut C_tensor, y: *mut C_tensor, p: c_double) -> c_int;
    fn preln_dnnl_linear(
        out: *mut *mut C_tensor,
        x: *mut C_tensor,
        w: *mut C_tensor,
        b: *mut C_tensor,
        entry: c_int,
    ) -> c_int;
    fn preln_grad_fn_name(t: *mut C_tensor, buf: *mut c_char, len: c_int) -> c_int;
}

/// libtorch's operator profiler, recording every ATen operator (forward and backward) of this
/// process until dropped, then writing a Chrome trace (`chrome://tracing`, Perfetto) to the path.
pub struct Profile(*mut std::ffi::c_void);

impl Profile {
    pub fn start(path: &std::path::Path) -> Result<Profile, OpError> {
        let c = std::ffi::CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| OpError(format!("{}: a path with a NUL byte", path.display())))?;
        // SAFETY: `c` outlives the call; the shim copies it.
        let h = unsafe { preln_profile_start(c.as_ptr()) };
        if h.is_null() {
            check(-1)?;
        }
        Ok(Profile(h))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        // SAFETY: the handle came from preln_profile_start and is dropped once.
        let _ = check(unsafe { preln_profile_stop(self.0) });
    }
}

/// `x.dropout(p, train)`. On the CPU (fp32, fp64, bf16) in training the mask is a hash of a
/// seed and each element's index: the seed is drawn from libtorch's generator (so
/// `tch::manual_seed` fixes it), the backward pass recomputes the mask instead of storing it,
/// and there is no Bernoulli sampling (libtorch's CPU `bernoulli_` costs about 5% of a
/// training step). Elsewhere, libtorch's dropout.
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p == 0.0 {
        return x.shallow_clone();
    }
    if x.device() != Device::Cpu || !matches!(x.kind(), Kind::Float | Kind::Double | Kind::BFloat16) || p >= 1.0 {
        return x.dropout(p, train);
    }
    caps::init();
    // SAFETY: plain call into the shim with live tensors.
    new_tensor(|out| unsafe { preln_hash_dropout(out, ptr(x), p) })
        .unwrap_or_else(|e| fell_back("hash dropout", &e, || x.dropout(p, train)))
}

/// `x + dropout(y, p, train)`, the residual add of a sublayer. On the CPU, for an fp32 `x` and an
/// fp32 or bf16 `y` of the same shape (a bf16 branch under autocast), it is one pass with
/// [`dropout`]'s mask and no rounding of the dropped-out branch; the result is fp32, as `x + y`
/// would be. Other cases compose the two operations.
pub fn residual_dropout(x: &Tensor, y: &Tensor, p: f64, train: bool) -> Tensor {
    let fused = train
        && p > 0.0
        && p < 1.0
        && x.device() == Device::Cpu
        && y.device() == Device::Cpu
        && x.kind() == Kind::Float
        && matches!(y.kind(), Kind::Float | Kind::BFloat16)
        && x.size() == y.size();
    if !fused {
        return x + dropout(y, p, train);
    }
    caps::init();
    // SAFETY: plain call into the shim with live tensors.
    new_tensor(|out| unsafe { preln_residual_dropout(out, ptr(x), ptr(y), p) })
        .unwrap_or_else(|e| fell_back("residual dropout", &e, || x + y.dropout(p, train)))
}

static FELL_BACK: AtomicBool = AtomicBool::new(false);

/// A fast path failed at run time although its probe passed: says so once per process and
/// computes the result with libtorch's op instead (which reports a genuine input error itself).
fn fell_back(what: &str, e: &OpError, libtorch: impl FnOnce() -> Tensor) -> Tensor {
    if !FELL_BACK.swap(true, Ordering::Relaxed) {
        eprintln!("preln: {what} failed ({e}); using libtorch's op instead");
    }
    libtorch()
}

/// A tensor that a shim call writes to its out-pointer on success; tch takes ownership.
fn new_tensor(call: impl FnOnce(*mut *mut C_tensor) -> c_int) -> Result<Tensor, OpError> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    check(call(&mut out))?;
    // SAFETY: on success `out` was just allocated by the shim as an at::Tensor.
    Ok(unsafe { Tensor::from_ptr(out) })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" {
    fn mallopt(param: c_int, value: c_int) -> c_int;
}

/// Keeps freed memory in the process (glibc `malloc`: no `mmap` for large blocks, no trimming)
/// so that the large activation and gradient buffers of every training step reuse pages
/// already mapped instead of faulting in fresh zeroed ones, which costs about 5% of a CPU step
/// of the IWSLT14 model. Peak resident memory grows a little (about 5% there). Call it once at
/// start; `PRELN_MALLOC=default` in the environment leaves glibc's defaults. Returns whether it
/// changed anything.
pub fn keep_freed_memory() -> bool {
    if std::env::var("PRELN_MALLOC").is_ok_and(|v| v == "default") {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_MMAP_MAX: c_int = -4;
        // SAFETY: mallopt only changes allocator parameters.
        unsafe { mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Label-smoothed cross-entropy sums `(loss, nll)` (fp32 scalars) from logits `[..., V]` (fp32
/// or bf16, on the CPU) and targets `[...]`, over targets other than `ignore`, with fairseq's
/// definition (target `1 - eps`, every other class `eps / (V - 1)`). Differentiable in the
/// logits. Two passes over the logits forward and one backward, with fp32 statistics.
pub fn smoothed_ce(logits: &Tensor, target: &Tensor, epsilon: f64, ignore: i64) -> Result<(Tensor, Tensor), OpError> {
    // The kernel build (AVX2 or portable) is the probe's choice, as for dropout.
    caps::init();
    let mut loss: *mut C_tensor = std::ptr::null_mut();
    let mut nll: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: on success the shim writes two new heap tensors; tch takes ownership of both.
    check(unsafe { preln_smoothed_ce(&mut loss, &mut nll, ptr(logits), ptr(target), epsilon, ignore) })?;
    // SAFETY: both were just allocated by the shim as at::Tensor.
    Ok(unsafe { (Tensor::from_ptr(loss), Tensor::from_ptr(nll)) })
}

/// Whether autograd records operations in this thread (false inside `tch::no_grad`).
pub fn grad_enabled() -> bool {
    // SAFETY: a plain query.
    check(unsafe { preln_grad_enabled() }).unwrap_or(1) == 1
}

/// `x @ w^T + b`, as `torch.nn.functional.linear`. In training (autograd recording), for fp32
/// tensors on the CPU outside autocast, the matrix products of a step (forward, input gradient,
/// weight gradient) run in oneDNN through the entry the probe found working
/// ([`caps::dnnl_entry`]): its matmul on CPUs with AVX-512 (1.2-1.6x MKL's `sgemm` a product on
/// this project's AMD EPYC, `cargo run --release -p preln-ops --example linear_speed`), its inner
/// product where the matmul entry refuses the CPU (AVX2). Where neither works, and for inference,
/// other devices, dtypes and autocast, it is libtorch's linear, so decoding gives the same tokens
/// whatever the batch (oneDNN's blocking depends on the row count).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
    let dnnl = x.device() == Device::Cpu
        && x.kind() == Kind::Float
        && w.kind() == Kind::Float
        && b.is_none_or(|b| b.kind() == Kind::Float)
        && !autocast_enabled(Device::Cpu)
        && grad_enabled();
    match caps::dnnl_entry() {
        Some(entry) if dnnl => {
            dnnl_linear(x, w, b, entry).unwrap_or_else(|e| fell_back("oneDNN linear", &e, || x.linear(w, b)))
        }
        _ => x.linear(w, b),
    }
}

/// libtorch's two oneDNN entries for the products of a linear layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnnlEntry {
    /// `mkldnn_matmul`: refuses CPUs without AVX-512 BW/VL/DQ (or avx_ne_convert).
    Matmul,
    /// `mkldnn_linear_pointwise`, oneDNN's inner product on dense tensors: runs on AVX2 too.
    InnerProduct,
}

impl DnnlEntry {
    pub fn name(self) -> &'static str {
        match self {
            DnnlEntry::Matmul => "oneDNN matmul",
            DnnlEntry::InnerProduct => "oneDNN inner product",
        }
    }
}

/// `x @ w^T + b` through the oneDNN autograd function, unconditionally (fp32 CPU tensors): an
/// error where libtorch's oneDNN entry refuses this CPU. [`linear`] takes it only where it works.
pub fn dnnl_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, entry: DnnlEntry) -> Result<Tensor, OpError> {
    let bias = b.map_or(std::ptr::null_mut(), ptr);
    let entry = match entry {
        DnnlEntry::Matmul => 0,
        DnnlEntry::InnerProduct => 1,
    };
    // SAFETY: plain call into the shim with live tensors (or a null bias).
    new_tensor(|out| unsafe { preln_dnnl_linear(out, ptr(x), ptr(w), bias, entry) })
}

/// An exception thrown inside libtorch, with its message.
#[derive(Debug)]
pub struct OpError(pub String);

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "libtorch: {}", self.0)
    }
}

impl std::error::Error for OpError {}

fn check(rc: c_int) -> Result<c_int, OpError> {
    if rc >= 0 {
        return Ok(rc);
    }
    Err(OpError(last_error()))
}

/// The message of the last exception the shim caught in this thread.
fn last_error() -> String {
    // SAFETY: the shim returns a pointer to a thread-local NUL-terminated string.
    unsafe { CStr::from_ptr(preln_last_error()) }.to_string_lossy().into_owned()
}

fn ptr(t: &Tensor) -> *mut C_tensor {
    t.as_ptr() as *mut C_tensor
}

/// Runs `f` with bfloat16 autocast on `device` (as `torch.autocast(device, torch.bfloat16)`):
/// matrix products and attention run in bf16, while ops libtorch lists as fp32-only stay fp32.
/// With `enabled` false, just runs `f`.
pub fn autocast_bf16<T>(device: Device, enabled: bool, f: impl FnOnce() -> T) -> Result<T, OpError> {
    if !enabled {
        return Ok(f());
    }
    let cuda = c_int::from(device.is_cuda());
    // SAFETY: plain calls into the shim; errors are reported through the return code.
    let was = check(unsafe { preln_autocast_enter(cuda) })?;
    struct Exit(c_int, c_int);
    impl Drop for Exit {
        fn drop(&mut self) {
            // SAFETY: as above.
            let _ = check(unsafe { preln_autocast_exit(self.0, self.1) });
        }
    }
    let _exit = Exit(cuda, was);
    Ok(f())
}

/// Whether autocast is on for `device` in this thread.
pub fn autocast_enabled(device: Device) -> bool {
    // SAFETY: as above.
    check(unsafe { preln_autocast_is_enabled(c_int::from(device.is_cuda())) }).unwrap_or(0) == 1
}

/// One Adam (or, with `decoupled`, AdamW) update of all `params` by libtorch's fused
/// multi-tensor kernel (`torch.optim.Adam(fused=True)`). `step` is a 0-d float tensor on the
/// parameters' device holding the number of this update.
#[allow(clippy::too_many_arguments)]
pub fn fused_adam(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    step: &Tensor,
    lr: f64,
    betas: (f64, f64),
    weight_decay: f64,
    eps: f64,
    decoupled: bool,
) -> Result<(), OpError> {
    let n = params.len();
    if grads.len() != n || exp_avgs.len() != n || exp_avg_sqs.len() != n {
        return Err(OpError(format!(
            "fused_adam: {n} parameters but {} gradients, {} exp_avg, {} exp_avg_sq",
            grads.len(),
            exp_avgs.len(),
            exp_avg_sqs.len()
        )));
    }
    let list = |ts: &[Tensor]| ts.iter().map(ptr).collect::<Vec<_>>();
    let (p, g, m, v) = (list(params), list(grads), list(exp_avgs), list(exp_avg_sqs));
    // SAFETY: the pointer arrays live until the call returns; the shim only reads them.
    check(unsafe {
        preln_fused_adam(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            ptr(step),
            n as c_int,
            lr,
            betas.0,
            betas.1,
            weight_decay,
            eps,
            c_int::from(decoupled),
        )
    })?;
    Ok(())
}

/// Sets the gradient of `t` to None (undefined), as `zero_grad(set_to_none=True)`.
pub fn clear_grad(t: &Tensor) -> Result<(), OpError> {
    // SAFETY: `t` is a live tensor.
    check(unsafe { preln_clear_grad(ptr(t)) })?;
    Ok(())
}

/// Makes `g` the gradient of `t` (same shape, kind and device), as `t.grad = g`.
pub fn set_grad(t: &Tensor, g: &Tensor) -> Result<(), OpError> {
    if t.size() != g.size() || t.kind() != g.kind() || t.device() != g.device() {
        return Err(OpError(format!(
            "set_grad: a gradient of {:?} {:?} on {:?} for a tensor of {:?} {:?} on {:?}",
            g.size(),
            g.kind(),
            g.device(),
            t.size(),
            t.kind(),
            t.device()
        )));
    }
    // SAFETY: both are live tensors.
    check(unsafe { preln_set_grad(ptr(t), ptr(g)) })?;
    Ok(())
}

/// The name of the autograd node that produced `t` (`""` for a leaf): which op a path recorded,
/// e.g. `AddmmBackward0` for libtorch's linear.
pub fn grad_fn_name(t: &Tensor) -> Result<String, OpError> {
    let mut buf = [0 as c_char; 256];
    // SAFETY: the shim writes a NUL-terminated string of at most `len` bytes.
    check(unsafe { preln_grad_fn_name(ptr(t), buf.as_mut_ptr(), buf.len() as c_int) })?;
    // SAFETY: NUL-terminated by snprintf.
    Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests that draw from libtorch's global generator hold this lock: a draw in another test
    /// thread between `manual_seed` and a dropout would change the mask (seen under emulation).
    fn rng() -> std::sync::MutexGuard<'static, ()> {
        static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
        RNG.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn autocast_runs_matmul_in_bf16_and_restores_the_state() {
        let _rng = rng();
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        assert!(!autocast_enabled(Device::Cpu));
        let (inside, nested) = autocast_bf16(Device::Cpu, true, || {
            let c = a.matmul(&b);
            let nested = autocast_bf16(Device::Cpu, true, || autocast_enabled(Device::Cpu)).unwrap();
            (c.kind(), nested && autocast_enabled(Device::Cpu))
        })
        .unwrap();
        assert_eq!(inside, Kind::BFloat16);
        assert!(nested);
        assert!(!autocast_enabled(Device::Cpu));
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        assert_eq!(autocast_bf16(Device::Cpu, false, || a.matmul(&b).kind()).unwrap(), Kind::Float);
    }

    /// Autocast caches the bf16 copy of a weight within a region; the next region must see the
    /// weight as the optimizer left it, not a stale copy.
    #[test]
    fn autocast_regions_see_weights_updated_in_place_between_them() {
        let _rng = rng();
        let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([3, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let run = || autocast_bf16(Device::Cpu, true, || x.linear::<Tensor>(&w, None).to_kind(Kind::Float)).unwrap();
        let before = run();
        tch::no_grad(|| {
            let _ = w.shallow_clone().g_add_scalar_(1.0);
        });
        let after = run();
        let want = tch::no_grad(|| x.linear::<Tensor>(&w, None));
        let err = (&after - &want).abs().max().double_value(&[]);
        assert!(err < 0.1 * want.abs().max().double_value(&[]), "stale weights: {err}");
        assert!((&after - &before).abs().max().double_value(&[]) > 1.0);
    }

    #[test]
    fn clear_grad_makes_it_undefined() {
        let w = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&w * 2.0).sum(Kind::Float).backward();
        assert!(w.grad().defined());
        clear_grad(&w).unwrap();
        assert!(!w.grad().defined());
        (&w * 3.0).sum(Kind::Float).backward();
        assert_eq!(Vec::<f32>::try_from(w.grad()).unwrap(), vec![3.0; 3]);
        clear_grad(&w).unwrap();
        set_grad(&w, &Tensor::from_slice(&[1.0f32, 2.0, 3.0])).unwrap();
        (&w * 2.0).sum(Kind::Float).backward();
        assert_eq!(Vec::<f32>::try_from(w.grad()).unwrap(), vec![3.0, 4.0, 5.0]);
        assert!(set_grad(&w, &Tensor::zeros([2], (Kind::Float, Device::Cpu))).unwrap_err().0.contains("[2]"));
    }

    #[test]
    fn fused_adam_rejects_mismatched_lists() {
        let p = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        let step = Tensor::from(1.0f32);
        let e = fused_adam(&[p.shallow_clone()], &[], &[], &[], &step, 1e-3, (0.9, 0.98), 0.0, 1e-8, false);
        assert!(e.unwrap_err().0.contains("1 parameters but 0 gradients"));
    }

    /// Forward value and all three gradients of the oneDNN linear against libtorch's, for a
    /// 3-d input, with and without bias, and through transposed (non-contiguous) inputs, where
    /// this machine supports it; where it does not, the call is an error, not a crash.
    #[test]
    fn dnnl_linear_matches_libtorch_forward_and_backward_where_supported() {
        let _rng = rng();
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        for (entry, bias) in
            [DnnlEntry::Matmul, DnnlEntry::InnerProduct].into_iter().flat_map(|e| [(e, true), (e, false)])
        {
            let probe = dnnl_linear(&Tensor::randn([4, 7], opts), &Tensor::randn([6, 7], opts), None, entry);
            if let Err(e) = probe {
                // Refused here (matmul on a CPU without AVX-512): an error, and the probe agrees.
                assert_ne!(caps::dnnl_entry(), Some(entry), "{} refused ({e}) but chosen", entry.name());
                continue;
            }
            let x = Tensor::randn([5, 4, 7], opts).transpose(0, 1).set_requires_grad(true);
            let w = Tensor::randn([6, 7], opts).set_requires_grad(true);
            let b = Tensor::randn([6], opts).set_requires_grad(true);
            let up = Tensor::randn([4, 5, 6], opts);
            let run = |dnnl: bool| {
                for t in [&x, &w, &b] {
                    clear_grad(t).unwrap();
                }
                let y = if dnnl {
                    dnnl_linear(&x, &w, bias.then(|| &b), entry).unwrap()
                } else {
                    x.linear(&w, bias.then(|| &b))
                };
                (&y * &up).sum(Kind::Float).backward();
                let gb = if bias { b.grad().copy() } else { Tensor::zeros([6], opts) };
                (y.detach(), x.grad().copy(), w.grad().copy(), gb)
            };
            let (y0, gx0, gw0, gb0) = run(false);
            let (y1, gx1, gw1, gb1) = run(true);
            assert_eq!(y1.size(), vec![4, 5, 6]);
            for (a, e, what) in [(y1, y0, "y"), (gx1, gx0, "dx"), (gw1, gw0, "dw"), (gb1, gb0, "db")] {
                let err = (&a - &e).abs().max().double_value(&[]);
                assert!(err < 1e-4, "{} bias {bias}: {what} differs by {err}", entry.name());
            }
        }
    }

    /// The probe decides: `linear` in training records the oneDNN node exactly when the probe
    /// reported the path on, and libtorch's otherwise.
    #[test]
    fn linear_takes_the_onednn_path_exactly_when_the_probe_allows_it() {
        let _rng = rng();
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([6, 5], opts).set_requires_grad(true);
        let w = Tensor::randn([4, 5], opts).set_requires_grad(true);
        let node = grad_fn_name(&linear(&x, &w, None)).unwrap();
        assert_eq!(node.contains("DnnlLinear"), caps::dnnl_linear().is_on(), "node {node}, {:?}", caps::dnnl_linear());
        // Outside training it is always libtorch's op.
        let y = tch::no_grad(|| linear(&x, &w, None));
        assert!(!y.requires_grad());
    }

    #[test]
    fn linear_falls_back_to_libtorch_outside_fp32_cpu() {
        let _rng = rng();
        let x = Tensor::randn([3, 4], (Kind::Double, Device::Cpu));
        let w = Tensor::randn([2, 4], (Kind::Double, Device::Cpu));
        assert_eq!(linear(&x, &w, None).kind(), Kind::Double);
        assert!(grad_enabled());
        assert!(!tch::no_grad(grad_enabled));
        let y = autocast_bf16(Device::Cpu, true, || linear(&x.to_kind(Kind::Float), &w.to_kind(Kind::Float), None))
            .unwrap();
        assert_eq!(y.kind(), Kind::BFloat16);
    }

    #[test]
    fn hash_dropout_keeps_1_minus_p_scales_and_backpropagates_through_the_same_mask() {
        let _rng = rng();
        for kind in [Kind::Float, Kind::BFloat16] {
            tch::manual_seed(11);
            let x = (Tensor::rand([400, 500], (kind, Device::Cpu)) + 1.0).set_requires_grad(true);
            tch::manual_seed(12);
            let y = dropout(&x, 0.1, true);
            let kept = y.ne(0.0);
            let rate = kept.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
            assert!((rate - 0.9).abs() < 0.003, "{kind:?}: kept {rate}");
            // Neighbouring elements are dropped independently: both dropped with probability p^2.
            let dropped = kept.logical_not().flatten(0, -1).to_kind(Kind::Double);
            let n = dropped.size()[0];
            let both = (dropped.narrow(0, 0, n - 1) * dropped.narrow(0, 1, n - 1)).mean(Kind::Double).double_value(&[]);
            assert!((both - 0.01).abs() < 0.002, "{kind:?}: neighbours both dropped {both}");
            let ratio =
                (y.masked_select(&kept).to_kind(Kind::Double) / x.masked_select(&kept).to_kind(Kind::Double)).detach();
            let tol = if kind == Kind::Float { 1e-6 } else { 1e-2 };
            assert!((ratio - 1.0 / 0.9).abs().max().double_value(&[]) < tol);
            let w = Tensor::rand([400, 500], (kind, Device::Cpu));
            (&y * &w).sum(Kind::Float).backward();
            let expected = w * kept.to_kind(kind) / 0.9;
            let err = (x.grad().to_kind(Kind::Double) - expected.to_kind(Kind::Double)).abs().max().double_value(&[]);
            assert!(err < tol, "{kind:?}: gradient off by {err}");
            // Masks depend on the generator: the same seed gives the same mask, the next draw another.
            tch::manual_seed(12);
            let again = dropout(&x.detach(), 0.1, true).ne(0.0);
            assert!(again.equal(&kept));
            let next = dropout(&x.detach(), 0.1, true).ne(0.0);
            assert!(!next.equal(&kept));
        }
        let x = Tensor::ones([10], (Kind::Float, Device::Cpu));
        assert!(dropout(&x, 0.5, false).equal(&x));
        assert!(dropout(&x, 0.0, true).equal(&x));
        assert_eq!(dropout(&x, 1.0, true).sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn hash_dropout_vector_kernels_give_the_scalar_mask_and_rounding() {
        let _rng = rng();
        // fp64 runs the scalar loop; fp32 and bf16 run 8 lanes at a time with scalar heads and
        // tails (an odd length split across threads exercises both).
        let n = 50_001;
        tch::manual_seed(5);
        let x = Tensor::randn([n], (Kind::BFloat16, Device::Cpu));
        let p = 0.3;
        let with_seed = |x: &Tensor| {
            tch::manual_seed(99);
            dropout(x, p, true)
        };
        let y64 = with_seed(&x.to_kind(Kind::Double));
        let factor = y64.ne(0.0).to_kind(Kind::Float) * (1.0 / (1.0 - p) as f32) as f64;
        let xf = x.to_kind(Kind::Float);
        assert!(with_seed(&xf).equal(&(&xf * &factor)), "fp32 mask or scale differs from the scalar path");
        assert!(with_seed(&x).equal(&(&xf * &factor).to_kind(Kind::BFloat16)), "bf16 differs from fp32 then rounding");
        // NaN stays NaN through the bf16 rounding.
        let nan = Tensor::full([64], f64::NAN, (Kind::BFloat16, Device::Cpu));
        assert_eq!(with_seed(&nan).isnan().all().int64_value(&[]), 1);
    }

    #[test]
    fn residual_dropout_is_x_plus_dropout_in_one_pass() {
        let _rng = rng();
        for kind in [Kind::Float, Kind::BFloat16] {
            tch::manual_seed(7);
            let opts = (Kind::Float, Device::Cpu);
            let x = Tensor::randn([3, 1001, 7], opts).set_requires_grad(true);
            let y = Tensor::randn([3, 1001, 7], opts).to_kind(kind).set_requires_grad(true);
            tch::manual_seed(8);
            let out = residual_dropout(&x, &y, 0.2, true);
            assert_eq!(out.kind(), Kind::Float);
            // The same mask as dropout() with the same seed, with y's dropped-out values unrounded.
            tch::manual_seed(8);
            let factor = dropout(&Tensor::ones([3, 1001, 7], opts), 0.2, true);
            let want = &x.detach() + y.detach().to_kind(Kind::Float) * &factor;
            let err = (&out - &want).abs().max().double_value(&[]);
            assert!(err < 1e-6, "{kind:?}: forward off by {err}");
            let g = Tensor::randn([3, 1001, 7], opts);
            (&out * &g).sum(Kind::Float).backward();
            assert!(x.grad().equal(&g), "{kind:?}: x's gradient is the output's");
            assert_eq!(y.grad().kind(), kind);
            let want_gy = (&g * &factor).to_kind(kind);
            assert!(y.grad().equal(&want_gy), "{kind:?}: y's gradient goes through the same mask");
        }
        // Other dtypes compose the two operations, with the same mask; outside training it is
        // the plain sum.
        let x = Tensor::randn([40], (Kind::Double, Device::Cpu));
        let y = Tensor::randn([40], (Kind::Double, Device::Cpu));
        tch::manual_seed(3);
        let fused = residual_dropout(&x, &y, 0.5, true);
        tch::manual_seed(3);
        assert!(fused.equal(&(&x + dropout(&y, 0.5, true))));
        assert!(!fused.equal(&(&x + &y)));
        assert!(residual_dropout(&x, &y, 0.5, false).equal(&(&x + &y)));
    }
}
