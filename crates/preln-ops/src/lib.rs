//! libtorch operations that `tch 0.24` does not bind, through a small C++ shim
//! (`csrc/preln_ops.cpp`): bfloat16 autocast on the CPU (and CUDA), the fused Adam / AdamW
//! kernels, and setting a gradient to None.

use std::ffi::CStr;
use std::os::raw::{c_char, c_double, c_int};

use tch::{Device, Tensor};
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
    // SAFETY: the shim returns a pointer to a thread-local NUL-terminated string.
    let msg = unsafe { CStr::from_ptr(preln_last_error()) }.to_string_lossy().into_owned();
    Err(OpError(msg))
}

fn ptr(t: &Tensor) -> *mut C_tensor {
    t.as_ptr() as *mut C_tensor
}

/// Runs `f` with bfloat16 autocast on `device` (as `torch.autocast(device, torch.bfloat16)`):
/// matrix products and attention run in bf16, while ops libtorch lists as fp32-only stay fp32.
/// With `enabled` false, just runs `f`.
pub fn autocast_bf16<T>(device: Device, enabled: bool, f: impl FnOnce() -> T) -> T {
    if !enabled {
        return f();
    }
    let cuda = c_int::from(device.is_cuda());
    // SAFETY: plain calls into the shim; errors are reported through the return code.
    let was = check(unsafe { preln_autocast_enter(cuda) }).expect("entering autocast");
    struct Exit(c_int, c_int);
    impl Drop for Exit {
        fn drop(&mut self) {
            // SAFETY: as above.
            let _ = check(unsafe { preln_autocast_exit(self.0, self.1) });
        }
    }
    let _exit = Exit(cuda, was);
    f()
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
pub fn clear_grad(t: &Tensor) {
    // SAFETY: `t` is a live tensor; resetting its grad cannot fail for a valid tensor.
    check(unsafe { preln_clear_grad(ptr(t)) }).expect("clearing a gradient");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn autocast_runs_matmul_in_bf16_and_restores_the_state() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        assert!(!autocast_enabled(Device::Cpu));
        let (inside, nested) = autocast_bf16(Device::Cpu, true, || {
            let c = a.matmul(&b);
            let nested = autocast_bf16(Device::Cpu, true, || autocast_enabled(Device::Cpu));
            (c.kind(), nested && autocast_enabled(Device::Cpu))
        });
        assert_eq!(inside, Kind::BFloat16);
        assert!(nested);
        assert!(!autocast_enabled(Device::Cpu));
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        assert_eq!(autocast_bf16(Device::Cpu, false, || a.matmul(&b).kind()), Kind::Float);
    }

    #[test]
    fn clear_grad_makes_it_undefined() {
        let w = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&w * 2.0).sum(Kind::Float).backward();
        assert!(w.grad().defined());
        clear_grad(&w);
        assert!(!w.grad().defined());
        (&w * 3.0).sum(Kind::Float).backward();
        assert_eq!(Vec::<f32>::try_from(w.grad()).unwrap(), vec![3.0; 3]);
    }

    #[test]
    fn fused_adam_rejects_mismatched_lists() {
        let p = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        let step = Tensor::from(1.0f32);
        let e = fused_adam(&[p.shallow_clone()], &[], &[], &[], &step, 1e-3, (0.9, 0.98), 0.0, 1e-8, false);
        assert!(e.unwrap_err().0.contains("1 parameters but 0 gradients"));
    }
}
