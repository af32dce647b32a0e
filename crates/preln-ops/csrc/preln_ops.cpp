// A C shim over the few libtorch calls that tch 0.24 has no binding for. Every function
// catches C++ exceptions and reports them through preln_last_error() (guard.h).

#include "guard.h"
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/headeronly/version.h>
#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/_fused_adamw.h>

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/profiler_legacy.h>

#include <atomic>
#include <cmath>
#include <type_traits>
#include <cstring>
#include <string>
#include <vector>

// libtorch's oneDNN entries, exported by libtorch_cpu but not in the installed headers:
// - mkldnn_matmul (aten/src/ATen/native/mkldnn/Matmul.cpp): result = beta * result + alpha *
//   mat1 @ mat2 for fp32, bf16 and fp16 tensors with any strides; it refuses CPUs without
//   AVX-512 BW/VL/DQ (or avx_ne_convert) whatever the dtype;
// - mkldnn_linear_pointwise (aten/src/ATen/native/mkldnn/Linear.cpp): x @ w^T + b as oneDNN's
//   inner product on dense tensors, which runs on AVX2 CPUs too.
namespace at::native {
TORCH_API void mkldnn_matmul(const Tensor &mat1, const Tensor &mat2, const Tensor &result, float beta, float alpha);
TORCH_API Tensor mkldnn_linear_pointwise(const Tensor &input_t, const Tensor &weight_t,
                                         const std::optional<Tensor> &bias_opt, std::string_view attr,
                                         c10::List<std::optional<c10::Scalar>> scalars,
                                         std::optional<std::string_view> algorithm);
} // namespace at::native

// tch hands tensors over as pointers to at::Tensor.
typedef at::Tensor *tensor;

thread_local std::string last_error;

static at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }

// Which oneDNN entry the linear layer's products use.
enum class DnnlEntry : int64_t { Matmul = 0, InnerProduct = 1 };

// x @ w^T (+ b) for 2-d x through the chosen entry.
static at::Tensor dnnl_linear2d(const at::Tensor &x, const at::Tensor &w, const at::Tensor &b, DnnlEntry entry) {
  if (entry == DnnlEntry::InnerProduct) {
    std::optional<at::Tensor> bias = b.defined() ? std::optional<at::Tensor>(b) : std::nullopt;
    return at::native::mkldnn_linear_pointwise(x, w, bias, "none", c10::List<std::optional<c10::Scalar>>(), std::nullopt);
  }
  at::Tensor y;
  if (b.defined()) {
    y = b.expand({x.size(0), w.size(0)}).contiguous();
    at::native::mkldnn_matmul(x, w.t(), y, 1.0f, 1.0f);
  } else {
    y = at::empty({x.size(0), w.size(0)}, x.options());
    at::native::mkldnn_matmul(x, w.t(), y, 0.0f, 1.0f);
  }
  return y;
}

// y = x @ w^T + b with every matrix product (forward, input and weight gradients) by oneDNN.
// PyTorch sends fp32 products on the CPU to MKL, which is slower on some CPUs (AMD EPYC here).
struct DnnlLinear : public torch::autograd::Function<DnnlLinear> {
  // Without bias (an undefined tensor cannot be an autograd input).
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x, const at::Tensor &w,
                            int64_t entry) {
    return forward(ctx, x, w, at::Tensor(), entry);
  }

  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x, const at::Tensor &w,
                            const at::Tensor &b, int64_t entry) {
    auto x2 = x.reshape({-1, x.size(-1)});
    auto y = dnnl_linear2d(x2, w, b, static_cast<DnnlEntry>(entry));
    ctx->save_for_backward({x2, w});
    ctx->saved_data["has_bias"] = b.defined();
    ctx->saved_data["entry"] = entry;
    auto shape = x.sizes().vec();
    shape.back() = w.size(0);
    return y.view(shape);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto &x2 = saved[0];
    auto &w = saved[1];
    auto e = static_cast<DnnlEntry>(ctx->saved_data["entry"].toInt());
    auto g = grads[0].reshape({-1, w.size(0)});
    bool has_bias = ctx->saved_data["has_bias"].toBool();
    at::Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) {
      // g @ w = g @ (w^T)^T
      auto shape = grads[0].sizes().vec();
      shape.back() = w.size(1);
      gx = dnnl_linear2d(g, w.t(), at::Tensor(), e).view(shape);
    }
    if (ctx->needs_input_grad(1)) {
      // g^T @ x2 = g^T @ (x2^T)^T. The inner product would copy g^T first (it takes a dense
      // input), which makes it slower than libtorch's product here (examples/linear_speed).
      gw = e == DnnlEntry::InnerProduct ? at::mm(g.t(), x2) : dnnl_linear2d(g.t(), x2.t(), at::Tensor(), e);
    }
    if (!has_bias) {
      return {gx, gw, at::Tensor()};
    }
    if (ctx->needs_input_grad(2)) {
      gb = g.sum(0);
    }
    return {gx, gw, gb, at::Tensor()};
  }
};

