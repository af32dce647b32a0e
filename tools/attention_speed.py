"""Forward + backward time of one attention call at this project's training shapes: libtorch's
fused CPU kernel (F.scaled_dot_product_attention) against the same maths as two batched products
and a softmax (what preln's model runs while autograd records).

    ~/.cache/preln/torch-2.11.0/bin/python tools/attention_speed.py [--threads 2]
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
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--len", type=int, default=32)
    ap.add_argument("--heads", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    b, h, t = args.batch, args.heads, args.len
    print(f"batch {b}, heads {h}, length {t}, {args.threads} threads; ms per forward + backward")
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
            print(f"d_head {d_head:3} {str(dtype):15} fused {f:6.2f}  three steps {s:6.2f}  ratio {f / s:.2f}x")


if __name__ == "__main__":
    main()
