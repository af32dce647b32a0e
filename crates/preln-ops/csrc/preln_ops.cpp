// A C shim over the few libtorch calls that tch 0.24 has no binding for. Every function
// catches C++ exceptions and reports them through preln_last_error().

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/_fused_adamw.h>

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/profiler_legacy.h>

#include <string>
#include <vector>

// libtorch's oneDNN matrix product (aten/src/ATen/native/mkldnn/Matmul.cpp), exported by
// libtorch_cpu but not in the installed headers: result = beta * result + alpha * mat1 @ mat2,
// for fp32, bf16 and fp16 tensors with any strides.
namespace at::native {
TORCH_API void mkldnn_matmul(const Tensor &mat1, const Tensor &mat2, const Tensor &result, float beta, float alpha);
}

// tch hands tensors over as pointers to at::Tensor.
typedef at::Tensor *tensor;

static thread_local std::string last_error;

template <typename F> static int guarded(F f) {
  try {
    return f();
  } catch (const std::exception &e) {
    last_error = e.what();
    return -1;
  }
}

static at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }

static at::Tensor dnnl_mm(const at::Tensor &a, const at::Tensor &b) {
  auto r = at::empty({a.size(0), b.size(1)}, a.options());
  at::native::mkldnn_matmul(a, b, r, 0.0f, 1.0f);
  return r;
}

// y = x @ w^T + b with every matrix product (forward, input and weight gradients) by oneDNN.
// PyTorch sends fp32 products on the CPU to MKL, which is slower on some CPUs (AMD EPYC here).
struct DnnlLinear : public torch::autograd::Function<DnnlLinear> {
  // Without bias (an undefined tensor cannot be an autograd input).
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x, const at::Tensor &w) {
    return forward(ctx, x, w, at::Tensor());
  }

  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x, const at::Tensor &w,
                            const at::Tensor &b) {
    auto x2 = x.reshape({-1, x.size(-1)});
    at::Tensor y;
    if (b.defined()) {
      y = b.expand({x2.size(0), w.size(0)}).contiguous();
      at::native::mkldnn_matmul(x2, w.t(), y, 1.0f, 1.0f);
    } else {
      y = dnnl_mm(x2, w.t());
    }
    ctx->save_for_backward({x2, w});
    ctx->saved_data["has_bias"] = b.defined();
    auto shape = x.sizes().vec();
    shape.back() = w.size(0);
    return y.view(shape);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto &x2 = saved[0];
    auto &w = saved[1];
    auto g = grads[0].reshape({-1, w.size(0)});
    bool has_bias = ctx->saved_data["has_bias"].toBool();
    at::Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) {
      auto shape = grads[0].sizes().vec();
      shape.back() = w.size(1);
      gx = dnnl_mm(g, w).view(shape);
    }
    if (ctx->needs_input_grad(1)) {
      gw = dnnl_mm(g.t(), x2);
    }
    if (!has_bias) {
      return {gx, gw};
    }
    if (ctx->needs_input_grad(2)) {
      gb = g.sum(0);
    }
    return {gx, gw, gb};
  }
};

// Dropout whose mask is a hash of (seed, element index) instead of a stored tensor: one pass
// over the data forward, one backward (recomputing the mask), no Bernoulli sampling. An
// element is kept when the hash, a uniform 32-bit number, is at least p * 2^32.
static inline uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

static inline uint32_t element_hash(uint64_t seed, uint64_t i) {
  uint32_t lo = static_cast<uint32_t>(seed), hi = static_cast<uint32_t>(seed >> 32);
  return mix32(mix32(static_cast<uint32_t>(i) * 0x9E3779B1u + lo) ^ (static_cast<uint32_t>(i >> 32) + hi));
}

template <typename T>
static void masked_scale(const T *in, T *out, int64_t n, uint64_t seed, uint32_t threshold, float scale) {
  at::parallel_for(0, n, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
      float keep = element_hash(seed, static_cast<uint64_t>(i)) >= threshold ? scale : 0.0f;
      out[i] = static_cast<T>(static_cast<float>(in[i]) * keep);
    }
  });
}

static at::Tensor apply_mask(const at::Tensor &x, uint64_t seed, double p) {
  auto in = x.contiguous();
  auto out = at::empty_like(in);
  auto threshold = static_cast<uint32_t>(std::min(p * 4294967296.0, 4294967295.0));
  auto scale = static_cast<float>(1.0 / (1.0 - p));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, in.scalar_type(), "preln_dropout", [&] {
    masked_scale<scalar_t>(in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), in.numel(), seed,
                           threshold, scale);
  });
  return out;
}