// Element-wise and row kernels, written once for GCC's generic vectors (8 fp32 lanes) and
// compiled twice: for AVX2 + FMA (chosen at run time) and for the baseline target. Scalar heads
// and tails give the same bits as the vector lanes.
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));
typedef uint16_t v8h __attribute__((vector_size(16)));

#define ALWAYS_INLINE inline __attribute__((always_inline))

// fp32 to bf16 as c10::BFloat16 rounds: to nearest even, NaN to 0x7FC0.
static ALWAYS_INLINE v8h to_bf16(v8f x) {
  v8u bits;
  std::memcpy(&bits, &x, sizeof bits);
  v8u rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  v8u nan = (v8u)(x != x);
  rounded = (rounded & ~nan) | (nan & 0x7FC0u);
  return __builtin_convertvector(rounded, v8h);
}

// 8 lanes of fp32 from fp32 or bf16 memory (bf16 is the top half of fp32), and back.
static ALWAYS_INLINE v8f load8(const float *p) {
  v8f x;
  std::memcpy(&x, p, sizeof x);
  return x;
}
static ALWAYS_INLINE v8f load8(const c10::BFloat16 *p) {
  v8h raw;
  std::memcpy(&raw, p, sizeof raw);
  v8u bits = __builtin_convertvector(raw, v8u) << 16;
  v8f x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}
static ALWAYS_INLINE void store8(float *p, v8f x) { std::memcpy(p, &x, sizeof x); }
static ALWAYS_INLINE void store8(c10::BFloat16 *p, v8f x) {
  v8h y = to_bf16(x);
  std::memcpy(p, &y, sizeof y);
}

