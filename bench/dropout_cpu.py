"""Dropout on CPU: torch's `F.dropout` against our `apply_dropout` (keep-mask drawn with `rand_like`).

    python bench/dropout_cpu.py

Forward + backward of one dropout (p = 0.1) on the activation shapes of bench/speed.py; median of 40, in ms.
Also the raw draws: `bernoulli_` (behind `F.dropout` on CPU) against `rand_like`. Not a test.
"""

import torch
import torch.nn.functional as F
from timing import median_ms

from hf_vanilla_transformer.vanilla_layers import apply_dropout

SHAPES = {"enc-dec d512 (32 x 24 x 512)": (32, 24, 512), "GPT d384 (8 x 256 x 384)": (8, 256, 384)}


def forward_backward(dropout, x):
    def run():
        leaf = x.clone().requires_grad_()
        dropout(leaf).sum().backward()

    return run


def main():
    torch.manual_seed(0)
    for name, shape in SHAPES.items():
        x = torch.randn(shape)
        torch_ms = median_ms(forward_backward(lambda t: F.dropout(t, 0.1, training=True), x), repeats=40)
        ours_ms = median_ms(forward_backward(lambda t: apply_dropout(t, 0.1, training=True), x), repeats=40)
        draw_b = median_ms(lambda: torch.empty_like(x).bernoulli_(0.9), repeats=40)  # noqa: B023 (used within the iteration)
        draw_r = median_ms(lambda: torch.rand_like(x), repeats=40)  # noqa: B023
        print(
            f"{name:<30} F.dropout {torch_ms:6.2f} ms  apply_dropout {ours_ms:6.2f} ms  ratio {ours_ms / torch_ms:.2f}"
            f"   | draws: bernoulli_ {draw_b:5.2f} ms, rand_like {draw_r:5.2f} ms"
        )


if __name__ == "__main__":
    main()
