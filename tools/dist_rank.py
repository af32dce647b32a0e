#!/usr/bin/env python3
"""A torch.distributed rank for the c10d interop test (crates/preln-ops/tests/dist.rs).

Joins the default Gloo group described by torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT; env://), all-reduces (sum) the float32 vector `rank + 1 + arange(n) / 8` and
receives rank 0's broadcast of `arange(n) * 3`, then prints both results as one JSON line.
Usage: tools/dist_rank.py N
"""

import datetime
import json
import os
import sys

import torch
import torch.distributed as dist


def main():
    n = int(sys.argv[1])
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    t = rank + 1 + torch.arange(n, dtype=torch.float32) / 8
    dist.all_reduce(t)
    b = torch.arange(n, dtype=torch.float32) * 3 if rank == 0 else torch.zeros(n)
    dist.broadcast(b, 0)
    print(json.dumps({"all_reduce": t.tolist(), "broadcast": b.tolist()}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
