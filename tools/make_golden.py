#!/usr/bin/env python3
"""Golden files for the model tests: tiny Post-LN / Pre-LN models written in plain PyTorch.

An independent reference for crates/preln-model: attention is written out with an explicit
masked softmax (no nn.Transformer, no scaled_dot_product_attention), and the forward pass follows
PAPER.md, Table 1 line by line. For each model kind (encoder-decoder, BERT) and each placement
(post, pre) it writes into crates/preln-model/tests/golden/:

  {kind}_{placement}.weights.safetensors  float32 parameters keyed by the Rust parameter paths
  {kind}_{placement}.golden.safetensors   float64: inputs, logits, loss and the gradient of the
                                          loss with respect to every parameter ("grad.<path>")

The reference runs in float64 on the float32 weights, so the Rust tests can check both an fp32
and an fp64 run of the same weights. Dropout is off. Run with the project's environment:

  $PRELN_TORCH_VENV/bin/python tools/make_golden.py
"""

import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "preln-model", "tests", "golden")

# Tiny shapes shared with crates/preln-model/tests/golden.rs.
VOCAB, D, FFN, HEADS, LAYERS, PAD, EPS_LN = 40, 16, 32, 2, 2, 0, 1e-5
SMOOTHING = 0.1
BERT_MAX_POS, BERT_SEGMENTS, BERT_EPS_LN, IGNORE = 12, 2, 1e-12, -100


# ---------------------------------------------------------------- parameters

def attention_params(prefix):
    shapes = {}
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        shapes[f"{prefix}.{proj}.weight"] = (D, D)
        shapes[f"{prefix}.{proj}.bias"] = (D,)
    return shapes


def norm_params(prefix):
    return {f"{prefix}.weight": (D,), f"{prefix}.bias": (D,)}


def ffn_params(prefix):
    return {
        f"{prefix}.fc1.weight": (FFN, D), f"{prefix}.fc1.bias": (FFN,),
        f"{prefix}.fc2.weight": (D, FFN), f"{prefix}.fc2.bias": (D,),
    }


def layer_params(prefix, cross):
    shapes = {}
    subs = ["self_attn", "cross_attn"] if cross else ["self_attn"]
    for sub in subs:
        shapes.update(attention_params(f"{prefix}.{sub}"))
        shapes.update(norm_params(f"{prefix}.{sub}_norm"))
    shapes.update(ffn_params(f"{prefix}.ffn"))
    shapes.update(norm_params(f"{prefix}.ffn_norm"))
    return shapes


def stack_params(prefix, cross, placement):
    shapes = {}
    for i in range(LAYERS):
        shapes.update(layer_params(f"{prefix}.layers.{i}", cross))
    if placement == "pre":
        shapes.update(norm_params(f"{prefix}.final_norm"))
    return shapes


def random_params(shapes, gen):
    """Random values, norms near gain 1 / bias 0 but not exactly, so every parameter matters."""
    params = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=gen)
        elif "embed" in name or "output_projection" in name:
            t = torch.randn(shape, generator=gen) * D ** -0.5
        else:
            fan_in = shape[1]
            t = torch.randn(shape, generator=gen) * fan_in ** -0.5
        params[name] = t.float()
    return params


# ---------------------------------------------------------------- model

def layer_norm(x, p, prefix, eps):
    return F.layer_norm(x, (D,), p[f"{prefix}.weight"], p[f"{prefix}.bias"], eps)


def attention(q_in, kv_in, keep, p, prefix):
    """keep: bool [B, 1|T, S], True where the key is attended."""
    b, t, _ = q_in.shape
    s = kv_in.shape[1]
    hd = D // HEADS

    def proj(x, name, n):
        y = x @ p[f"{prefix}.{name}.weight"].T + p[f"{prefix}.{name}.bias"]
        return y.view(b, n, HEADS, hd).transpose(1, 2)  # [B, H, n, hd]

    q, k, v = proj(q_in, "q_proj", t), proj(kv_in, "k_proj", s), proj(kv_in, "v_proj", s)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # [B, H, T, S]
    scores = scores.masked_fill(~keep.unsqueeze(1), float("-inf"))
    ctx = torch.softmax(scores, dim=-1) @ v  # [B, H, T, hd]
    ctx = ctx.transpose(1, 2).reshape(b, t, D)
    return ctx @ p[f"{prefix}.out_proj.weight"].T + p[f"{prefix}.out_proj.bias"]