// Dropout whose mask is a hash of (seed, element index) instead of a stored tensor: one pass
// over the data forward, one backward (recomputing the mask), no Bernoulli sampling. An
// element is kept when the hash, a uniform 32-bit number, is at least p * 2^32.
template <typename U> static ALWAYS_INLINE U mix32(U h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

struct DropMask {
  uint64_t seed;
  uint32_t threshold;
  float scale;

  DropMask(uint64_t seed, double p)
      : seed(seed), threshold(static_cast<uint32_t>(std::min(p * 4294967296.0, 4294967295.0))),
        scale(static_cast<float>(1.0 / (1.0 - p))) {}

  // lanes: the low 32 bits of the element indices; high: their high 32 bits (shared by a
  // block of 8 that starts at a multiple of 8).
  template <typename U> ALWAYS_INLINE U hash(U lanes, uint32_t high) const {
    uint32_t lo = static_cast<uint32_t>(seed), hi = static_cast<uint32_t>(seed >> 32);
    return mix32(mix32(lanes * 0x9E3779B1u + lo) ^ (high + hi));
  }

  // Element i's factor: scale if kept, else 0.
  ALWAYS_INLINE float factor(int64_t i) const {
    auto u = static_cast<uint64_t>(i);
    return hash(static_cast<uint32_t>(u), static_cast<uint32_t>(u >> 32)) >= threshold ? scale : 0.0f;
  }

  // The factors of elements i..i+7, i a multiple of 8.
  ALWAYS_INLINE v8f factors(int64_t i) const {
    auto u = static_cast<uint64_t>(i);
    v8u lanes = v8u{0, 1, 2, 3, 4, 5, 6, 7} + static_cast<uint32_t>(u);
    v8u keep = (v8u)(hash(lanes, static_cast<uint32_t>(u >> 32)) >= threshold);
    uint32_t scale_bits;
    std::memcpy(&scale_bits, &scale, sizeof scale_bits);
    v8u bits = keep & scale_bits;
    v8f f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
};

// exp(x) for x <= 0 (arguments below -87 give about 0) in plain arithmetic: x = (n + f) ln 2
// with integer n and |f| <= 1/2, 2^f by its Taylor series to the 7th power (relative error
// below 1e-7, that of float itself), 2^n through the exponent bits. For 8 lanes or one.
template <typename F, typename I> static ALWAYS_INLINE F exp_nonpositive(F x) {
  x = x < -87.0f ? F{} - 87.0f : x;
  F t = x * 1.4426950408889634f;
  F n = (t + 12582912.0f) - 12582912.0f; // round to nearest
  F f = t - n;
  F p = F{} + 1.525273380405984e-05f;
  p = p * f + 1.5403530393381606e-04f;
  p = p * f + 1.3333558146428443e-03f;
  p = p * f + 9.618129107628477e-03f;
  p = p * f + 5.550410866482158e-02f;
  p = p * f + 2.402265069591007e-01f;
  p = p * f + 6.931471805599453e-01f;
  p = p * f + 1.0f;
  I bits;
  if constexpr (std::is_same_v<F, float>) {
    bits = (static_cast<I>(n) + 127) << 23;
  } else {
    bits = (__builtin_convertvector(n, I) + 127) << 23;
  }
  F scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Row statistics of the cross-entropy: the maximum, sum of exp(x - max), and sum of x.
struct RowStats {
  float max, sumexp, sum;
};

static ALWAYS_INLINE float hmax(v8f v) {
  float m = v[0];
  for (int i = 1; i < 8; i++) m = v[i] > m ? v[i] : m;
  return m;
}

static ALWAYS_INLINE float hsum(v8f v) {
  float s = 0.0f;
  for (int i = 0; i < 8; i++) s += v[i];
  return s;
}

// The kernels, over elements [begin, end) or one row; fp32 or bf16 in memory, fp32 arithmetic.
#define KERNELS(NAME)                                                                                               \
  struct NAME {                                                                                                     \
    /* out = in * mask factor (dropout forward, backward, and an fp32 gradient into bf16) */                      \
    template <typename In, typename Out>                                                                            \
    static void dropout(const In *in, Out *out, int64_t begin, int64_t end, const DropMask &m) {                    \
      int64_t i = begin;                                                                                            \
      for (; i < end && (i & 7); i++) out[i] = static_cast<Out>(static_cast<float>(in[i]) * m.factor(i));           \
      for (; i + 8 <= end; i += 8) store8(out + i, load8(in + i) * m.factors(i));                                   \
      for (; i < end; i++) out[i] = static_cast<Out>(static_cast<float>(in[i]) * m.factor(i));                      \
    }                                                                                                               \
    /* out = x + y * mask factor, x and out fp32 */                                                                \
    template <typename Y>                                                                                           \
    static void residual_dropout(const float *x, const Y *y, float *out, int64_t begin, int64_t end,                \
                                 const DropMask &m) {                                                               \
      int64_t i = begin;                                                                                            \
      for (; i < end && (i & 7); i++) out[i] = x[i] + static_cast<float>(y[i]) * m.factor(i);                       \
      for (; i + 8 <= end; i += 8) store8(out + i, load8(x + i) + load8(y + i) * m.factors(i));                     \
      for (; i < end; i++) out[i] = x[i] + static_cast<float>(y[i]) * m.factor(i);                                  \
    }                                                                                                               \
    template <typename T> static RowStats row_stats(const T *x, int64_t v) {                                        \
      int64_t j = 0;                                                                                                \
      v8f m8 = v8f{} - INFINITY;                                                                                    \
      for (; j + 8 <= v; j += 8) {                                                                                  \
        v8f e = load8(x + j);                                                                                       \
        m8 = e > m8 ? e : m8;                                                                                       \
      }                                                                                                             \
      float m = hmax(m8);                                                                                           \
      for (; j < v; j++) m = static_cast<float>(x[j]) > m ? static_cast<float>(x[j]) : m;                           \
      v8f s8 = v8f{}, x8 = v8f{};                                                                                   \
      for (j = 0; j + 8 <= v; j += 8) {                                                                             \
        v8f e = load8(x + j);                                                                                       \
        s8 += exp_nonpositive<v8f, v8i>(e - m);                                                                     \
        x8 += e;                                                                                                    \
      }                                                                                                             \
      float s = hsum(s8), sx = hsum(x8);                                                                            \
      for (; j < v; j++) {                                                                                          \
        float e = static_cast<float>(x[j]);                                                                         \
        s += exp_nonpositive<float, int32_t>(e - m);                                                                \
        sx += e;                                                                                                    \
      }                                                                                                             \
      return {m, s, sx};                                                                                            \
    }                                                                                                               \
    /* g_j = av * exp(x_j - lse) - b */                                                                             \
    template <typename T> static void row_grad(const T *x, int64_t v, float lse, float av, float b, T *g) {        \
      int64_t j = 0;                                                                                                \
      for (; j + 8 <= v; j += 8) store8(g + j, av * exp_nonpositive<v8f, v8i>(load8(x + j) - lse) - b);             \
      for (; j < v; j++)                                                                                            \
        g[j] = static_cast<T>(av * exp_nonpositive<float, int32_t>(static_cast<float>(x[j]) - lse) - b);            \
    }                                                                                                               \
  };

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
KERNELS(Avx2Kernels)
#pragma GCC pop_options
static const bool have_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
static const bool have_avx2 = false;
#endif
KERNELS(PortableKernels)

// Whether with_kernels takes the AVX2 build: only where the CPU has AVX2 and FMA, and only while
// the caller (preln_set_vector_kernels, after its probe) allows it.
static std::atomic<bool> use_avx2{have_avx2};
// How many kernel calls each build has run (for the test that an unsupported path is never taken).
static std::atomic<int64_t> avx2_calls{0}, portable_calls{0};

// f(kernels): the AVX2 build of the kernels where the CPU has it and it is allowed, else the
// portable one.
template <typename F> static void with_kernels(F &&f) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (use_avx2.load(std::memory_order_relaxed)) {
    avx2_calls.fetch_add(1, std::memory_order_relaxed);
    f(Avx2Kernels{});
    return;
  }
#endif
  portable_calls.fetch_add(1, std::memory_order_relaxed);
  f(PortableKernels{});
}

// Runs both builds of the kernels on the same data and compares the results bit for bit:
// 1 = the AVX2 build exists on this CPU and agrees, 0 = it does not exist here, throws if they
// disagree.
static int probe_vector_kernels() {
#if defined(__x86_64__) && defined(__GNUC__)
  if (!have_avx2) return 0;
  const int64_t n = 1003;
  std::vector<float> x(n), a(n), b(n);
  for (int64_t i = 0; i < n; i++) x[i] = std::sin(0.37f * static_cast<float>(i)) * 3.0f;
  DropMask m(0x9E3779B97F4A7C15ull, 0.3);
  Avx2Kernels::dropout(x.data(), a.data(), 0, n, m);
  PortableKernels::dropout(x.data(), b.data(), 0, n, m);
  TORCH_CHECK(std::memcmp(a.data(), b.data(), n * sizeof(float)) == 0, "AVX2 dropout kernel differs from the portable one");
  RowStats s1 = Avx2Kernels::row_stats(x.data(), n), s2 = PortableKernels::row_stats(x.data(), n);
  TORCH_CHECK(std::fabs(s1.sumexp - s2.sumexp) <= 1e-5f * s2.sumexp && s1.max == s2.max,
              "AVX2 loss kernel differs from the portable one");
  return 1;
#else
  return 0;
#endif
}

// out = in * mask factor over n elements, on libtorch's threads (fp64 one lane at a time, in
// fp32 arithmetic as the other dtypes).
template <typename In, typename Out> static void masked_scale(const In *in, Out *out, int64_t n, const DropMask &m) {
  at::parallel_for(0, n, 1 << 14, [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<In, double>) {
      for (int64_t i = begin; i < end; i++) out[i] = static_cast<Out>(static_cast<float>(in[i]) * m.factor(i));
    } else {
      with_kernels([&](auto k) { k.dropout(in, out, begin, end, m); });
    }
  });
}

// A mask seed from libtorch's default CPU generator, so torch.manual_seed decides the masks.
static uint64_t dropout_seed() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return at::check_generator<at::CPUGeneratorImpl>(gen)->random64();
}

