"""The GPU figures of issue 7: bf16 autocast, flash SDPA, `torch.compile` of the training step, and the model FLOPs
utilisation (MFU) of the gpt2 preset; each against HF's model of the same size, in one process, taking turns.

    python bench/gpu.py                                  # on a CUDA machine (not yet run on one)
    python bench/gpu.py --device cpu --small --compile_backend aot_eager   # the same code at toy sizes

Rows (ours / HF, lower is better), each the median of --steps steps after --warmup steps:
  - GPT, the `gpt2` preset (d768, 12 layers, 12 heads, vocab 50257, 1024 tokens, dropout 0.1), --batch x 1024
    tokens, AdamW, vs `GPT2LMHeadModel`: float32 eager, bf16 autocast eager, bf16 autocast compiled. Ours is
    compiled with `fullgraph=True`, so a graph break is an error, not a silent slowdown.
  - encoder-decoder, the paper's `base` preset (d512, 6+6, vocab 37000), 128 x (64 + 64) tokens, vs
    `MarianMTModel`: bf16 autocast eager and compiled.
  - memory: peak CUDA memory of a training step above the resident model (activations, gradients, AdamW state).
  - which SDPA kernel a bf16 GPT forward runs (from the profiler), and whether it runs on the flash kernel alone.
MFU = (6 N + 12 L T d) tokens / (step time x peak bf16 FLOP/s) (PaLM, appendix B; nanoGPT's estimate), N the
parameters used in matrix products (all but the position table; the tied embedding once, as the output layer).
"""

import argparse
import platform
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import GPT2Config, GPT2LMHeadModel, MarianConfig, MarianMTModel

from hf_vanilla_transformer import (
    VanillaGPTConfig,
    VanillaGPTForCausalLM,
    VanillaTransformerConfig,
    VanillaTransformerForConditionalGeneration,
)

# Dense bf16 peak of the cards the `device` tool lends, from NVIDIA's data sheets (without sparsity).
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def gpt_pair(small: bool):
    sizes = dict(d_model=64, num_heads=2, ffn_dim=256, num_layers=2, vocab_size=512, max_position_embeddings=128,
                 bos_token_id=0, eos_token_id=0)  # fmt: skip
    ours = VanillaGPTForCausalLM(VanillaGPTConfig.from_preset("gpt2", **(sizes if small else {})))
    c = ours.config
    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=c.vocab_size, n_embd=c.d_model, n_layer=c.num_layers, n_head=c.num_heads, n_inner=c.ffn_dim,
            n_positions=c.max_position_embeddings, resid_pdrop=c.dropout, embd_pdrop=c.dropout,
            attn_pdrop=c.attention_dropout, attn_implementation="sdpa",
        )
    )  # fmt: skip
    return ours, hf


def seq2seq_pair(small: bool):
    sizes = dict(d_model=64, num_heads=2, ffn_dim=256, num_encoder_layers=2, num_decoder_layers=2, vocab_size=512)
    ours = VanillaTransformerForConditionalGeneration(
        VanillaTransformerConfig.from_preset("base", **(sizes if small else {}))
    )
    c = ours.config
    hf = MarianMTModel(
        MarianConfig(
            vocab_size=c.vocab_size, d_model=c.d_model, encoder_attention_heads=c.num_heads,
            decoder_attention_heads=c.num_heads, encoder_ffn_dim=c.ffn_dim, decoder_ffn_dim=c.ffn_dim,
            encoder_layers=c.num_encoder_layers, decoder_layers=c.num_decoder_layers, dropout=c.dropout,
            attention_dropout=0.0, activation_dropout=0.0, activation_function="relu", scale_embedding=True,
            pad_token_id=0, eos_token_id=2, decoder_start_token_id=1, forced_eos_token_id=None,
            max_position_embeddings=c.max_position_embeddings, attn_implementation="sdpa",
        )
    )  # fmt: skip
    return ours, hf


def matmul_params(model) -> int:
    """Parameters used in matrix products per token: all but position tables (a lookup, no FLOPs)."""
    positions = sum(p.numel() for n, p in model.named_parameters() if "position" in n or n.endswith("wpe.weight"))
    return model.num_parameters() - positions