def ffn(x, p, prefix, act):
    h = act(x @ p[f"{prefix}.fc1.weight"].T + p[f"{prefix}.fc1.bias"])
    return h @ p[f"{prefix}.fc2.weight"].T + p[f"{prefix}.fc2.bias"]


def sublayer(x, placement, p, norm, eps, branch):
    """Post-LN: LN(x + F(x)).  Pre-LN: x + F(LN(x))."""
    if placement == "post":
        return layer_norm(x + branch(x), p, norm, eps)
    return x + branch(layer_norm(x, p, norm, eps))


def encoder_stack(x, keep, p, prefix, placement, act, eps):
    for i in range(LAYERS):
        l = f"{prefix}.layers.{i}"
        x = sublayer(x, placement, p, f"{l}.self_attn_norm", eps,
                     lambda h: attention(h, h, keep, p, f"{l}.self_attn"))
        x = sublayer(x, placement, p, f"{l}.ffn_norm", eps, lambda h: ffn(h, p, f"{l}.ffn", act))
    if placement == "pre":
        x = layer_norm(x, p, f"{prefix}.final_norm", eps)
    return x


def decoder_stack(x, self_keep, memory, memory_keep, p, placement):
    for i in range(LAYERS):
        l = f"decoder.layers.{i}"
        x = sublayer(x, placement, p, f"{l}.self_attn_norm", EPS_LN,
                     lambda h: attention(h, h, self_keep, p, f"{l}.self_attn"))
        x = sublayer(x, placement, p, f"{l}.cross_attn_norm", EPS_LN,
                     lambda h: attention(h, memory, memory_keep, p, f"{l}.cross_attn"))
        x = sublayer(x, placement, p, f"{l}.ffn_norm", EPS_LN, lambda h: ffn(h, p, f"{l}.ffn", F.relu))
    if placement == "pre":
        x = layer_norm(x, p, "decoder.final_norm", EPS_LN)
    return x


def sinusoidal(n):
    """[n, D]: sines then cosines, frequencies 10000^(-i / (D/2 - 1)) (fairseq)."""
    half = D // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000.0) / (half - 1)))
    args = torch.arange(n, dtype=torch.float64)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def smoothed_loss(logits, target, eps, ignore):
    """fairseq label_smoothed_nll_loss, mean over counted tokens."""
    lprobs = torch.log_softmax(logits, dim=-1).reshape(-1, logits.shape[-1])
    target = target.reshape(-1)
    keep = target != ignore
    lprobs, target = lprobs[keep], target[keep]
    nll = -lprobs.gather(1, target[:, None]).squeeze(1)
    smooth = -lprobs.sum(-1)
    eps_i = eps / (logits.shape[-1] - 1)
    loss = (1.0 - eps - eps_i) * nll + eps_i * smooth
    return loss.sum() / keep.sum()


def seq2seq_forward(p, src, prev):
    emb = p["embed_tokens.weight"]
    scale = math.sqrt(D)

    def embed(tokens):
        return emb[tokens] * scale + sinusoidal(tokens.shape[1])[None]

    src_keep = (src != PAD)[:, None, :]  # [B, 1, S]
    memory = encoder_stack(embed(src), src_keep, p, "encoder", PLACEMENT[0], F.relu, EPS_LN)
    t = prev.shape[1]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    self_keep = causal[None] & (prev != PAD)[:, None, :]  # [B, T, T]
    out = decoder_stack(embed(prev), self_keep, memory, src_keep, p, PLACEMENT[0])
    return out @ emb.T


