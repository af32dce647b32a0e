// A C shim over the few libtorch calls that tch 0.24 has no binding for. Every function
// catches C++ exceptions and reports them through preln_last_error().

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/_fused_adamw.h>

#include <string>
#include <vector>

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
}
