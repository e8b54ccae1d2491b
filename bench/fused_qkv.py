"""Would a fused QKV projection pay on this machine? Three d x d linear maps against one d x 3d map, forward and
backward at the training shapes of our benchmarks (tokens x d_model), with and without biases; then forward only
at decoding shapes (one new token per sequence or beam).

    python bench/fused_qkv.py

Prints milliseconds (median of 30) and the ratio fused / three. Not a test.
"""

import torch
from timing import median_ms
from torch import nn

SHAPES = {"Shakespeare LM (12x64 tokens, d128)": (768, 128), "enc-dec d512 (32x24)": (768, 512)}
SHAPES["GPT d384 (8x256)"] = (2048, 384)
DECODING = {"greedy, 4 sentences, d256": (4, 256), "beam 4 x 16 sentences, d256": (64, 256)}


def three_and_fused(tokens: int, d: int, bias: bool):
    x = torch.randn(tokens, d, requires_grad=True)  # (tokens, d_model)
    q, k, v = (nn.Linear(d, d, bias=bias) for _ in range(3))
    qkv = nn.Linear(d, 3 * d, bias=bias)

    def three():
        (q(x).sum() + k(x).sum() + v(x).sum()).backward()

    def fused():
        sq, sk, sv = qkv(x).split(d, dim=-1)  # (tokens, d) each, as the heads would take them
        (sq.sum() + sk.sum() + sv.sum()).backward()

    return three, fused


def main():
    torch.manual_seed(0)
    for name, (tokens, d) in SHAPES.items():
        for bias in (True, False):
            three, fused = three_and_fused(tokens, d, bias)
            t3, t1 = median_ms(three), median_ms(fused)
            print(f"{name:<36} bias={bias!s:<5}  three {t3:7.3f} ms  fused {t1:7.3f} ms  fused/three {t1 / t3:.2f}")
    for name, (rows, d) in DECODING.items():
        x = torch.randn(rows, d)  # (rows, d_model): the current token of each sequence
        q, k, v = (nn.Linear(d, d) for _ in range(3))
        qkv = nn.Linear(d, 3 * d)
        with torch.inference_mode():
            t3 = median_ms(lambda: (q(x), k(x), v(x)), repeats=200)  # noqa: B023 (used within the iteration)
            t1 = median_ms(lambda: qkv(x).split(d, dim=-1), repeats=200)  # noqa: B023
        print(f"{name:<36} decoding    three {t3:7.3f} ms  fused {t1:7.3f} ms  fused/three {t1 / t3:.2f}")


if __name__ == "__main__":
    main()
