"""Speed and memory of our models against HF's own models of the same sizes, measured in the same run.

    python bench/speed.py                 # everything, median of --repeats runs each
    python bench/speed.py --only gpt      # one group: gpt, seq2seq, decode, memory

Prints one table of ratios ours / HF (lower is better). Not a test: timings on a shared machine are noisy.
"""

import argparse
import json
import platform
import statistics
import time

import torch
from timing import in_fresh_process, process_memory_mib
from transformers import GPT2Config, GPT2LMHeadModel, MarianConfig, MarianMTModel

from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration

VOCAB = 8000


def gpt_pair(dropout=0.1):
    from hf_vanilla_transformer import VanillaGPTConfig, VanillaGPTForCausalLM

    ours = VanillaGPTForCausalLM(
        VanillaGPTConfig.from_preset(
            "gpt2", vocab_size=VOCAB, d_model=384, num_layers=6, num_heads=6, ffn_dim=1536,
            max_position_embeddings=256, dropout=dropout, attention_dropout=0.0, bos_token_id=0, eos_token_id=0,
        )
    )  # fmt: skip
    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=VOCAB, n_embd=384, n_layer=6, n_head=6, n_positions=256,
            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=0.0,
        )
    )  # fmt: skip
    return ours, hf


def seq2seq_pair(d_model, layers, dropout=0.1):
    ffn = 4 * d_model
    ours = VanillaTransformerForConditionalGeneration(
        VanillaTransformerConfig(
            vocab_size=VOCAB, d_model=d_model, num_heads=8, ffn_dim=ffn, num_encoder_layers=layers,
            num_decoder_layers=layers, dropout=dropout,
        )
    )  # fmt: skip
    hf = MarianMTModel(
        MarianConfig(
            vocab_size=VOCAB, d_model=d_model, encoder_attention_heads=8, decoder_attention_heads=8,
            encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, encoder_layers=layers, decoder_layers=layers,
            dropout=dropout, attention_dropout=0.0, activation_dropout=0.0, activation_function="relu",
            scale_embedding=True, pad_token_id=0, eos_token_id=2, decoder_start_token_id=1, forced_eos_token_id=None,
            max_position_embeddings=512,
        )
    )  # fmt: skip
    return ours, hf


def gpt_batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (8, 256), generator=g)
    return dict(input_ids=ids, labels=ids)


def seq2seq_batch():
    g = torch.Generator().manual_seed(0)
    return dict(
        input_ids=torch.randint(3, VOCAB, (32, 24), generator=g), labels=torch.randint(3, VOCAB, (32, 24), generator=g)
    )


def train_step_seconds(models, batch, steps, warmup=2):
    """Median seconds of a training step (forward, backward, AdamW) of each model, the models taking turns step by
    step, so that a machine whose speed drifts (shared cores, turbo) slows both alike."""
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in models]
    times = [[] for _ in models]
    for model in models:
        model.train()
    for i in range(warmup + steps):
        for model, optimizer, record in zip(models, optimizers, times):
            start = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= warmup:
                record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def beam_decode_seconds(models, repeats, sentences=16):
    """Median seconds of a beam-4 decode of `sentences` sentences by each model, the models taking turns."""
    g = torch.Generator().manual_seed(1)
    source = torch.randint(3, VOCAB, (sentences, 24), generator=g)
    kwargs = dict(num_beams=4, max_new_tokens=24, min_new_tokens=24, length_penalty=0.6, do_sample=False)
    times = [[] for _ in models]
    with torch.inference_mode():
        for model in models:
            model.eval()
            model.generate(source, **kwargs)  # warm-up
        for _ in range(repeats):
            for model, record in zip(models, times):
                start = time.perf_counter()
                model.generate(source, **kwargs)
                record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def greedy_per_token_ms(model, new_tokens):
    """Milliseconds per generated token for the first and the last quarter of a long greedy decode of 4 rows (the
    source sentences of a translation model, the prompts of a language model)."""
    model.eval()
    source = torch.randint(3, VOCAB, (4, 24), generator=torch.Generator().manual_seed(2))
    stamps = []

    class Clock:
        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    from transformers import StoppingCriteriaList

    with torch.inference_mode():
        model.generate(
            source, num_beams=1, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            stopping_criteria=StoppingCriteriaList([Clock()]), pad_token_id=0,
        )  # fmt: skip
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    quarter = len(gaps) // 4
    return 1000 * statistics.median(gaps[:quarter]), 1000 * statistics.median(gaps[-quarter:])


