"""Our Shakespeare recipe against nanoGPT's training procedure, both run here, one after the other, per seed.

    python bench/lm_vs_nanogpt_procedure.py [--seeds 1337 1 2]

nanoGPT itself cannot be run here (it is not on PyPI, there is no internet, and its code may not be copied into
this repository), so the reference is a plain PyTorch script written for this benchmark from nanoGPT's published
description of its CPU run: its model (pre-LN GPT, learned positions, tied embedding, GELU, no biases, N(0, 0.02)
initialisation with the residual projections scaled by 1/sqrt(2 n_layer)) and its loop (a random 65-token window
per example drawn with `torch.randint`, AdamW on the 2-D weights only, linear warm-up then cosine decay, clipping,
an estimate of train and validation loss from 20 batches every 250 steps, the loss read every step), with the CPU
command's settings. Each side is a fresh Python process, timed from start to exit like `time python train.py`.

Both are scored on the whole validation split (the last 10% of Tiny Shakespeare, every token after the first
predicted once); the reference's own 20-batch estimate, what nanoGPT prints, is shown too.
"""

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "hf_vanilla_transformer" / "data" / "tinyshakespeare.txt"

# nanoGPT's CPU command: --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
# --lr_decay_iters=2000 --dropout=0.0 --eval_iters=20 --log_interval=1; config/train_shakespeare_char.py: lr 1e-3,
# min_lr 1e-4, warmup 100, beta2 0.99, eval_interval 250; train.py: weight decay 0.1, clip 1.0, bias False.
REFERENCE = """
import math, sys, time
import torch
import torch.nn.functional as F
from torch import nn

BLOCK, BATCH, LAYERS, HEADS, WIDTH, STEPS = 64, 12, 4, 4, 128, 2000
LR, MIN_LR, WARMUP, EVAL_INTERVAL, EVAL_ITERS = 1e-3, 1e-4, 100, 250, 20
torch.manual_seed(int(sys.argv[2]))
text = open(sys.argv[1], encoding="utf-8").read()
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
data = torch.tensor([stoi[c] for c in text])
cut = int(0.9 * len(data))
splits = {"train": data[:cut], "val": data[cut:]}


def batch(split):
    stream = splits[split]
    starts = torch.randint(len(stream) - BLOCK, (BATCH,))
    x = torch.stack([stream[i : i + BLOCK] for i in starts])
    y = torch.stack([stream[i + 1 : i + 1 + BLOCK] for i in starts])
    return x, y


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(WIDTH, bias=False), nn.LayerNorm(WIDTH, bias=False)
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH, bias=False), nn.Linear(WIDTH, WIDTH, bias=False)
        self.up, self.down = nn.Linear(WIDTH, 4 * WIDTH, bias=False), nn.Linear(4 * WIDTH, WIDTH, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, HEADS, C // HEADS).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.down(F.gelu(self.up(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, WIDTH), nn.Embedding(BLOCK, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(WIDTH, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                scaled = name.endswith(("proj.weight", "down.weight"))
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * LAYERS) if scaled else 0.02)

    def forward(self, x, y):
        h = self.tokens(x) + self.positions(torch.arange(x.shape[1]))
        for block in self.blocks:
            h = block(h)
        logits = self.ln_f(h) @ self.tokens.weight.T
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def lr_at(step):
    if step < WARMUP:
        return LR * (step + 1) / (WARMUP + 1)
    ratio = (step - WARMUP) / (STEPS - WARMUP)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


@torch.no_grad()
def estimate():
    model.eval()
    out = {s: torch.stack([model(*batch(s)) for _ in range(EVAL_ITERS)]).mean().item() for s in ("train", "val")}
    model.train()
    return out


model = GPT(len(chars))
decay = [p for p in model.parameters() if p.dim() >= 2]
rest = [p for p in model.parameters() if p.dim() < 2]
optimizer = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=LR, betas=(0.9, 0.99)
)
for step in range(STEPS + 1):
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step)
    if step % EVAL_INTERVAL == 0:
        losses = estimate()
        print(f"step {step}: train {losses['train']:.4f}, val {losses['val']:.4f}", flush=True)
    if step == STEPS:
        break
    loss = model(*batch("train"))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    loss.item()  # nanoGPT reads the loss every step (log_interval=1)

# Scored like ours: the whole validation split in disjoint windows, every token after the first predicted once.
model.eval()
stream, total, count = splits["val"], 0.0, 0
starts = list(range(0, len(stream) - BLOCK, BLOCK))
with torch.no_grad():
    for i in range(0, len(starts), 128):
        chunk = starts[i : i + 128]
        x = torch.stack([stream[s : s + BLOCK] for s in chunk])
        y = torch.stack([stream[s + 1 : s + 1 + BLOCK] for s in chunk])
        total += model(x, y).item() * x.numel()
        count += x.numel()
print(f"FULL_VAL {total / count:.4f} ESTIMATE {losses['val']:.4f}")
"""


def run_reference(seed: int, workdir: Path) -> dict:
    script = workdir / "reference_train.py"
    script.write_text(REFERENCE)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(script), str(CORPUS), str(seed)], capture_output=True, text=True, check=True
    ).stdout
    wall = time.perf_counter() - start
    last = out.strip().splitlines()[-1].split()
    return {"wall_s": wall, "val_loss": float(last[1]), "estimate": float(last[3])}


def run_ours(seed: int, workdir: Path) -> dict:
    output_dir = workdir / f"ours_{seed}"
    command = [
        sys.executable,
        str(REPO / "training" / "train_lm.py"),
        str(REPO / "training/configs/shakespeare_char.yaml"),
    ]
    command += ["--seed", str(seed), "--output_dir", str(output_dir), "--disable_tqdm", "true"]
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    results = json.loads((output_dir / "all_results.json").read_text())
    return {"wall_s": wall, "val_loss": results["eval_loss"], "train_s": results["train_runtime"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            reference, ours = run_reference(seed, Path(tmp)), run_ours(seed, Path(tmp))
            rows.append((seed, reference, ours))
            print(
                f"seed {seed:>5}: nanoGPT procedure {reference['wall_s']:6.1f} s, val {reference['val_loss']:.4f} "
                f"(its 20-batch estimate {reference['estimate']:.4f}) | ours {ours['wall_s']:6.1f} s, "
                f"val {ours['val_loss']:.4f} | time ratio {ours['wall_s'] / reference['wall_s']:.2f}",
                flush=True,
            )
    mean = {side: statistics.mean(r[i]["val_loss"] for r in rows) for i, side in ((1, "reference"), (2, "ours"))}
    walls = {side: statistics.median(r[i]["wall_s"] for r in rows) for i, side in ((1, "reference"), (2, "ours"))}
    print(
        f"median wall: ours {walls['ours']:.1f} s / reference {walls['reference']:.1f} s = "
        f"{walls['ours'] / walls['reference']:.2f}; mean validation loss: ours {mean['ours']:.4f}, "
        f"reference {mean['reference']:.4f}; perplexity {math.exp(mean['ours']):.2f} vs {math.exp(mean['reference']):.2f}"
    )


if __name__ == "__main__":
    main()
