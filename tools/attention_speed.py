"""Forward + backward time of one attention call at this project's training shapes: libtorch's
fused CPU kernel (F.scaled_dot_product_attention) against the same maths as two batched products
and a softmax (what preln's model runs while autograd records).

    ~/.cache/preln/torch-2.11.0/bin/python tools/attention_speed.py [--threads 2] [--lens 32,128]

At a fixed number of tokens, the three steps win at short lengths; the fused kernel's memory
and speed win at long ones, sooner in fp32 than in bf16 (preln switches on the key length).
"""

import argparse
import time

import torch
import torch.nn.functional as F


def median_ms(fn, reps=30):
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=2048, help="batch x length, kept fixed")
    ap.add_argument("--lens", default="32,128,256,512,1024")
    ap.add_argument("--heads", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.tokens} tokens, {args.heads} heads, {args.threads} threads; ms per forward + backward")
    for t in (int(x) for x in args.lens.split(",")):
        b = max(1, args.tokens // t)
        print(f"length {t}, batch {b}")
        compare(b, args.heads, t)


def compare(b, h, t):
    for d_head in (64, 128):
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = (torch.randn(b, h, t, d_head, dtype=dtype, requires_grad=True) for _ in range(3))
            mask = torch.ones(b, 1, 1, t, dtype=torch.bool)
            mask[:, :, :, -t // 8 :] = False
            grad = torch.randn(b, h, t, d_head, dtype=dtype)

            def fused():
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask).backward(grad)

            def three_steps():
                scores = (q @ k.transpose(-1, -2)) * d_head**-0.5
                weights = scores.masked_fill(~mask, -1e30).softmax(-1)
                (weights @ v).backward(grad)

            f, s = median_ms(fused), median_ms(three_steps)
            print(f"  d_head {d_head:3} {str(dtype):15} fused {f:7.2f}  three steps {s:7.2f}  ratio {f / s:.2f}x")


if __name__ == "__main__":
    main()