def bert_forward(p, tokens, segments):
    t = tokens.shape[1]
    x = p["embeddings.tokens.weight"][tokens] + p["embeddings.positions.weight"][:t][None] \
        + p["embeddings.segments.weight"][segments]
    x = layer_norm(x, p, "embeddings.norm", BERT_EPS_LN)
    keep = (tokens != PAD)[:, None, :]
    h = encoder_stack(x, keep, p, "encoder", PLACEMENT[0], lambda v: F.gelu(v), BERT_EPS_LN)
    h = F.gelu(h @ p["mlm_head.dense.weight"].T + p["mlm_head.dense.bias"])
    h = layer_norm(h, p, "mlm_head.norm", BERT_EPS_LN)
    return h @ p["embeddings.tokens.weight"].T + p["mlm_head.bias"]


PLACEMENT = ["post"]  # set per case


# ---------------------------------------------------------------- cases

def seq2seq_case(placement, gen):
    shapes = {"embed_tokens.weight": (VOCAB, D)}
    shapes.update(stack_params("encoder", False, placement))
    shapes.update(stack_params("decoder", True, placement))
    params = random_params(shapes, gen)
    params["embed_tokens.weight"][PAD] = 0.0
    # A padded batch: lengths 7, 5, 3 (source) and 6, 4, 2 (target).
    src = torch.randint(3, VOCAB, (3, 7), generator=gen)
    tgt = torch.randint(3, VOCAB, (3, 6), generator=gen)
    for row, (ls, lt) in enumerate([(7, 6), (5, 4), (3, 2)]):
        src[row, ls:] = PAD
        tgt[row, lt:] = PAD
    prev = torch.cat([torch.full((3, 1), 2), tgt[:, :-1]], dim=1)
    prev[tgt == PAD] = PAD
    inputs = {"src": src, "prev": prev, "target": tgt}
    return params, inputs, lambda p: seq2seq_forward(p, src, prev), (tgt, SMOOTHING, PAD)


def bert_case(placement, gen):
    shapes = {
        "embeddings.tokens.weight": (VOCAB, D),
        "embeddings.positions.weight": (BERT_MAX_POS, D),
        "embeddings.segments.weight": (BERT_SEGMENTS, D),
    }
    shapes.update(norm_params("embeddings.norm"))
    shapes.update(stack_params("encoder", False, placement))
    shapes.update({"mlm_head.dense.weight": (D, D), "mlm_head.dense.bias": (D,), "mlm_head.bias": (VOCAB,)})
    shapes.update(norm_params("mlm_head.norm"))
    params = random_params(shapes, gen)
    params["embeddings.tokens.weight"][PAD] = 0.0
    tokens = torch.randint(3, VOCAB, (3, 8), generator=gen)
    segments = torch.zeros(3, 8, dtype=torch.long)
    segments[:, 4:] = 1
    for row, length in enumerate([8, 6, 3]):
        tokens[row, length:] = PAD
        segments[row, length:] = 0
    target = torch.full((3, 8), IGNORE)
    target[0, 1], target[0, 5], target[1, 2], target[2, 0] = 7, 9, 11, 13
    inputs = {"tokens": tokens, "segments": segments, "target": target}
    return params, inputs, lambda p: bert_forward(p, tokens, segments), (target, 0.0, IGNORE)


def write_case(kind, placement, make, seed):
    PLACEMENT[0] = placement
    gen = torch.Generator().manual_seed(seed)
    params, inputs, forward, (target, eps, ignore) = make(placement, gen)
    ref = {name: t.double().requires_grad_(True) for name, t in params.items()}
    logits = forward(ref)
    loss = smoothed_loss(logits, target, eps, ignore)
    loss.backward()
    golden = {f"input.{k}": v.contiguous() for k, v in inputs.items()}
    golden["output.logits"] = logits.detach().contiguous()
    golden["output.loss"] = loss.detach().reshape(1)
    golden.update({f"grad.{name}": t.grad.contiguous() for name, t in ref.items()})
    base = os.path.join(OUT, f"{kind}_{placement}")
    save_file({k: v.contiguous() for k, v in params.items()}, base + ".weights.safetensors")
    save_file(golden, base + ".golden.safetensors")
    print(f"{kind}_{placement}: loss {loss.item():.6f}, {len(params)} parameters", file=sys.stderr)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    for i, placement in enumerate(("post", "pre")):
        write_case("seq2seq", placement, seq2seq_case, 1000 + i)
        write_case("bert", placement, bert_case, 2000 + i)


if __name__ == "__main__":
    main()
