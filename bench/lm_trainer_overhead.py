"""Milliseconds per training step of the Tiny Shakespeare CPU model: `transformers.Trainer` against a plain
PyTorch loop doing the same work (same model, blocks, batch size, AdamW, clipping, schedule), back to back; and
the plain loop with an independent model of the same shape built from `torch.nn.TransformerEncoderLayer`.

    OMP_NUM_THREADS=1 python bench/lm_trainer_overhead.py [--steps 200]

The difference is what the Trainer costs per step; the rest is the model's forward and backward, which the
torch reference shows to be the cost of this shape, not of our implementation.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import Trainer, TrainingArguments, get_scheduler  # noqa: E402

from hf_vanilla_transformer import VanillaGPTForCausalLM  # noqa: E402
from training.lm_data import CausalLMBlockCollator, group_into_blocks, load_text_splits, train_char_tokenizer  # noqa: E402
from training.train_lm import ModelArguments, build_config  # noqa: E402

BATCH, BLOCK, LR, MIN_LR, WARMUP = 12, 64, 1e-3, 1e-4, 100  # training/configs/shakespeare_char.yaml


class TorchReferenceGPT(torch.nn.Module):
    """The same shape from torch's own layers: pre-LN, GELU, causal mask, learned positions, tied output."""

    def __init__(self, config):
        super().__init__()
        self.embed = torch.nn.Embedding(config.vocab_size, config.d_model)
        self.positions = torch.nn.Embedding(config.max_position_embeddings, config.d_model)
        layer = torch.nn.TransformerEncoderLayer(
            config.d_model, config.num_heads, config.ffn_dim, dropout=0.0, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.layers = torch.nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(config.d_model)

    def forward(self, input_ids, labels):
        T = input_ids.shape[1]
        x = self.embed(input_ids) + self.positions(torch.arange(T))  # (B, T, C)
        mask = torch.nn.Transformer.generate_square_subsequent_mask(T)
        x = self.norm(self.layers(x, mask=mask, is_causal=True))
        logits = x @ self.embed.weight.T  # (B, T, vocab)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return type("Output", (), {"loss": loss})


def plain_loop(model, blocks, steps: int) -> float:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]  # no decay on biases and LayerNorm gains
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=(0.9, 0.99)
    )
    scheduler = get_scheduler(
        "cosine_with_min_lr", optimizer, WARMUP, steps, scheduler_specific_kwargs={"min_lr": MIN_LR}
    )
    loader = torch.utils.data.DataLoader(blocks, batch_size=BATCH, shuffle=True, collate_fn=CausalLMBlockCollator())
    model.train()
    start = time.perf_counter()
    for _, batch in zip(range(steps), loader):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def trainer_loop(model, blocks, tokenizer, steps: int) -> float:
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            max_steps=steps,
            per_device_train_batch_size=BATCH,
            learning_rate=LR,
            lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr": MIN_LR},
            warmup_steps=WARMUP,
            adam_beta2=0.99,
            weight_decay=0.1,
            max_grad_norm=1.0,
            eval_strategy="no",
            save_strategy="no",
            logging_steps=50,
            disable_tqdm=True,
            dataloader_pin_memory=False,
            report_to="none",
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=blocks,
            data_collator=CausalLMBlockCollator(),
            processing_class=tokenizer,
        )
        start = time.perf_counter()
        trainer.train()
        return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    splits = load_text_splits(None, None)
    tokenizer = train_char_tokenizer(splits["train"]["text"])
    blocks = group_into_blocks(splits, tokenizer, BLOCK)["train"]
    model_args = ModelArguments(d_model=128, num_heads=4, num_layers=4, ffn_dim=512, dropout=0.0)
    config = build_config(model_args, tokenizer, BLOCK)
    results = {}
    # The load of a shared machine drifts: plain loop measured twice, around the Trainer.
    for name in ("plain", "trainer", "torch reference", "plain again"):
        torch.manual_seed(0)
        if name == "trainer":
            seconds = trainer_loop(VanillaGPTForCausalLM(config), blocks, tokenizer, args.steps)
        else:
            model = TorchReferenceGPT(config) if name == "torch reference" else VanillaGPTForCausalLM(config)
            seconds = plain_loop(model, blocks, args.steps)
        results[name] = seconds
        print(f"{name:16s} {seconds * 1000:6.1f} ms/step ({torch.get_num_threads()} threads)", flush=True)
    plain = (results["plain"] + results["plain again"]) / 2
    print(
        f"Trainer overhead: {(results['trainer'] - plain) * 1000:+.1f} ms/step ({results['trainer'] / plain - 1:+.0%})"
    )


if __name__ == "__main__":
    main()
