// NCCL process groups (c10d's ProcessGroupNCCL, from libtorch_cuda) for data-parallel training
// on GPUs: one rank per GPU, collectives on CUDA tensors. Built where the CUDA runtime's and
// NCCL's headers exist (the nvidia-* wheels beside torch; build.rs defines PRELN_HAVE_NCCL);
// elsewhere making an NCCL group fails with the reason.
#include "dist.h"

#ifdef PRELN_HAVE_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

extern "C" {

// Joins the NCCL group `rank` of `world` that meets at addr:port (as preln_dist_new); its
// communicators are made at the first collective, on the device of its tensors.
int preln_dist_new_nccl(void **out, const char *addr, int port, int rank, int world, int server, int64_t timeout_ms) {
  return guarded([&] {
    auto [store, own] = preln_rendezvous(addr, port, world, server, timeout_ms, "cuda");
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
    *out = new PrelnGroup(pg, own, rank);
    return 0;
  });
}

int preln_dist_nccl_available() { return 1; }

} // extern "C"

#else

extern "C" {
int preln_dist_new_nccl(void **, const char *, int, int, int, int, int64_t) {
  last_error = "this preln was built without NCCL: the CUDA runtime's or NCCL's headers were not found next to "
               "libtorch (the nvidia-* wheels torch installs); data-parallel training on GPUs needs them";
  return -1;
}
int preln_dist_nccl_available() { return 0; }
}

#endif