def peak_memory_child(kind, which):
    """Run in a child process: its peak RSS (MiB) after building the model and a few training steps."""
    pair = gpt_pair() if kind == "gpt" else seq2seq_pair(512, 6)
    model = pair[0] if which == "ours" else pair[1]
    batch = gpt_batch() if kind == "gpt" else seq2seq_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(3):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return process_memory_mib("VmHWM")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["gpt", "seq2seq", "decode", "memory"], action="append")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    groups = args.only or ["gpt", "seq2seq", "decode", "memory"]
    torch.manual_seed(0)
    rows = []

    def row(name, ours, hf, unit):
        rows.append(dict(benchmark=name, ours=ours, hf=hf, unit=unit, ratio=ours / hf))
        print(f"{name:<52} ours {ours:9.3f} {unit:<4} HF {hf:9.3f} {unit:<4} ratio {ours / hf:5.2f}", flush=True)

    if "gpt" in groups:
        ours, hf = gpt_pair()
        batch = gpt_batch()
        row("GPT train step d384 L6 H6 V8000, 8x256 vs GPT2LMHeadModel", *train_step_seconds(
            (ours, hf), batch, args.repeats), "s")  # fmt: skip
    if "seq2seq" in groups:
        for d_model, layers in ((256, 3), (512, 6)):
            ours, hf = seq2seq_pair(d_model, layers)
            batch = seq2seq_batch()
            row(f"enc-dec train step d{d_model} {layers}+{layers}, 32x(24+24) vs Marian", *train_step_seconds(
                (ours, hf), batch, args.repeats), "s")  # fmt: skip
    if "decode" in groups:
        ours, hf = seq2seq_pair(256, 3)
        row("beam-4 decode 16 sent x 24 tokens d256 vs Marian", *beam_decode_seconds((ours, hf), args.repeats), "s")
        # Taking turns, one 200-token decode each, `repeats` times: a decode step is ~6 ms, so the machine's drift
        # between decodes is as large as the difference being measured.
        runs = [[greedy_per_token_ms(m, 200) for m in (ours, hf)] for _ in range(args.repeats)]
        (ours_first, ours_last), (hf_first, hf_last) = (
            tuple(statistics.median(run[i][j] for run in runs) for j in (0, 1)) for i in (0, 1)
        )
        row("greedy ms/token, tokens 150-200 (d256) vs Marian", ours_last, hf_last, "ms")
        print(f"  greedy ms/token first quarter -> last quarter: ours {ours_first:.2f} -> {ours_last:.2f}, "
              f"Marian {hf_first:.2f} -> {hf_last:.2f}")  # fmt: skip
        # The usual call of a translation service: one sentence, beam 4 (4 rows a step).
        row("beam-4 decode 1 sent x 24 tokens d256 vs Marian", *beam_decode_seconds((ours, hf), args.repeats, 1), "s")
        ours, hf = gpt_pair(dropout=0.0)
        runs = [[greedy_per_token_ms(m, 200) for m in (ours, hf)] for _ in range(args.repeats)]
        ours_last, hf_last = (statistics.median(run[i][1] for run in runs) for i in (0, 1))
        row("GPT greedy ms/token, tokens 150-200 (d384 L6) vs GPT2", ours_last, hf_last, "ms")
    if "memory" in groups:
        for kind, name in (("gpt", "GPT d384 (8x256)"), ("seq2seq", "enc-dec d512 6+6 (32x24)")):
            row(f"peak RSS of a training process, {name}", *(
                in_fresh_process("speed", "peak_memory_child", kind, w) for w in ("ours", "hf")), "MiB")  # fmt: skip

    print(f"\nmachine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