static at::Tensor apply_mask(const at::Tensor &x, const DropMask &m) {
  auto in = x.contiguous();
  auto out = at::empty_like(in);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, in.scalar_type(), "preln_dropout", [&] {
    masked_scale(in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), in.numel(), m);
  });
  return out;
}

// The mask a forward pass drew, for its backward pass.
static void save_mask(torch::autograd::AutogradContext *ctx, uint64_t seed, double p) {
  ctx->saved_data["seed"] = static_cast<int64_t>(seed);
  ctx->saved_data["p"] = p;
}

static DropMask saved_mask(torch::autograd::AutogradContext *ctx) {
  return DropMask(static_cast<uint64_t>(ctx->saved_data["seed"].toInt()), ctx->saved_data["p"].toDouble());
}

struct HashDropout : public torch::autograd::Function<HashDropout> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x, double p) {
    uint64_t seed = dropout_seed();
    save_mask(ctx, seed, p);
    return apply_mask(x, DropMask(seed, p));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    return {apply_mask(grads[0], saved_mask(ctx)), at::Tensor()};
  }
};

// x + dropout(y) in one pass, x fp32 and y fp32 or bf16 of the same shape (the residual add of
// a bf16 branch into the fp32 residual stream under autocast), with the mask of HashDropout.
// Backward: x's gradient is the output's; y's is the output's through the mask, in y's dtype.
struct ResidualDropout : public torch::autograd::Function<ResidualDropout> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x, const at::Tensor &y,
                            double p) {
    TORCH_CHECK(x.scalar_type() == at::kFloat && x.sizes() == y.sizes() && x.device().is_cpu() &&
                    y.device().is_cpu() && (y.scalar_type() == at::kFloat || y.scalar_type() == at::kBFloat16),
                "residual_dropout: x fp32 and y fp32/bf16 of the same shape on the CPU");
    uint64_t seed = dropout_seed();
    save_mask(ctx, seed, p);
    ctx->saved_data["y_bf16"] = y.scalar_type() == at::kBFloat16;
    DropMask m(seed, p);
    auto xc = x.contiguous(), yc = y.contiguous();
    auto out = at::empty_like(xc);
    const float *xp = xc.const_data_ptr<float>();
    float *op = out.mutable_data_ptr<float>();
    at::parallel_for(0, xc.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
      with_kernels([&](auto k) {
        if (yc.scalar_type() == at::kFloat) {
          k.residual_dropout(xp, yc.const_data_ptr<float>(), op, begin, end, m);
        } else {
          k.residual_dropout(xp, yc.const_data_ptr<c10::BFloat16>(), op, begin, end, m);
        }
      });
    });
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    DropMask m = saved_mask(ctx);
    auto g = grads[0].contiguous().to(at::kFloat);
    at::Tensor gy;
    if (!ctx->saved_data["y_bf16"].toBool()) {
      gy = apply_mask(g, m);
    } else {
      gy = at::empty(g.sizes(), g.options().dtype(at::kBFloat16));
      masked_scale(g.const_data_ptr<float>(), gy.mutable_data_ptr<c10::BFloat16>(), g.numel(), m);
    }
    return {g, gy, at::Tensor()};
  }
};

