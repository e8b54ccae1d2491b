"""The linear maps of a decoding step: torch's `nn.Linear` against `vanilla_layers.linear`'s few-rows path.

    python bench/few_rows.py                # weights read from memory, as in decoding (default)
    python bench/few_rows.py --hot          # one weight, hot in cache

A decoding step multiplies a few rows (B·beams) by every weight of the model once. For each weight shape of the
benchmark models and each row count, prints microseconds per product of `nn.Linear` (x W^T) and of the
weight-as-left-operand form (W x^T)^T, and their ratio. By default it cycles through ~96 MB of distinct weights
per shape, so that each product reads its weight from memory, not cache, as a real decoding step does.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = [(256, 256), (256, 1024), (1024, 256), (256, 8000), (384, 1536), (1536, 384), (512, 2048), (2048, 512),
          (512, 37000)]  # fmt: skip
ROWS = [1, 2, 3, 4, 5, 6, 8, 12, 16, 32, 64]


def few_rows(x, weight, bias):
    """The path of `vanilla_layers.linear`, here for any row count."""
    rows = x.shape[0]
    x = (x.expand(2, -1) if rows == 1 else x).contiguous()
    return torch.addmm(bias.unsqueeze(1), weight, x.t())[:, :rows].t().contiguous()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hot", action="store_true", help="reuse one weight (in cache) instead of cycling")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    print("weights " + ("hot in cache" if args.hot else "read from memory (~96 MB cycled per shape)"))
    print("ratio few-rows path / nn.Linear per row count; below: µs of nn.Linear -> few-rows path at 1, 4, 8 rows")
    print(f"{'d_in x d_out':>14} " + " ".join(f"{r:>5}" for r in ROWS))
    for d_in, d_out in SHAPES:
        count = 8 if args.hot else max(2, int(96e6 / (d_in * d_out * 4)))
        weights = [torch.randn(d_out, d_in)] * count if args.hot else [torch.randn(d_out, d_in) for _ in range(count)]
        bias = torch.randn(d_out)
        ratios, detail = [], []
        for rows in ROWS:
            x = torch.randn(rows, d_in)
            times = {"linear": [], "few": []}
            with torch.inference_mode():
                for _ in range(args.repeats):
                    for name, fn in (("linear", F.linear), ("few", few_rows)):
                        start = time.perf_counter()
                        for w in weights:
                            fn(x, w, bias)
                        times[name].append((time.perf_counter() - start) / count * 1e6)
            lin, few = statistics.median(times["linear"]), statistics.median(times["few"])
            ratios.append(few / lin)
            if rows in (1, 4, 8):
                detail.append(f"{rows}: {lin:.0f} -> {few:.0f}")
        print(f"{d_in:>6} x {d_out:<6} " + " ".join(f"{r:5.2f}" for r in ratios) + "   (" + ", ".join(detail) + ")")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, MKL {torch.backends.mkl.is_available()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip


if __name__ == "__main__":
    main()