struct HashDropout : public torch::autograd::Function<HashDropout> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x, double p) {
    uint64_t seed;
    {
      // From libtorch's default CPU generator, so torch.manual_seed decides the masks.
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      seed = at::check_generator<at::CPUGeneratorImpl>(gen)->random64();
    }
    ctx->saved_data["seed"] = static_cast<int64_t>(seed);
    ctx->saved_data["p"] = p;
    return apply_mask(x, seed, p);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto seed = static_cast<uint64_t>(ctx->saved_data["seed"].toInt());
    return {apply_mask(grads[0], seed, ctx->saved_data["p"].toDouble()), at::Tensor()};
  }
};

extern "C" {

const char *preln_last_error() { return last_error.c_str(); }

// Enters autocast to bfloat16 on the CPU (cuda = 0) or CUDA (cuda = 1), as `torch.autocast`
// does on entry. Returns 1 if autocast was already enabled there, 0 if not, -1 on error.
int preln_autocast_enter(int cuda) {
  return guarded([&] {
    auto dev = device_type(cuda);
    bool was = at::autocast::is_autocast_enabled(dev);
    at::autocast::set_autocast_dtype(dev, at::kBFloat16);
    at::autocast::set_autocast_enabled(dev, true);
    at::autocast::increment_nesting();
    return was ? 1 : 0;
  });
}

// Leaves it, restoring the previous state; clears the cast-weight cache when the outermost
// autocast region ends, as `torch.autocast` does on exit.
int preln_autocast_exit(int cuda, int was_enabled) {
  return guarded([&] {
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device_type(cuda), was_enabled != 0);
    return 0;
  });
}

int preln_autocast_is_enabled(int cuda) {
  return guarded([&] { return at::autocast::is_autocast_enabled(device_type(cuda)) ? 1 : 0; });
}

// One Adam (decoupled = 0) or AdamW (decoupled = 1) update of n parameters with libtorch's fused
// kernel. `step` is a 0-d float tensor holding the update number (already incremented).
int preln_fused_adam(tensor *params, tensor *grads, tensor *exp_avgs, tensor *exp_avg_sqs, tensor step, int n,
                     double lr, double beta1, double beta2, double weight_decay, double eps, int decoupled) {
  return guarded([&] {
    std::vector<at::Tensor> p, g, m, v, s;
    for (int i = 0; i < n; i++) {
      p.push_back(*params[i]);
      g.push_back(*grads[i]);
      m.push_back(*exp_avgs[i]);
      v.push_back(*exp_avg_sqs[i]);
      s.push_back(*step);
    }
    std::vector<at::Tensor> none;
    if (decoupled) {
      at::_fused_adamw_(p, g, m, v, none, s, lr, beta1, beta2, weight_decay, eps, false, false);
    } else {
      at::_fused_adam_(p, g, m, v, none, s, lr, beta1, beta2, weight_decay, eps, false, false);
    }
    return 0;
  });
}

// Drops a tensor's gradient (PyTorch's `zero_grad(set_to_none=True)`): the next backward
// writes a fresh gradient instead of adding into a zero-filled one.
int preln_clear_grad(tensor t) {
  return guarded([&] {
    t->mutable_grad().reset();
    return 0;
  });
}

// *out = x @ w^T + b (b may be null) through oneDNN, differentiable.
int preln_dnnl_linear(tensor *out, tensor x, tensor w, tensor b) {
  return guarded([&] {
    *out = new at::Tensor(b ? DnnlLinear::apply(*x, *w, *b) : DnnlLinear::apply(*x, *w));
    return 0;
  });
}

// Starts libtorch's operator profiler; the trace (Chrome trace format) is written to `path` by
// preln_profile_stop. Returns an opaque handle.
void *preln_profile_start(const char *path) {
  void *h = nullptr;
  guarded([&] {
    h = new torch::autograd::profiler::RecordProfile(std::string(path));
    return 0;
  });
  return h;
}

int preln_profile_stop(void *handle) {
  return guarded([&] {
    delete static_cast<torch::autograd::profiler::RecordProfile *>(handle);
    return 0;
  });
}

// *out = dropout(x, p) in training mode (elements zeroed with probability p, the rest scaled by
// 1 / (1 - p)) with hash masks; fp32, fp64 and bf16 on the CPU.
int preln_hash_dropout(tensor *out, tensor x, double p) {
  return guarded([&] {
    *out = new at::Tensor(HashDropout::apply(*x, p));
    return 0;
  });
}

int preln_grad_enabled() {
  return guarded([&] { return at::GradMode::is_enabled() ? 1 : 0; });
}
}