// Label-smoothed cross-entropy (fairseq's definition, see preln-model's loss.rs) straight from
// logits [N, V] (fp32 or bf16; statistics in fp32 and fp64): one pass for the row
// maximum, one for the sums, and one backward pass that writes the gradient, instead of
// log_softmax, gather, sum and their backward passes over [N, V] tensors.
template <typename T>
static void ce_rows(const T *x, const int64_t *target, int64_t n, int64_t v, int64_t ignore, float *lse,
                    double *nll_out, double *smooth_out) {
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    with_kernels([&](auto k) {
      for (int64_t r = begin; r < end; r++) {
        const T *row = x + r * v;
        RowStats st = k.row_stats(row, v);
        float l = st.max + std::log(st.sumexp);
        lse[r] = l;
        int64_t t = target[r];
        if (t == ignore) {
          nll_out[r] = 0.0;
          smooth_out[r] = 0.0;
        } else {
          TORCH_CHECK(t >= 0 && t < v, "label_smoothed_nll: target ", t, " outside [0, ", v, ")");
          nll_out[r] = static_cast<double>(l) - static_cast<double>(static_cast<float>(row[t]));
          smooth_out[r] = static_cast<double>(v) * l - static_cast<double>(st.sum);
        }
      }
    });
  });
}

template <typename T>
static void ce_grad_rows(const T *x, const int64_t *target, const float *lse, int64_t n, int64_t v, int64_t ignore,
                         float a, float b, T *grad) {
  // d/dx_j of (a * nll + b * smooth) = a (p_j - [j = t]) + b (V p_j - 1)
  float av = a + b * static_cast<float>(v);
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    with_kernels([&](auto k) {
      for (int64_t r = begin; r < end; r++) {
        T *g = grad + r * v;
        int64_t t = target[r];
        if (t == ignore) {
          for (int64_t j = 0; j < v; j++) g[j] = static_cast<T>(0.0f);
          continue;
        }
        const T *row = x + r * v;
        k.row_grad(row, v, lse[r], av, b, g);
        // The target's entry again, with its -a, rounded once.
        float p = exp_nonpositive<float, int32_t>(static_cast<float>(row[t]) - lse[r]);
        g[t] = static_cast<T>(av * p - b - a);
      }
    });
  });
}

