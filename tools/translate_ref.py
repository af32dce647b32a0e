#!/usr/bin/env python3
"""PyTorch reference decoder for `preln bench translate --vs-pytorch`.

Written independently of the Rust code: it reads a run's config.toml and a checkpoint
(safetensors keyed by parameter path), and decodes token ids with the same search rules
(fairseq-style beam search, length penalty, EOS forced at a * src_len + b, a key/value cache),
as a plain Python loop over PyTorch eager ops. Reads a JSON spec on stdin, prints one JSON line:
the hypotheses (token ids), their scores and the decoding time.
"""

import json
import math
import sys
import time
import tomllib

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class Model:
    def __init__(self, cfg, weights, device):
        self.c = cfg
        self.w = {k: v.to(device) for k, v in weights.items() if not k.startswith("optimizer.")}
        self.pre = cfg["placement"] == "pre"
        self.d, self.h = cfg["d_model"], cfg["heads"]
        shared = cfg.get("share_embeddings", True)
        self.e_enc = self.w["embed_tokens.weight"] if shared else self.w["encoder.embed_tokens.weight"]
        self.e_dec = self.w["embed_tokens.weight"] if shared else self.w["decoder.embed_tokens.weight"]
        self.e_out = self.w["embed_tokens.weight"] if shared else self.w["decoder.output_projection.weight"]
        self.eps = cfg.get("layer_norm_eps", 1e-5)

    def lin(self, x, name):
        return F.linear(x, self.w[name + ".weight"], self.w[name + ".bias"])

    def ln(self, x, name):
        return F.layer_norm(x, (self.d,), self.w[name + ".weight"], self.w[name + ".bias"], self.eps)

    def heads(self, x):
        b, t, _ = x.shape
        return x.view(b, t, self.h, self.d // self.h).transpose(1, 2)

    def attend(self, x, k, v, mask, name):
        b, t, _ = x.shape
        q = self.heads(self.lin(x, name + ".q_proj"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.lin(y.transpose(1, 2).reshape(b, t, self.d), name + ".out_proj")

    def sub(self, x, norm, f):
        return x + f(self.ln(x, norm)) if self.pre else self.ln(x + f(x), norm)

    def embed(self, table, tokens, start):
        half = self.d // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float64, device=tokens.device) * -(math.log(10000.0) / (half - 1)))
        pos = torch.arange(start, start + tokens.shape[1], dtype=torch.float64, device=tokens.device)
        args = pos[:, None] * freqs[None]
        pe = torch.cat([args.sin(), args.cos()], 1).to(table.dtype)
        return table[tokens] * math.sqrt(self.d) + pe

    def encode(self, src):
        mask = (src != PAD)[:, None, None, :]
        x = self.embed(self.e_enc, src, 0)
        for i in range(self.c["encoder_layers"]):
            p = f"encoder.layers.{i}"
            x = self.sub(x, p + ".self_attn_norm",
                         lambda h: self.attend(h, self.heads(self.lin(h, p + ".self_attn.k_proj")),
                                               self.heads(self.lin(h, p + ".self_attn.v_proj")), mask, p + ".self_attn"))
            x = self.sub(x, p + ".ffn_norm", lambda h: self.lin(F.relu(self.lin(h, p + ".ffn.fc1")), p + ".ffn.fc2"))
        if self.pre:
            x = self.ln(x, "encoder.final_norm")
        return x, mask

    def start(self, memory):
        cross = []
        for i in range(self.c["decoder_layers"]):
            p = f"decoder.layers.{i}.cross_attn"
            cross.append((self.heads(self.lin(memory, p + ".k_proj")), self.heads(self.lin(memory, p + ".v_proj"))))
        return {"self": [None] * self.c["decoder_layers"], "cross": cross, "len": 0}

    def step(self, last, cache, mask):
        x = self.embed(self.e_dec, last[:, None], cache["len"])
        for i in range(self.c["decoder_layers"]):
            p = f"decoder.layers.{i}"

            def self_attn(h):
                k, v = self.heads(self.lin(h, p + ".self_attn.k_proj")), self.heads(self.lin(h, p + ".self_attn.v_proj"))
                if cache["self"][i] is not None:
                    k = torch.cat([cache["self"][i][0], k], 2)
                    v = torch.cat([cache["self"][i][1], v], 2)
                cache["self"][i] = (k, v)
                return self.attend(h, k, v, None, p + ".self_attn")

            x = self.sub(x, p + ".self_attn_norm", self_attn)
            ck, cv = cache["cross"][i]
            x = self.sub(x, p + ".cross_attn_norm", lambda h: self.attend(h, ck, cv, mask, p + ".cross_attn"))
            x = self.sub(x, p + ".ffn_norm", lambda h: self.lin(F.relu(self.lin(h, p + ".ffn.fc1")), p + ".ffn.fc2"))
        cache["len"] += 1
        if self.pre:
            x = self.ln(x, "decoder.final_norm")
        return x[:, 0] @ self.e_out.T


def reorder(cache, mask, idx):
    cache["self"] = [None if c is None else (c[0][idx], c[1][idx]) for c in cache["self"]]
    cache["cross"] = [(k[idx], v[idx]) for k, v in cache["cross"]]
    return mask[idx]


def beam_search(model, src, beam, lenpen, a, b):
    n = src.shape[0]
    lens = (src != PAD).sum(1).tolist()
    max_lens = [max(1, int(a * l) + b) for l in lens]
    memory, mask = model.encode(src)
    cache = model.start(memory)
    expand = torch.arange(n, device=src.device).repeat_interleave(beam)
    mask = reorder(cache, mask, expand)
    rows = n * beam
    tokens = [[] for _ in range(rows)]
    scores = [0.0 if r % beam == 0 else -math.inf for r in range(rows)]
    finished = [[] for _ in range(n)]
    done = [False] * n
    last = torch.full((rows,), BOS, dtype=torch.long, device=src.device)
    for step in range(max(max_lens)):
        lp = torch.log_softmax(model.step(last, cache, mask).float(), -1)
        lp[:, PAD] = -math.inf
        lp[:, BOS] = -math.inf
        forced = [r for r in range(rows) if step + 1 >= max_lens[r // beam]]
        if forced:
            eos = lp[forced, EOS].clone()
            lp[forced] = -math.inf
            lp[forced, EOS] = eos
        vocab = lp.shape[1]
        cand = (lp + torch.tensor(scores, device=lp.device)[:, None]).view(n, beam * vocab)
        top_v, top_i = cand.topk(2 * beam, dim=1)
        top_v, top_i = top_v.double().tolist(), top_i.tolist()
        src_rows, new_tokens, new_scores = [], [], []
        for i in range(n):
            chosen = 0
            if not done[i]:
                for c in range(2 * beam):
                    val, idx = top_v[i][c], top_i[i][c]
                    if val == -math.inf:
                        break
                    row, tok = i * beam + idx // vocab, idx % vocab
                    if tok == EOS:
                        if c < beam:
                            finished[i].append((val / (len(tokens[row]) + 1) ** lenpen, tokens[row]))
                    elif chosen < beam:
                        src_rows.append(row)
                        new_tokens.append(tokens[row] + [tok])
                        new_scores.append(val)
                        chosen += 1
                    if chosen == beam and c + 1 >= beam:
                        break
                if len(finished[i]) >= beam:
                    done[i] = True
            while chosen < beam:
                src_rows.append(i * beam)
                new_tokens.append([])
                new_scores.append(-math.inf)
                chosen += 1
        if all(done):
            break
        idx = torch.tensor(src_rows, device=src.device)
        mask = reorder(cache, mask, idx)
        tokens, scores = new_tokens, new_scores
        last = torch.tensor([t[-1] if t else PAD for t in tokens], device=src.device)
    best = []
    for hyps in finished:
        hyps.sort(key=lambda h: -h[0])
        best.append(hyps[0] if hyps else (-math.inf, []))
    return best


def main():
    spec = json.load(sys.stdin)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec.get("device", "cpu"))
    with open(spec["config"], "rb") as f:
        cfg = tomllib.load(f)["model"]
    model = Model(cfg, load_file(spec["checkpoint"]), device)
    out_tokens, out_scores = [], []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in spec["batches"]:
            width = max(len(s) for s in batch)
            src = torch.tensor([s + [PAD] * (width - len(s)) for s in batch], device=device)
            for score, toks in beam_search(model, src, spec["beam"], spec["lenpen"], spec["max_len_a"], spec["max_len_b"]):
                out_tokens.append(toks)
                out_scores.append(score)
    seconds = time.perf_counter() - t0
    print(json.dumps({"tokens": out_tokens, "scores": out_scores, "seconds": seconds, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
