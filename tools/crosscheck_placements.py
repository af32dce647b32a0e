#!/usr/bin/env python3
"""Cross-checks the per-paper reference of tools/make_golden.py against the PyPI packages that
implement the same designs, so that the golden files (and the Rust model, which matches them to
1e-14) agree with what users of those packages run:

  x-transformers 2.31  `Encoder(sandwich_norm=True)`: Sandwich-LN's norm layout and final norm,
                       with its attention and feed-forward blocks replaced by the reference's
                       (the norms are what is checked).
  rezero 0.1.0         `RZTXEncoderLayer`: x + a F(x) without LayerNorm (the package shares one
                       gate a between a layer's two sublayers; preln has one per sublayer, set
                       equal here).
  admin-torch 0.1.0    `OmegaResidual(as_parameter=True)`: the skip weighting omega * x + F.
  torchscale 0.3.0     DeepNorm's `EncoderLayer` (alpha, LN(alpha x + F(x))) and the init scales
                       of its encoder and decoder: the decoder's beta is the paper's, the
                       encoder's is 1.15 (N^4 M)^(-1/16) where the DeepNet paper has 0.87
                       (preln's `model.deepnorm_init = "torchscale"` vs the default "paper").

Each check prints the largest relative difference and the script exits non-zero if one exceeds
1e-12 (fp64; 1e-6 for torchscale, whose attention takes its softmax in fp32). Needs the packages of tools/requirements-crosscheck.txt in the project's
environment:

  $PRELN_TORCH_VENV/bin/pip install -r tools/requirements-crosscheck.txt
  $PRELN_TORCH_VENV/bin/python tools/crosscheck_placements.py
"""

import math
import sys
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

import make_golden as G

TOL = 1e-12
# torchscale's attention takes its softmax in fp32 and its modules are built in fp32.
TORCHSCALE_TOL = 1e-6
FAILED = []


def report(name, got, want, tol=TOL):
    err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
    ok = err <= tol
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max relative difference {err:.2e}")
    if not ok:
        FAILED.append(name)


def case(placement, seed):
    """Parameters of a reference encoder stack of `placement` (encoder-only: no embedding norm)."""
    G.CASE.update(placement=placement, norm="layernorm", kind="bert")
    gen = torch.Generator().manual_seed(seed)
    p = {k: v.double() for k, v in G.random_params(G.stack_params("encoder", False), gen).items()}
    x = torch.randn(2, 5, G.D, generator=gen, dtype=torch.float64)
    keep = torch.ones(2, 1, 5, dtype=torch.bool)
    return p, x, keep


class RefNorm(nn.Module):
    def __init__(self, p, prefix):
        super().__init__()
        self.p, self.prefix = p, prefix

    def forward(self, x, **_):
        return G.layer_norm(x, self.p, self.prefix, G.EPS_LN)


class RefAttention(nn.Module):
    def __init__(self, p, prefix):
        super().__init__()
        self.p, self.prefix = p, prefix

    def forward(self, x, mask=None, **_):
        keep = torch.ones(x.shape[0], 1, x.shape[1], dtype=torch.bool) if mask is None else mask[:, None, :]
        return G.attention(x, x, keep, self.p, self.prefix), types.SimpleNamespace(values=None, pre_softmax_attn=None)


class RefFeedForward(nn.Module):
    def __init__(self, p, prefix):
        super().__init__()
        self.p, self.prefix = p, prefix

    def forward(self, x, **_):
        return G.ffn(x, self.p, self.prefix, F.relu)


def check_sandwich():
    from x_transformers import Encoder

    p, x, keep = case("sandwich", 11)
    enc = Encoder(dim=G.D, depth=G.LAYERS, heads=G.HEADS, sandwich_norm=True).double()
    for i, layer in enumerate(enc.layers):
        norms, _, _ = layer
        l, sub = i // 2, ("self_attn" if i % 2 == 0 else "ffn")
        prefix = f"encoder.layers.{l}"
        assert norms[2] is None, "sandwich: no norm after the residual add"
        norms[0] = RefNorm(p, f"{prefix}.{sub}_norm")
        norms[1] = RefNorm(p, f"{prefix}.{sub}_out_norm")
        layer[1] = RefAttention(p, f"{prefix}.self_attn") if sub == "self_attn" else RefFeedForward(p, f"{prefix}.ffn")
    enc.final_norm = RefNorm(p, "encoder.final_norm")
    report("sandwich vs x-transformers Encoder(sandwich_norm=True)", G.encoder_stack(x, keep, p, "encoder", F.relu, G.EPS_LN), enc(x))


