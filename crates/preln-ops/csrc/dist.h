// What the c10d files of the shim share: a process group (Gloo or NCCL, as c10d's Backend) with
// its rendezvous store and the heartbeat thread that writes into it.
#pragma once
#include "guard.h"
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <atomic>
#include <chrono>
#include <thread>

struct PrelnGroup {
  c10::intrusive_ptr<c10d::Backend> pg;
  // The rendezvous store under "preln/": what ranks tell each other beside the collectives.
  c10::intrusive_ptr<c10d::Store> store;
  // Counts up "alive/RANK" in the store every second while the process runs: a rank whose
  // count stops is frozen or dead (TCPStore's client serializes its operations).
  std::atomic<bool> stop{false};
  std::thread heartbeat;

  PrelnGroup(c10::intrusive_ptr<c10d::Backend> pg, c10::intrusive_ptr<c10d::Store> store, int rank);
  ~PrelnGroup();
};

// The TCPStore of the rendezvous at addr:port (hosted here when server != 0), under the prefixes
// torch.distributed.init_process_group gives its default group ("default_pg", "0/", then the
// device, e.g. "cpu/"), and the same store under "preln/" for our own notes.
std::pair<c10::intrusive_ptr<c10d::Store>, c10::intrusive_ptr<c10d::Store>>
preln_rendezvous(const char *addr, int port, int world, int server, int64_t timeout_ms, const char *device);
