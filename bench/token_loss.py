"""The loss: our `token_loss` against torch's `F.cross_entropy`, forward + backward, with and without smoothing.

    python bench/token_loss.py

For each size (tokens N x vocabulary V) and ε in {0.1, 0}: the median time of forward + backward (the two take
turns, 5 rounds of `median_ms`), and the peak resident memory above the start of a fresh process that runs it
three times (the logits themselves, N x V, are allocated before the start mark). Not a test.
"""

import statistics

import torch
import torch.nn.functional as F
from timing import in_fresh_process, median_ms, process_memory_mib

from hf_vanilla_transformer.vanilla_layers import token_loss

SIZES = {"bench/speed.py enc-dec (768 x 8000)": (768, 8000), "paper vocabulary (2048 x 37000)": (2048, 37000)}
LOSSES = {
    "ours": lambda logits, labels, eps: token_loss(logits, labels, eps),
    "torch": lambda logits, labels, eps: F.cross_entropy(logits, labels, label_smoothing=eps),
}


def inputs(n, v):
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, v, (n,), generator=generator)
    labels[::7] = -100  # some padding
    return torch.randn(n, v, generator=generator), labels


def forward_backward(which, logits, labels, eps):
    def run():
        leaf = logits.detach().requires_grad_()
        LOSSES[which](leaf, labels, eps).backward()

    return run


def peak_child(which, n, v, eps):
    """Run in a fresh process: MiB of peak RSS above the resident memory once the logits exist."""
    logits, labels = inputs(n, v)
    start = process_memory_mib("VmRSS")
    for _ in range(3):
        forward_backward(which, logits, labels, eps)()
    return process_memory_mib("VmHWM") - start


def main():
    for name, (n, v) in SIZES.items():
        logits, labels = inputs(n, v)
        for eps in (0.1, 0.0):
            times = {which: [] for which in LOSSES}
            for _ in range(5):  # taking turns
                for which in LOSSES:
                    times[which].append(median_ms(forward_backward(which, logits, labels, eps), repeats=10, warmup=2))
            ms = {which: statistics.median(t) for which, t in times.items()}
            mib = {which: in_fresh_process("token_loss", "peak_child", which, n, v, eps) for which in LOSSES}
            print(
                f"{name:<38} eps {eps:<3}  time: ours {ms['ours']:7.2f} ms, torch {ms['torch']:7.2f} ms, "
                f"ratio {ms['ours'] / ms['torch']:.2f} | peak above logits: ours {mib['ours']:6.0f} MiB, "
                f"torch {mib['torch']:6.0f} MiB (one N x V tensor: {n * v * 4 / 2**20:.0f} MiB)",
                flush=True,
            )


if __name__ == "__main__":
    main()