def check_rezero():
    from rezero.transformer import RZTXEncoderLayer

    p, x, keep = case("rezero", 12)
    for l in range(G.LAYERS):
        p[f"encoder.layers.{l}.ffn_residual.alpha"] = p[f"encoder.layers.{l}.self_attn_residual.alpha"]
    ours = G.encoder_stack(x, keep, p, "encoder", F.relu, G.EPS_LN)
    h = x.transpose(0, 1)  # the package is sequence-first
    for l in range(G.LAYERS):
        pre = f"encoder.layers.{l}"
        layer = RZTXEncoderLayer(G.D, G.HEADS, dim_feedforward=G.FFN, dropout=0.0, activation="relu").double().eval()
        a = layer.self_attn
        with torch.no_grad():
            a.in_proj_weight.copy_(torch.cat([p[f"{pre}.self_attn.{n}_proj.weight"] for n in "qkv"]))
            a.in_proj_bias.copy_(torch.cat([p[f"{pre}.self_attn.{n}_proj.bias"] for n in "qkv"]))
            a.out_proj.weight.copy_(p[f"{pre}.self_attn.out_proj.weight"])
            a.out_proj.bias.copy_(p[f"{pre}.self_attn.out_proj.bias"])
            layer.linear1.weight.copy_(p[f"{pre}.ffn.fc1.weight"])
            layer.linear1.bias.copy_(p[f"{pre}.ffn.fc1.bias"])
            layer.linear2.weight.copy_(p[f"{pre}.ffn.fc2.weight"])
            layer.linear2.bias.copy_(p[f"{pre}.ffn.fc2.bias"])
            layer.resweight.copy_(p[f"{pre}.self_attn_residual.alpha"])
        h = layer(h)
    report("rezero vs rezero RZTXEncoderLayer", ours, h.transpose(0, 1))


def check_admin():
    import admin_torch

    p, x, keep = case("admin", 13)
    ours = G.encoder_stack(x, keep, p, "encoder", F.relu, G.EPS_LN)
    h = x
    for l in range(G.LAYERS):
        pre = f"encoder.layers.{l}"
        for sub, branch in (("self_attn", lambda v: G.attention(v, v, keep, p, f"{pre}.self_attn")),
                            ("ffn", lambda v: G.ffn(v, p, f"{pre}.ffn", F.relu))):
            res = admin_torch.OmegaResidual(init_value=1.0, as_parameter=True, embed_dim=G.D).double()
            with torch.no_grad():
                res.omega.copy_(p[f"{pre}.{sub}_residual.omega"])
            h = G.layer_norm(res(h, branch(h)), p, f"{pre}.{sub}_norm", G.EPS_LN)
    report("admin vs admin-torch OmegaResidual + LayerNorm", ours, h)


def torchscale_modules():
    """torchscale imports fairscale and timm at module level for features not used here
    (activation checkpointing, FSDP wrapping, drop path): stand-ins for those names."""
    fairscale = types.ModuleType("fairscale")
    fairscale.nn = types.ModuleType("fairscale.nn")
    fairscale.nn.checkpoint_wrapper = lambda m, *a, **k: m
    fairscale.nn.wrap = lambda m, *a, **k: m
    timm = types.ModuleType("timm")
    timm.models = types.ModuleType("timm.models")
    timm.models.layers = types.ModuleType("timm.models.layers")
    timm.models.layers.drop_path = lambda x, *a, **k: x
    for name, m in [("fairscale", fairscale), ("fairscale.nn", fairscale.nn), ("timm", timm),
                    ("timm.models", timm.models), ("timm.models.layers", timm.models.layers)]:
        sys.modules.setdefault(name, m)
    from torchscale.architecture.config import EncoderDecoderConfig
    from torchscale.architecture.decoder import Decoder
    from torchscale.architecture.encoder import Encoder, EncoderLayer
    return EncoderDecoderConfig, Encoder, EncoderLayer, Decoder


