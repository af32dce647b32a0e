#!/usr/bin/env python3
"""Golden files for the model tests: tiny Transformers of every norm placement in plain PyTorch.

An independent reference for crates/preln-model: attention is written out with an explicit
masked softmax (no nn.Transformer, no scaled_dot_product_attention), and each residual block is
written out per placement from its paper (`sublayer` below; Post-LN and Pre-LN follow PAPER.md,
Table 1 line by line), not from the Rust slot tables. For each model kind (encoder-decoder, BERT)
and each placement (post, pre, sandwich, peri, deepnorm, admin, rezero, b2t, mix), plus Pre-LN
and Post-LN with RMSNorm, it writes into crates/preln-model/tests/golden/:

  {kind}_{placement}[_rmsnorm].weights.safetensors  float32 parameters keyed by the Rust paths
  {kind}_{placement}[_rmsnorm].golden.safetensors   float64: inputs, logits, loss and the gradient
                                    of the loss with respect to every parameter ("grad.<path>")

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

# Set per case: the placement, the norm ("layernorm" | "rmsnorm") and the model kind.
CASE = {"placement": "post", "norm": "layernorm", "kind": "seq2seq"}
MIX_POST_FRACTION = 0.5  # with 2 layers: layer 0 Post-LN, layer 1 Pre-LN (Rust: golden.rs)
FINAL_NORM = {"pre", "sandwich", "peri", "mix"}


def attention_params(prefix):
    shapes = {}
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        shapes[f"{prefix}.{proj}.weight"] = (D, D)
        shapes[f"{prefix}.{proj}.bias"] = (D,)
    return shapes


def norm_params(prefix, placement_norm=True):
    """A norm's gain (and bias unless it is a placement norm of an RMSNorm model)."""
    if placement_norm and CASE["norm"] == "rmsnorm":
        return {f"{prefix}.weight": (D,)}
    return {f"{prefix}.weight": (D,), f"{prefix}.bias": (D,)}


def ffn_params(prefix):
    return {
        f"{prefix}.fc1.weight": (FFN, D), f"{prefix}.fc1.bias": (FFN,),
        f"{prefix}.fc2.weight": (D, FFN), f"{prefix}.fc2.bias": (D,),
    }


def block_params(prefix, sub):
    """The variables a placement adds around sublayer `sub` of the layer at `prefix`."""
    placement = CASE["placement"]
    shapes = {}
    if placement != "rezero":
        shapes.update(norm_params(f"{prefix}.{sub}_norm"))
    if placement in ("sandwich", "peri"):
        shapes.update(norm_params(f"{prefix}.{sub}_out_norm"))
    if placement == "admin":
        shapes[f"{prefix}.{sub}_residual.omega"] = (D,)
    if placement == "rezero":
        shapes[f"{prefix}.{sub}_residual.alpha"] = (1,)
    return shapes


def layer_params(prefix, cross):
    shapes = {}
    subs = ["self_attn", "cross_attn"] if cross else ["self_attn"]
    for sub in subs:
        shapes.update(attention_params(f"{prefix}.{sub}"))
        shapes.update(block_params(prefix, sub))
    shapes.update(ffn_params(f"{prefix}.ffn"))
    shapes.update(block_params(prefix, "ffn"))
    return shapes


def stack_params(prefix, cross):
    shapes = {}
    for i in range(LAYERS):
        shapes.update(layer_params(f"{prefix}.layers.{i}", cross))
    if CASE["placement"] in FINAL_NORM:
        shapes.update(norm_params(f"{prefix}.final_norm"))
    if CASE["placement"] == "peri" and CASE["kind"] == "seq2seq":
        shapes.update(norm_params(f"{prefix}.embed_norm"))
    return shapes


def random_params(shapes, gen):
    """Random values, norms near gain 1 / bias 0 but not exactly, so every parameter matters."""
    params = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith(".omega"):
            t = 1.5 + 0.3 * torch.randn(shape, generator=gen)
        elif name.endswith(".alpha"):
            t = 0.5 + 0.1 * torch.randn(shape, generator=gen)
        elif "embed" in name or "output_projection" in name:
            t = torch.randn(shape, generator=gen) * D ** -0.5
        else:
            fan_in = shape[1]
            t = torch.randn(shape, generator=gen) * fan_in ** -0.5
        params[name] = t.float()
    return params


