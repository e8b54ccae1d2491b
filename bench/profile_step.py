"""Where the time goes: `torch.profiler` tables of our model and HF's, same sizes, same batch (bench/speed.py's).

    python bench/profile_step.py                      # enc-dec d512 6+6 training step vs MarianMTModel
    python bench/profile_step.py --what gpt           # GPT d384 training step vs GPT2LMHeadModel
    python bench/profile_step.py --what beam          # beam-4 decode (d256) vs MarianMTModel

Prints, for each model, the operators with the most self time over --steps steps (after 2 warm-up steps), and
the share of all self time spent in matrix multiplications (aten::mm, addmm, bmm): what no implementation of the
same architecture can avoid.
"""

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def workload(what: str, model):
    if what == "beam":
        model.eval()
        source = torch.randint(3, speed.VOCAB, (16, 24), generator=torch.Generator().manual_seed(1))

        def run():
            with torch.inference_mode():
                model.generate(source, num_beams=4, max_new_tokens=24, min_new_tokens=24, length_penalty=0.6)

        return run
    model.train()
    batch = speed.gpt_batch() if what == "gpt" else speed.seq2seq_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--what", choices=["seq2seq", "gpt", "beam"], default="seq2seq")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    pair = {
        "gpt": speed.gpt_pair,
        "beam": lambda: speed.seq2seq_pair(256, 3),
        "seq2seq": lambda: speed.seq2seq_pair(512, 6),
    }
    pair = pair[args.what]()
    for name, model in zip(("ours", "HF"), pair):
        run = workload(args.what, model)
        for _ in range(2):
            run()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                run()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMULS)
        print(f"===== {name}: {type(model).__name__}, {total / 1e6 / args.steps:.3f} s of self CPU time per step, "
              f"{100 * matmul / total:.0f}% in matrix multiplications")  # fmt: skip
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
