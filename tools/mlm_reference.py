#!/usr/bin/env python3
"""An independent PyTorch BERT pre-training run on a folder made by `preln prepare-mlm`.

It tells the trainer from the recipe: the same model shape, masking rule, optimizer and
schedule as a `preln pretrain` config, written with torch.nn (nn.MultiheadAttention,
nn.LayerNorm, torch.optim.Adam, torch.autocast for bf16), with its own batching and masks.
Its held-out curve should follow preln's within the noise of different masks and batches.

    python tools/mlm_reference.py --data DIR --config RUN/config.toml --updates 1000 \
        --out ref.jsonl [--threads 1] [--corpus-order]

One JSON line per validation: {"step", "loss", "accuracy", "seconds"}.
"""
import argparse
import json
import math
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PAD, BOS, EOS, MASK, FIRST_REGULAR = 0, 2, 3, 4, 5


def read_ids(path):
    """Reads a PRELNIDS file: magic, u32 version, u64 n, u64 offsets[n + 1], u32 ids."""
    b = Path(path).read_bytes()
    if b[:8] != b"PRELNIDS":
        sys.exit(f"{path}: not a preln id file")
    n = int.from_bytes(b[12:20], "little")
    off = np.frombuffer(b, dtype="<u8", count=n + 1, offset=20)
    ids = np.frombuffer(b, dtype="<u4", offset=20 + 8 * (n + 1))
    return [ids[off[i]:off[i + 1]].astype(np.int64) for i in range(n)]


class Layer(nn.Module):
    def __init__(self, d, heads, ffn, dropout, attn_dropout, pre, eps):
        super().__init__()
        self.pre = pre
        self.attn = nn.MultiheadAttention(d, heads, dropout=attn_dropout, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, pad_mask):
        def attn(h):
            return self.attn(h, h, h, key_padding_mask=pad_mask, need_weights=False)[0]

        def ffn(h):
            return self.fc2(F.gelu(self.fc1(h)))

        if self.pre:
            x = x + self.drop(attn(self.norm1(x)))
            return x + self.drop(ffn(self.norm2(x)))
        x = self.norm1(x + self.drop(attn(x)))
        return self.norm2(x + self.drop(ffn(x)))


class Bert(nn.Module):
    def __init__(self, m, vocab):
        super().__init__()
        d, eps = m["d_model"], m.get("layer_norm_eps", 1e-12)
        pre = m["placement"] == "pre"
        self.tokens = nn.Embedding(vocab, d, padding_idx=PAD)
        self.positions = nn.Embedding(m["max_positions"], d)
        self.embed_norm = nn.LayerNorm(d, eps=eps)
        self.drop = nn.Dropout(m["dropout"])
        self.layers = nn.ModuleList(
            Layer(d, m["heads"], m["ffn_dim"], m["dropout"], m["attention_dropout"], pre, eps)
            for _ in range(m["layers"])
        )
        self.final_norm = nn.LayerNorm(d, eps=eps) if pre else nn.Identity()
        self.head_dense, self.head_norm = nn.Linear(d, d), nn.LayerNorm(d, eps=eps)
        self.head_bias = nn.Parameter(torch.zeros(vocab))
        std = m.get("init_std", 0.02)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=std)
            elif "norm" not in name:
                nn.init.zeros_(p)
        with torch.no_grad():
            self.tokens.weight[PAD].zero_()

    def forward(self, tokens, targets):
        t = tokens.shape[1]
        x = self.drop(self.embed_norm(self.tokens(tokens) + self.positions.weight[:t]))
        pad = tokens.eq(PAD)
        for layer in self.layers:
            x = layer(x, pad)
        h = self.final_norm(x)[targets.ne(PAD)]
        h = self.head_norm(F.gelu(self.head_dense(h)))
        return F.linear(h, self.tokens.weight, self.head_bias)


def mask(seg, vocab, rng, prob):
    """BERT's rule: a share `prob` of the tokens (BERT: 15%); of those 80% <mask>, 10% a random
    token, 10% kept."""
    inp, tgt = seg.copy(), np.full_like(seg, PAD)
    chosen = np.flatnonzero(rng.random(len(seg)) < prob)
    if len(chosen) == 0:
        chosen = rng.integers(0, len(seg), 1)
    tgt[chosen] = seg[chosen]
    u = rng.random(len(chosen))
    inp[chosen[u < 0.8]] = MASK
    rand = chosen[(u >= 0.8) & (u < 0.9)]
    inp[rand] = rng.integers(FIRST_REGULAR, vocab, len(rand))
    return inp, tgt


