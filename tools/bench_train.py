#!/usr/bin/env python3
"""PyTorch reference for `preln bench train --vs-pytorch`: the same Transformer, batch and
optimizer, timed in plain PyTorch eager.

Written independently of the Rust code (nn.Module layers, F.scaled_dot_product_attention,
torch.optim.Adam with its fastest CPU/CUDA implementation). Reads a JSON spec as the first
argument (or from standard input when that is "-"), prints one JSON line: per-step seconds, peak resident memory (MiB), versions.
"""

import json
import math
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, d, heads, dropout):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.heads, self.dropout = heads, dropout

    def forward(self, x, mem, mask):
        b, t, d = x.shape
        s = mem.shape[1]
        h = self.heads
        q = self.q(x).view(b, t, h, d // h).transpose(1, 2)
        k = self.k(mem).view(b, s, h, d // h).transpose(1, 2)
        v = self.v(mem).view(b, s, h, d // h).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """One residual sublayer wrapper; `pre` decides the LayerNorm's place."""

    def __init__(self, d, pre, dropout):
        super().__init__()
        self.norm, self.pre, self.dropout = nn.LayerNorm(d), pre, dropout

    def forward(self, x, f):
        if self.pre:
            return x + F.dropout(f(self.norm(x)), self.dropout, self.training)
        return self.norm(x + F.dropout(f(x), self.dropout, self.training))


class Layer(nn.Module):
    def __init__(self, c, cross):
        super().__init__()
        d, pre, p = c["d_model"], c["placement"] == "pre", c["dropout"]
        self.self_attn, self.b1 = Attention(d, c["heads"], c["attention_dropout"]), Block(d, pre, p)
        self.cross = Attention(d, c["heads"], c["attention_dropout"]) if cross else None
        self.b2 = Block(d, pre, p) if cross else None
        self.fc1, self.fc2, self.b3 = nn.Linear(d, c["ffn_dim"]), nn.Linear(c["ffn_dim"], d), Block(d, pre, p)
        self.act_dropout = c["activation_dropout"]

    def forward(self, x, self_mask, mem=None, mem_mask=None):
        x = self.b1(x, lambda h: self.self_attn(h, h, self_mask))
        if self.cross is not None:
            x = self.b2(x, lambda h: self.cross(h, mem, mem_mask))
        return self.b3(x, lambda h: self.fc2(F.dropout(F.relu(self.fc1(h)), self.act_dropout, self.training)))


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        d = c["d_model"]
        self.embed = nn.Embedding(c["vocab_size"], d, padding_idx=c["pad_id"])
        nn.init.normal_(self.embed.weight, 0, d ** -0.5)
        self.enc = nn.ModuleList(Layer(c, False) for _ in range(c["encoder_layers"]))
        self.dec = nn.ModuleList(Layer(c, True) for _ in range(c["decoder_layers"]))
        pre = c["placement"] == "pre"
        self.enc_norm = nn.LayerNorm(d) if pre else nn.Identity()
        self.dec_norm = nn.LayerNorm(d) if pre else nn.Identity()
        half = d // 2
        freqs = torch.exp(torch.arange(half) * -(math.log(10000.0) / (half - 1)))
        args = torch.arange(4096)[:, None] * freqs[None]
        self.register_buffer("pe", torch.cat([args.sin(), args.cos()], 1), persistent=False)

    def emb(self, tokens):
        x = self.embed(tokens) * math.sqrt(self.c["d_model"]) + self.pe[: tokens.shape[1]]
        return F.dropout(x, self.c["dropout"], self.training)

    def forward(self, src, prev):
        pad = self.c["pad_id"]
        src_mask = (src != pad)[:, None, None, :]
        t = prev.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=prev.device).tril()
        self_mask = causal[None, None] & (prev != pad)[:, None, None, :]
        x = self.emb(src)
        for l in self.enc:
            x = l(x, src_mask)
        mem = self.enc_norm(x)
        y = self.emb(prev)
        for l in self.dec:
            y = l(y, self_mask, mem, src_mask)
        return self.dec_norm(y) @ self.embed.weight.T


def loss_fn(logits, target, eps, pad):
    lp = torch.log_softmax(logits.float(), -1).view(-1, logits.shape[-1])
    target = target.reshape(-1)
    keep = target != pad
    nll = -lp.gather(1, target[:, None]).squeeze(1)
    smooth = -lp.sum(-1)
    eps_i = eps / (lp.shape[-1] - 1)
    loss = ((1 - eps - eps_i) * nll + eps_i * smooth)[keep].sum()
    return loss / keep.sum()


def main():
    # The spec on standard input ("-"; a large batch exceeds the limit of one argument) or as
    # the first argument.
    spec = json.loads(sys.stdin.read() if sys.argv[1] == "-" else sys.argv[1])
    torch.manual_seed(0)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    c = spec["model"]
    model = Model(c).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=spec["lr"], betas=(0.9, 0.98), eps=1e-8,
                           foreach=None if device.type == "cuda" else False)
    src = torch.tensor(spec["src"], device=device)
    prev = torch.tensor(spec["prev"], device=device)
    target = torch.tensor(spec["target"], device=device)
    autocast = spec.get("precision") == "bf16"
    times = []
    for step in range(spec["warmup"] + spec["steps"]):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(src, prev)
        loss = loss_fn(logits, target, spec["label_smoothing"], c["pad_id"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"step_s": times, "peak_mib": peak, "loss": loss.item(), "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