def check_deepnorm():
    EncoderDecoderConfig, Encoder, EncoderLayer, Decoder = torchscale_modules()
    n = m = G.LAYERS
    args = EncoderDecoderConfig(
        encoder_embed_dim=G.D, encoder_ffn_embed_dim=G.FFN, encoder_attention_heads=G.HEADS, encoder_layers=n,
        decoder_embed_dim=G.D, decoder_ffn_embed_dim=G.FFN, decoder_attention_heads=G.HEADS, decoder_layers=m,
        deepnorm=True, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, activation_fn="relu",
        layernorm_eps=G.EPS_LN, vocab_size=G.VOCAB,
    )
    assert not args.subln and not args.encoder_normalize_before, "DeepNorm config is Post-LN without sub-LN"
    # The encoder of an encoder-decoder: layout and alpha against the reference.
    G.CASE.update(placement="deepnorm", norm="layernorm", kind="seq2seq")
    gen = torch.Generator().manual_seed(14)
    p = {k: v.double() for k, v in G.random_params(G.stack_params("encoder", False), gen).items()}
    x = torch.randn(2, 5, G.D, generator=gen, dtype=torch.float64)
    keep = torch.ones(2, 1, 5, dtype=torch.bool)
    ours = G.encoder_stack(x, keep, p, "encoder", F.relu, G.EPS_LN)
    h = x
    for l in range(n):
        layer = EncoderLayer(args, depth=l, is_encoder_decoder=True).double().eval()
        pre = f"encoder.layers.{l}"
        names = {
            "self_attn.q_proj": "self_attn.q_proj", "self_attn.k_proj": "self_attn.k_proj",
            "self_attn.v_proj": "self_attn.v_proj", "self_attn.out_proj": "self_attn.out_proj",
            "ffn.fc1": "ffn.fc1", "ffn.fc2": "ffn.fc2",
            "self_attn_layer_norm.A": "self_attn_norm", "final_layer_norm.A": "ffn_norm",
        }
        state = layer.state_dict()
        with torch.no_grad():
            for theirs, mine in names.items():
                for kind in ("weight", "bias"):
                    key = f"{theirs}.{kind}"
                    if key not in state:
                        key = f"{theirs.replace('.A', '')}.{kind}"
                    state[key].copy_(p[f"{pre}.{mine}.{kind}"])
        h, _ = layer(h, encoder_padding_mask=None)
    report("deepnorm encoder stack vs torchscale EncoderLayer (alpha = 0.81 (N^4 M)^(1/16))", ours, h, TORCHSCALE_TOL)
    # Init scales: one Encoder / Decoder built twice from one seed, with and without DeepNorm.
    for stack, cls, want in (("encoder", Encoder, 1.15 / (n ** 4 * m) ** (1 / 16)),
                             ("decoder", Decoder, (12 * m) ** -0.25)):
        weights = []
        for deep in (True, False):
            torch.manual_seed(0)
            a = EncoderDecoderConfig(**{**vars(args), "deepnorm": deep})
            a.subln = False
            module = cls(a, embed_tokens=nn.Embedding(G.VOCAB, G.D), is_encoder_decoder=True) if cls is Encoder \
                else cls(a, embed_tokens=nn.Embedding(G.VOCAB, G.D), is_encoder_decoder=True)
            weights.append(dict(module.named_parameters()))
        name = next(k for k in weights[0] if k.endswith("v_proj.weight"))
        ratio = (weights[0][name] / weights[1][name]).mean().item()
        q = next(k for k in weights[0] if k.endswith("q_proj.weight"))
        q_ratio = (weights[0][q] / weights[1][q]).mean().item()
        report(f"torchscale {stack} beta on v_proj = {ratio:.6f}", torch.tensor([ratio]), torch.tensor([want]), TORCHSCALE_TOL)
        report(f"torchscale {stack} q_proj untouched", torch.tensor([q_ratio]), torch.tensor([1.0]))
    paper = 0.87 / (n ** 4 * m) ** (1 / 16)
    print(f"note: the DeepNet paper's encoder beta here is {paper:.6f}; torchscale's is "
          f"{1.15 / (n ** 4 * m) ** (1 / 16):.6f} (preln: model.deepnorm_init = \"paper\" | \"torchscale\")")


def main():
    torch.manual_seed(0)
    for check in (check_sandwich, check_rezero, check_admin, check_deepnorm):
        try:
            check()
        except ImportError as e:
            FAILED.append(check.__name__)
            print(f"FAIL {check.__name__}: {e} (pip install -r tools/requirements-crosscheck.txt)")
    if FAILED:
        print(f"{len(FAILED)} check(s) failed: {', '.join(FAILED)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
