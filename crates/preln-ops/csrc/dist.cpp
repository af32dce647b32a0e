// torch.distributed's own engine (c10d) for data-parallel training: a TCPStore rendezvous, a
// Gloo process group with the store prefixes torch.distributed.init_process_group uses for its
// default group (so that Python ranks and ours form one group), and the collectives of either
// backend (csrc/nccl.cpp makes NCCL groups). Gloo is built where its headers exist (Debian's
// libgloo-dev; build.rs defines PRELN_HAVE_GLOO); elsewhere making a Gloo group fails with the
// reason.
#include "dist.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

typedef at::Tensor *tensor;

PrelnGroup::PrelnGroup(c10::intrusive_ptr<c10d::Backend> pg, c10::intrusive_ptr<c10d::Store> store, int rank)
    : pg(std::move(pg)), store(std::move(store)) {
  heartbeat = std::thread([this, rank] {
    for (int64_t beat = 1; !stop; ++beat) {
      try {
        this->store->set("alive/" + std::to_string(rank), std::to_string(beat));
      } catch (...) {
        return; // the store is gone: its host has stopped, and the collectives will say so
      }
      for (int i = 0; i < 10 && !stop; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
}

PrelnGroup::~PrelnGroup() {
  stop = true;
  heartbeat.join();
}

std::pair<c10::intrusive_ptr<c10d::Store>, c10::intrusive_ptr<c10d::Store>>
preln_rendezvous(const char *addr, int port, int world, int server, int64_t timeout_ms, const char *device) {
  c10d::TCPStoreOptions o;
  o.port = static_cast<std::uint16_t>(port);
  o.isServer = server != 0;
  o.numWorkers = world;
  o.timeout = std::chrono::milliseconds(timeout_ms);
  c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(addr, o);
  auto own = c10::make_intrusive<c10d::PrefixStore>("preln", store);
  // torch/distributed/distributed_c10d.py: PrefixStore("default_pg"), then the group name
  // ("0/"), then the device ("cpu/").
  store = c10::make_intrusive<c10d::PrefixStore>("default_pg", store);
  store = c10::make_intrusive<c10d::PrefixStore>("0/", store);
  store = c10::make_intrusive<c10d::PrefixStore>(std::string(device) + "/", store);
  return {store, own};
}

extern "C" {

// t <- the sum of t over all ranks, in place.
int preln_dist_allreduce_sum(void *group, tensor t) {
  return guarded([&] {
    std::vector<at::Tensor> v{*t};
    static_cast<PrelnGroup *>(group)->pg->allreduce(v)->wait();
    return 0;
  });
}

// t <- rank root's t, in place.
int preln_dist_broadcast(void *group, tensor t, int root) {
  return guarded([&] {
    std::vector<at::Tensor> v{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    static_cast<PrelnGroup *>(group)->pg->broadcast(v, o)->wait();
    return 0;
  });
}

// store[key] = value.
int preln_dist_store_set(void *group, const char *key, const char *value) {
  return guarded([&] {
    std::string v(value);
    static_cast<PrelnGroup *>(group)->store->set(key, std::vector<uint8_t>(v.begin(), v.end()));
    return 0;
  });
}

// store[key] into buf (NUL-terminated, at most len bytes); *found = 0 where the key is absent
// (without waiting for it).
int preln_dist_store_get(void *group, const char *key, char *buf, int len, int *found) {
  return guarded([&] {
    auto &store = static_cast<PrelnGroup *>(group)->store;
    *found = store->check({key}) ? 1 : 0;
    if (*found) {
      auto v = store->get(key);
      int n = std::min<int>(static_cast<int>(v.size()), len - 1);
      std::copy(v.begin(), v.begin() + n, buf);
      buf[n] = 0;
    }
    return 0;
  });
}

void preln_dist_free(void *group) { delete static_cast<PrelnGroup *>(group); }

} // extern "C"

#ifdef PRELN_HAVE_GLOO
#define USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

extern "C" {

// Joins the Gloo group `rank` of `world` that meets at addr:port. server = 1: this rank hosts
// the TCPStore (rank 0, unless a launcher such as torchrun hosts it); host: what this rank's
// Gloo device binds to: an address or host name, "if:NAME" for a network interface, "" for the
// address this machine's host name resolves to (torch.distributed's default). Every wait
// (rendezvous, collectives) gives up after timeout_ms.
int preln_dist_new(void **out, const char *addr, int port, int rank, int world, int server, int64_t timeout_ms,
                   const char *host) {
  return guarded([&] {
    auto [store, own] = preln_rendezvous(addr, port, world, server, timeout_ms, "cpu");
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    std::string h(host);
    if (h.empty())
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    else if (h.rfind("if:", 0) == 0)
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(h.substr(3)));
    else
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(h));
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    *out = new PrelnGroup(pg, own, rank);
    return 0;
  });
}

int preln_dist_available() { return 1; }

} // extern "C"

#else

extern "C" {
int preln_dist_new(void **, const char *, int, int, int, int, int64_t, const char *) {
  last_error = "this preln was built without torch.distributed's Gloo backend: Gloo's headers were not found "
               "(install Debian's libgloo-dev, or set GLOO_INCLUDE to a folder holding gloo/, then rebuild)";
  return -1;
}
int preln_dist_available() { return 0; }
}

#endif
