#!/usr/bin/env python3
"""Golden trajectories for the optimizers of crates/preln-train (torch.optim as the reference).

Two float64 parameters follow 10 updates of each optimizer. The gradient at step k is a fixed
function of the current parameters, g = 0.5 p + 0.1 cos(k + i) (i the flat index), and the
learning rate is 0.01 (1 + k mod 3), so the Rust test can replay the same sequence. Writes
crates/preln-train/tests/golden/optim.safetensors with `{case}.{step}.{param}` entries.

  $PRELN_TORCH_VENV/bin/python tools/make_optim_golden.py
"""

import os

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "preln-train", "tests", "golden")
STEPS = 10

CASES = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1.0, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1.0, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=1.0),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=1.0, momentum=0.9, weight_decay=0.001),
    "radam": lambda ps: torch.optim.RAdam(ps, lr=1.0, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01),
}


def initial():
    a = torch.linspace(-1.0, 1.0, 12, dtype=torch.float64).reshape(3, 4)
    b = torch.tensor([0.3, -0.2, 0.1, 0.5, -0.4], dtype=torch.float64)
    return {"a": a, "b": b}


def main():
    os.makedirs(OUT, exist_ok=True)
    out = {f"init.{k}": v for k, v in initial().items()}
    for name, make in CASES.items():
        params = {k: v.clone().requires_grad_(True) for k, v in initial().items()}
        opt = make(list(params.values()))
        for k in range(1, STEPS + 1):
            for p in params.values():
                idx = torch.arange(p.numel(), dtype=torch.float64).reshape(p.shape)
                p.grad = (0.5 * p.detach() + 0.1 * torch.cos(k + idx))
            for group in opt.param_groups:
                group["lr"] = 0.01 * (1 + k % 3)
            opt.step()
            for pname, p in params.items():
                out[f"{name}.{k}.{pname}"] = p.detach().clone()
    save_file(out, os.path.join(OUT, "optim.safetensors"))


if __name__ == "__main__":
    main()