def batch(segs, vocab, rng, prob):
    t = max(len(s) for s in segs) + 2
    tok = np.full((len(segs), t), PAD, dtype=np.int64)
    tgt = np.full((len(segs), t), PAD, dtype=np.int64)
    for i, s in enumerate(segs):
        inp, target = mask(s, vocab, rng, prob)
        tok[i, : len(s) + 2] = np.concatenate([[BOS], inp, [EOS]])
        tgt[i, 1 : len(s) + 1] = target
    return torch.from_numpy(tok), torch.from_numpy(tgt)


def batches(segs, max_tokens, rng, corpus_order):
    """Sorted by length and cut within the padded-token budget; equal lengths in random order
    (fairseq) unless corpus_order."""
    lens = np.array([len(s) + 2 for s in segs])
    ties = np.arange(len(segs)) if corpus_order else rng.permutation(len(segs))
    order = np.lexsort((ties, lens))
    out, cur, longest = [], [], 0
    for i in order:
        if cur and (len(cur) + 1) * max(longest, lens[i]) > max_tokens:
            out.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, lens[i])
    return out + ([cur] if cur else [])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--config", required=True, help="a preln pretrain config.toml")
    ap.add_argument("--updates", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--valid-every", type=int, default=250)
    ap.add_argument("--corpus-order", action="store_true", help="equal-length segments in corpus order")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg = tomllib.loads(Path(a.config).read_text())
    m, o, s, tr = cfg["model"], cfg["optimizer"], cfg["schedule"], cfg["train"]
    prob = cfg.get("mlm", {}).get("mask_prob", 0.15)
    if o["kind"] != "adam" or s["kind"] != "linear_decay":
        sys.exit("only adam with linear_decay is written here")
    manifest = json.loads((Path(a.data) / "mlm-manifest.json").read_text())
    vocab = manifest["vocab_size"]
    train, valid = read_ids(Path(a.data) / "train.bin"), read_ids(Path(a.data) / "valid.bin")
    rng = np.random.default_rng(a.seed)
    model = Bert(m, vocab)
    opt = torch.optim.Adam(model.parameters(), lr=tr["lr"], betas=tuple(o["betas"]), eps=o["eps"])
    warm, total = s["warmup"], s["total_steps"]

    def lr_at(step):  # step counts from 1
        if warm and step <= warm:
            return tr["lr"] * step / warm
        return tr["lr"] * max(0.0, (total - step) / max(1, total - warm))

    bf16 = tr.get("precision") == "bf16"
    vrng = np.random.default_rng(12345)
    vbatches = [batch([valid[i] for i in b], vocab, vrng, 0.15) for b in batches(valid, tr["max_tokens"], vrng, True)]

    def evaluate():
        model.eval()
        nll, hit, n = 0.0, 0, 0
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for tok, tgt in vbatches:
                logits = model(tok, tgt).float()
                y = tgt[tgt.ne(PAD)]
                nll += F.cross_entropy(logits, y, reduction="sum").item()
                hit += logits.argmax(-1).eq(y).sum().item()
                n += len(y)
        model.train()
        return nll / n, hit / n

    out = open(a.out, "w")
    step, start = 0, time.time()
    while step < a.updates:
        epoch = batches(train, tr["max_tokens"], rng, a.corpus_order)
        for bi in rng.permutation(len(epoch)):
            step += 1
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            tok, tgt = batch([train[i] for i in epoch[bi]], vocab, rng, prob)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(tok, tgt)
            loss = F.cross_entropy(logits.float(), tgt[tgt.ne(PAD)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % a.valid_every == 0 or step == a.updates:
                vl, acc = evaluate()
                rec = {"step": step, "loss": vl, "accuracy": acc, "train_loss": loss.item(), "seconds": time.time() - start}
                print(json.dumps(rec), file=out, flush=True)
                print(f"update {step}: valid loss {vl:.4f} accuracy {acc:.4f}", flush=True)
            if step >= a.updates:
                break
    if not math.isfinite(loss.item()):
        sys.exit("the reference run diverged")


if __name__ == "__main__":
    main()