struct SmoothedCe : public torch::autograd::Function<SmoothedCe> {
  // Returns [loss_sum, nll_sum] (fp32) over rows whose target is not `ignore`.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext *ctx, const at::Tensor &logits,
                                                const at::Tensor &target, double epsilon, int64_t ignore) {
    TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16,
                "label_smoothed_nll: fused kernel takes fp32 or bf16 logits, not ", logits.scalar_type());
    TORCH_CHECK(logits.device().is_cpu(), "label_smoothed_nll: fused kernel runs on the CPU");
    int64_t v = logits.size(-1);
    auto x = logits.reshape({-1, v}).contiguous();
    auto t = target.reshape({-1}).to(at::kLong).contiguous();
    TORCH_CHECK(x.size(0) == t.size(0), "label_smoothed_nll: ", x.size(0), " rows of logits but ", t.size(0),
                " targets");
    int64_t n = x.size(0);
    auto lse = at::empty({n}, x.options().dtype(at::kFloat));
    auto nll = at::empty({n}, x.options().dtype(at::kDouble));
    auto smooth = at::empty({n}, x.options().dtype(at::kDouble));
    auto rows = [&](auto *data) {
      ce_rows(data, t.const_data_ptr<int64_t>(), n, v, ignore, lse.mutable_data_ptr<float>(),
              nll.mutable_data_ptr<double>(), smooth.mutable_data_ptr<double>());
    };
    if (x.scalar_type() == at::kFloat) {
      rows(x.const_data_ptr<float>());
    } else {
      rows(x.const_data_ptr<c10::BFloat16>());
    }
    double eps_i = v > 1 ? epsilon / static_cast<double>(v - 1) : 0.0;
    double a = 1.0 - epsilon - eps_i;
    auto nll_sum = nll.sum();
    auto loss_sum = nll_sum * a + smooth.sum() * eps_i;
    ctx->save_for_backward({x, t, lse});
    ctx->saved_data["a"] = a;
    ctx->saved_data["b"] = eps_i;
    ctx->saved_data["ignore"] = ignore;
    ctx->saved_data["shape"] = logits.sizes().vec();
    return {loss_sum.to(at::kFloat), nll_sum.to(at::kFloat)};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto &x = saved[0];
    auto &t = saved[1];
    auto &lse = saved[2];
    double g_loss = grads[0].defined() ? grads[0].item<double>() : 0.0;
    double g_nll = grads[1].defined() ? grads[1].item<double>() : 0.0;
    double a = ctx->saved_data["a"].toDouble(), b = ctx->saved_data["b"].toDouble();
    // loss = a nll + b smooth, so the total is (g_loss a + g_nll) nll + g_loss b smooth.
    auto ga = static_cast<float>(g_loss * a + g_nll), gb = static_cast<float>(g_loss * b);
    auto grad = at::empty_like(x);
    auto rows = [&](auto *data, auto *out) {
      ce_grad_rows(data, t.const_data_ptr<int64_t>(), lse.const_data_ptr<float>(), x.size(0), x.size(1),
                   ctx->saved_data["ignore"].toInt(), ga, gb, out);
    };
    if (x.scalar_type() == at::kFloat) {
      rows(x.const_data_ptr<float>(), grad.mutable_data_ptr<float>());
    } else {
      rows(x.const_data_ptr<c10::BFloat16>(), grad.mutable_data_ptr<c10::BFloat16>());
    }
    auto shape = ctx->saved_data["shape"].toIntVector();
    return {grad.view(shape), at::Tensor(), at::Tensor(), at::Tensor()};
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