# ---------------------------------------------------------------- model

def layer_norm(x, p, prefix, eps):
    """BERT's own embedding and head norms: always LayerNorm."""
    return F.layer_norm(x, (D,), p[f"{prefix}.weight"], p[f"{prefix}.bias"], eps)


def norm(x, p, prefix, eps):
    """A placement's norm: LayerNorm, or RMSNorm written out, x / sqrt(mean(x^2) + eps) * g."""
    if CASE["norm"] == "rmsnorm":
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * p[f"{prefix}.weight"]
    return layer_norm(x, p, prefix, eps)


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


def deepnorm_alpha(stack):
    """DeepNet: one stack of N layers (2N)^(1/4); encoder-decoder encoder 0.81 (N^4 M)^(1/16),
    decoder (3M)^(1/4). Here N = M = LAYERS."""
    n = m = LAYERS
    if CASE["kind"] == "bert":
        return (2 * n) ** 0.25
    if stack == "encoder":
        return 0.81 * (n ** 4 * m) ** (1 / 16)
    return (3 * m) ** 0.25


def sublayer(x, p, l, sub, eps, branch, index, stack, layer_input=None):
    """One residual block of layer `index`, written out per placement from its paper.
    layer_input: for B2T, the layer's input, added on its last block."""
    placement = CASE["placement"]
    n = f"{l}.{sub}_norm"
    if placement == "mix":
        placement = "post" if index < math.floor(MIX_POST_FRACTION * LAYERS) else "pre"
    if placement == "post":
        return norm(x + branch(x), p, n, eps)
    if placement == "pre":
        return x + branch(norm(x, p, n, eps))
    if placement in ("sandwich", "peri"):
        return x + norm(branch(norm(x, p, n, eps)), p, f"{l}.{sub}_out_norm", eps)
    if placement == "deepnorm":
        return norm(deepnorm_alpha(stack) * x + branch(x), p, n, eps)
    if placement == "admin":
        return norm(p[f"{l}.{sub}_residual.omega"] * x + branch(x), p, n, eps)
    if placement == "rezero":
        return x + p[f"{l}.{sub}_residual.alpha"] * branch(x)
    if placement == "b2t":
        extra = layer_input if layer_input is not None else 0.0
        return norm(x + branch(x) + extra, p, n, eps)
    raise ValueError(placement)


def stack_input(x, p, prefix, eps):
    if CASE["placement"] == "peri" and CASE["kind"] == "seq2seq":
        return norm(x, p, f"{prefix}.embed_norm", eps)
    return x


def stack_output(x, p, prefix, eps):
    if CASE["placement"] in FINAL_NORM:
        return norm(x, p, f"{prefix}.final_norm", eps)
    return x


def encoder_stack(x, keep, p, prefix, act, eps):
    x = stack_input(x, p, prefix, eps)
    for i in range(LAYERS):
        l = f"{prefix}.layers.{i}"
        layer_input = x
        x = sublayer(x, p, l, "self_attn", eps, lambda h: attention(h, h, keep, p, f"{l}.self_attn"), i, "encoder")
        x = sublayer(x, p, l, "ffn", eps, lambda h: ffn(h, p, f"{l}.ffn", act), i, "encoder", layer_input)
    return stack_output(x, p, prefix, eps)


