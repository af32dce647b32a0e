//! The forward pass of a linear layer, through the probed fast path (oneDNN on fp32 CPUs,
//! libtorch's `linear` elsewhere; [`preln_ops::linear`]). Layers are created in [`crate::init`].

use tch::nn;
use tch::Tensor;

/// `x W^T + b`.
///
/// # Shapes
/// x: `[..., d_in]` -> `[..., d_out]`
pub fn apply(layer: &nn::Linear, x: &Tensor) -> Tensor {
    preln_ops::linear(x, &layer.ws, layer.bs.as_ref())
}