class Step:
    """One training step of one model (forward under optional bf16 autocast, backward, AdamW), timed on the device."""

    def __init__(self, model, batch, device, bf16: bool, compile_backend: str | None, fullgraph: bool):
        self.model = model.to(device).train()
        self.batch = {k: v.to(device) for k, v in batch.items()}
        self.device, self.bf16 = device, bf16
        fused = device.type == "cuda"
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
        self.forward = torch.compile(model, backend=compile_backend, fullgraph=fullgraph) if compile_backend else model

    def __call__(self) -> float:
        sync(self.device)
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.forward(**self.batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync(self.device)
        return time.perf_counter() - start


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def in_turns(steps, n: int, warmup: int) -> list[float]:
    """Median seconds per step of each `Step`, taking turns step by step so that drift slows all alike."""
    for _ in range(warmup):
        for step in steps:
            step()
    times = [[] for _ in steps]
    for _ in range(n):
        for step, record in zip(steps, times):
            record.append(step())
    return [statistics.median(record) for record in times]


def step_memory_mib(step: "Step", device) -> float | None:
    """Peak CUDA memory of two training steps above what was allocated before them."""
    if device.type != "cuda":
        return None
    step.optimizer.state.clear()
    step.model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    step()
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def attention_kernels(model, ids, device) -> str:
    """Names of the SDPA kernels a bf16 forward runs, and whether the flash kernel alone can run it."""
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        with torch.profiler.profile() as prof:
            model(ids)
        names = sorted({e.key for e in prof.key_averages() if "scaled_dot_product" in e.key or "flash" in e.key})
        try:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                model(ids)
            flash_alone = "runs on the flash kernel alone"
        except RuntimeError as error:
            flash_alone = f"NOT on the flash kernel alone: {str(error).splitlines()[0]}"
    model.train()
    return f"{', '.join(names)}; {flash_alone}"


def row(name, ours, hf, unit, extra=""):
    print(f"{name:<46} ours {ours:10.4f} {unit:<4} HF {hf:10.4f} {unit:<4} ratio {ours / hf:5.2f}  {extra}", flush=True)


def compare_modes(title, pair, batch, device, args, modes, describe):
    """One row per (label, bf16, compile backend) mode: the training steps of ours and HF's model in turns, then
    `describe(t_ours, t_hf)`; after the "bf16 eager" row, the CUDA memory of a step. Ours compiles with fullgraph."""
    for label, bf16, backend in modes:
        torch._dynamo.reset()
        steps = [Step(m, batch, device, bf16, backend, fullgraph=m is pair[0]) for m in pair]
        t_ours, t_hf = in_turns(steps, args.steps, args.warmup)
        row(f"{title} step, {label}", t_ours, t_hf, "s", describe(t_ours, t_hf))
        if label == "bf16 eager":
            memory = [step_memory_mib(step, device) for step in steps]
            if memory[0] is not None:
                row(f"{title} step memory above the model, bf16", memory[0], memory[1], "MiB")
        del steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="toy sizes, to check the script runs")
    parser.add_argument("--batch", type=int, default=16, help="GPT sequences of 1024 tokens per step")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile_backend", default="inductor")
    parser.add_argument("--peak_tflops", type=float, help="the card's dense bf16 peak, if not in the table")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("No CUDA device here: run on a GPU machine, or pass --device cpu --small to try the script.")
    torch.manual_seed(0)
    peak = peak_tflops(device, args.peak_tflops)

    # --- GPT, gpt2 preset
    ours, hf = gpt_pair(args.small)
    seq = ours.config.max_position_embeddings
    batch_size = 2 if args.small else args.batch
    ids = torch.randint(0, ours.config.vocab_size, (batch_size, seq), generator=torch.Generator().manual_seed(0))
    batch = dict(input_ids=ids, labels=ids)
    tokens = ids.numel()
    c = ours.config
    flops_per_step = (6 * matmul_params(ours) + 12 * c.num_layers * seq * c.d_model) * tokens
    print(f"GPT: {matmul_params(ours) / 1e6:.1f}M matrix parameters, {tokens} tokens a step, "
          f"{flops_per_step / 1e12:.2f} TFLOP a step; peak {peak or 'unknown'} TFLOP/s")  # fmt: skip
    mfu = (lambda t: f"{100 * flops_per_step / t / (peak * 1e12):.1f}%") if peak else (lambda t: "n/a")
    compare_modes(
        "GPT gpt2", (ours, hf), batch, device, args,
        (("fp32 eager", False, None), ("bf16 eager", True, None), ("bf16 compiled", True, args.compile_backend)),
        lambda t_ours, t_hf: f"tokens/s ours {tokens / t_ours:,.0f} HF {tokens / t_hf:,.0f}; "
                             f"MFU ours {mfu(t_ours)} HF {mfu(t_hf)}",
    )  # fmt: skip
    print("GPT attention kernels (ours, bf16 forward):", attention_kernels(ours.to(device), ids[:2].to(device), device))
    print("GPT attention kernels (HF, bf16 forward):  ", attention_kernels(hf.to(device), ids[:2].to(device), device))
    del ours, hf

    # --- encoder-decoder, base preset
    ours, hf = seq2seq_pair(args.small)
    rows, length = (4, 16) if args.small else (128, 64)
    g = torch.Generator().manual_seed(1)
    vocab = ours.config.vocab_size
    batch = dict(
        input_ids=torch.randint(3, vocab, (rows, length), generator=g),
        labels=torch.randint(3, vocab, (rows, length), generator=g),
    )
    compare_modes(
        "enc-dec base", (ours, hf), batch, device, args,
        (("bf16 eager", True, None), ("bf16 compiled", True, args.compile_backend)),
        lambda t_ours, t_hf: f"target tokens/s ours {rows * length / t_ours:,.0f} HF {rows * length / t_hf:,.0f}",
    )  # fmt: skip

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\ndevice: {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


if __name__ == "__main__":
    main()