def decoder_stack(x, self_keep, memory, memory_keep, p):
    x = stack_input(x, p, "decoder", EPS_LN)
    for i in range(LAYERS):
        l = f"decoder.layers.{i}"
        layer_input = x
        x = sublayer(x, p, l, "self_attn", EPS_LN,
                     lambda h: attention(h, h, self_keep, p, f"{l}.self_attn"), i, "decoder")
        x = sublayer(x, p, l, "cross_attn", EPS_LN,
                     lambda h: attention(h, memory, memory_keep, p, f"{l}.cross_attn"), i, "decoder")
        x = sublayer(x, p, l, "ffn", EPS_LN, lambda h: ffn(h, p, f"{l}.ffn", F.relu), i, "decoder", layer_input)
    return stack_output(x, p, "decoder", EPS_LN)


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
    memory = encoder_stack(embed(src), src_keep, p, "encoder", F.relu, EPS_LN)
    t = prev.shape[1]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    self_keep = causal[None] & (prev != PAD)[:, None, :]  # [B, T, T]
    out = decoder_stack(embed(prev), self_keep, memory, src_keep, p)
    return out @ emb.T


def bert_forward(p, tokens, segments):
    t = tokens.shape[1]
    x = p["embeddings.tokens.weight"][tokens] + p["embeddings.positions.weight"][:t][None] \
        + p["embeddings.segments.weight"][segments]
    x = layer_norm(x, p, "embeddings.norm", BERT_EPS_LN)
    keep = (tokens != PAD)[:, None, :]
    h = encoder_stack(x, keep, p, "encoder", lambda v: F.gelu(v), BERT_EPS_LN)
    h = F.gelu(h @ p["mlm_head.dense.weight"].T + p["mlm_head.dense.bias"])
    h = layer_norm(h, p, "mlm_head.norm", BERT_EPS_LN)
    return h @ p["embeddings.tokens.weight"].T + p["mlm_head.bias"]


# ---------------------------------------------------------------- cases

def seq2seq_case(gen):
    shapes = {"embed_tokens.weight": (VOCAB, D)}
    shapes.update(stack_params("encoder", False))
    shapes.update(stack_params("decoder", True))
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


def bert_case(gen):
    shapes = {
        "embeddings.tokens.weight": (VOCAB, D),
        "embeddings.positions.weight": (BERT_MAX_POS, D),
        "embeddings.segments.weight": (BERT_SEGMENTS, D),
    }
    shapes.update(norm_params("embeddings.norm", placement_norm=False))
    shapes.update(stack_params("encoder", False))
    shapes.update({"mlm_head.dense.weight": (D, D), "mlm_head.dense.bias": (D,), "mlm_head.bias": (VOCAB,)})
    shapes.update(norm_params("mlm_head.norm", placement_norm=False))
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


def write_case(kind, placement, norm_kind, seed):
    CASE.update(placement=placement, norm=norm_kind, kind=kind)
    make = seq2seq_case if kind == "seq2seq" else bert_case
    gen = torch.Generator().manual_seed(seed)
    params, inputs, forward, (target, eps, ignore) = make(gen)
    ref = {name: t.double().requires_grad_(True) for name, t in params.items()}
    logits = forward(ref)
    loss = smoothed_loss(logits, target, eps, ignore)
    loss.backward()
    golden = {f"input.{k}": v.contiguous() for k, v in inputs.items()}
    golden["output.logits"] = logits.detach().contiguous()
    golden["output.loss"] = loss.detach().reshape(1)
    golden.update({f"grad.{name}": t.grad.contiguous() for name, t in ref.items()})
    name = f"{kind}_{placement}" + ("_rmsnorm" if norm_kind == "rmsnorm" else "")
    base = os.path.join(OUT, name)
    save_file({k: v.contiguous() for k, v in params.items()}, base + ".weights.safetensors")
    save_file(golden, base + ".golden.safetensors")
    print(f"{name}: loss {loss.item():.6f}, {len(params)} parameters", file=sys.stderr)


PLACEMENTS = ("post", "pre", "sandwich", "peri", "deepnorm", "admin", "rezero", "b2t", "mix")


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    for i, placement in enumerate(PLACEMENTS):
        write_case("seq2seq", placement, "layernorm", 1000 + i)
        write_case("bert", placement, "layernorm", 2000 + i)
    for i, placement in enumerate(("pre", "post")):
        write_case("seq2seq", placement, "rmsnorm", 3000 + i)
        write_case("bert", placement, "rmsnorm", 4000 + i)


if __name__ == "__main__":
    main()