// t.grad = g (a tensor of t's shape, kind and device; it becomes the gradient itself).
int preln_set_grad(tensor t, tensor g) {
  return guarded([&] {
    t->mutable_grad() = *g;
    return 0;
  });
}

// *out = x @ w^T + b (b may be null) through oneDNN, differentiable; entry 0 = matmul,
// 1 = inner product (DnnlEntry).
int preln_dnnl_linear(tensor *out, tensor x, tensor w, tensor b, int entry) {
  return guarded([&] {
    int64_t e = entry;
    *out = new at::Tensor(b ? DnnlLinear::apply(*x, *w, *b, e) : DnnlLinear::apply(*x, *w, e));
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

// *out = x + dropout(y, p) in training mode (see ResidualDropout).
int preln_residual_dropout(tensor *out, tensor x, tensor y, double p) {
  return guarded([&] {
    *out = new at::Tensor(ResidualDropout::apply(*x, *y, p));
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

// Label-smoothed cross-entropy sums (see SmoothedCe); writes the loss and NLL sums.
int preln_smoothed_ce(tensor *loss, tensor *nll, tensor logits, tensor target, double epsilon, int64_t ignore) {
  return guarded([&] {
    auto out = SmoothedCe::apply(*logits, *target, epsilon, ignore);
    *loss = new at::Tensor(out[0]);
    *nll = new at::Tensor(out[1]);
    return 0;
  });
}

// 1 if the AVX2 kernels exist on this CPU and agree with the portable ones, 0 if the CPU lacks
// AVX2 or FMA, -1 (with the reason) if they disagree.
int preln_probe_vector_kernels() {
  return guarded([&] { return probe_vector_kernels(); });
}

// Lets with_kernels take the AVX2 build (on = 1, and only where the CPU has it) or not.
int preln_set_vector_kernels(int on) {
  use_avx2.store(on != 0 && have_avx2);
  return use_avx2.load() ? 1 : 0;
}

// How many kernel calls ran the AVX2 and the portable builds so far.
void preln_kernel_calls(int64_t *avx2, int64_t *portable) {
  *avx2 = avx2_calls.load();
  *portable = portable_calls.load();
}

// libtorch's own answer to "does oneDNN have fast bf16 on this CPU" (the op behind
// torch.ops.mkldnn._is_mkldnn_bf16_supported): 1 or 0, -1 if this libtorch lacks the op.
int preln_mkldnn_bf16_supported() {
  return guarded([&] {
    auto op = c10::Dispatcher::singleton().findSchema({"mkldnn::_is_mkldnn_bf16_supported", ""});
    TORCH_CHECK(op.has_value(), "this libtorch has no mkldnn::_is_mkldnn_bf16_supported");
    return op->typed<bool()>().call() ? 1 : 0;
  });
}

// The libtorch version and the CPU capability ATen's kernels were dispatched to
// ("DEFAULT", "AVX2", "AVX512", ...), as "2.11.0 AVX512"; whether it has MKL and oneDNN.
int preln_libtorch_build(char *buf, int len) {
  return guarded([&] {
    std::string s = std::string(TORCH_VERSION) + " " + at::get_cpu_capability() + (at::hasMKL() ? " mkl" : "") +
                    (at::hasMKLDNN() ? " mkldnn" : "");
    std::snprintf(buf, static_cast<size_t>(len), "%s", s.c_str());
    return 0;
  });
}

// The name of the autograd node that made `t` ("" for a leaf): which op a path recorded.
int preln_grad_fn_name(tensor t, char *buf, int len) {
  return guarded([&] {
    auto fn = t->grad_fn();
    std::snprintf(buf, static_cast<size_t>(len), "%s", fn ? fn->name().c_str() : "");
    return 0;
  });
}

// Allows (1) or forbids (0) libtorch's cuDNN kernel for scaled_dot_product_attention on CUDA;
// returns whether it was allowed before.
int preln_set_sdp_cudnn(int on) {
  return guarded([&] {
    bool was = at::globalContext().userEnabledCuDNNSDP();
    at::globalContext().setSDPUseCuDNN(on != 0);
    return was ? 1 : 0;
  });
}
}
