"""Train a GPT-style language model (VanillaGPTForCausalLM) and write a Hub-ready folder.

    python training/train_lm.py training/configs/shakespeare_char.yaml [--field value ...]
    python -m training.train_lm training/configs/shakespeare_char.yaml --max_steps 20 --output_dir runs/try

Text -> tokenizer (characters or byte-level BPE, trained on the training text) -> windows of `block_size`
tokens, each position predicting the next token (disjoint, or one at every token: nanoGPT's sampling) ->
`transformers.Trainer` (AdamW, warm-up + cosine decay to a minimum, weight decay, gradient clipping) -> eval loss
and perplexity over the whole validation split -> `output_dir` holding the model with its remote code, the
tokenizer, a loss-curve PNG and a README.md model card.
"""

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as `python training/train_lm.py` from a checkout: make `training` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from transformers import AutoTokenizer, Trainer, TrainingArguments, set_seed

from hf_vanilla_transformer import VanillaGPTConfig, VanillaGPTForCausalLM
from training.cli import UserError, parse_recipe, resolve_resume_checkpoint, run_main
from training.lm_data import (
    CausalLMBlockCollator,
    NextTokenWindows,
    check_window_stride,
    group_into_blocks,
    load_text_splits,
    train_tokenizer,
)
from training.publish import plot_training_curves, recipe_as_yaml, write_model_card


@dataclass
class ModelArguments:
    """A `VanillaGPTConfig` preset; every field left unset keeps the preset's value."""

    preset: str = field(default="shakespeare-char", metadata={"help": "gpt1, gpt2, shakespeare-char or tiny"})
    d_model: int | None = field(default=None, metadata={"help": "model width"})
    num_heads: int | None = field(default=None, metadata={"help": "attention heads"})
    num_layers: int | None = field(default=None, metadata={"help": "transformer blocks"})
    ffn_dim: int | None = field(default=None, metadata={"help": "feed-forward width; default 4 * d_model if set"})
    max_position_embeddings: int | None = field(default=None, metadata={"help": "context; default block_size"})
    dropout: float | None = field(default=None, metadata={"help": "residual/embedding dropout"})
    attention_dropout: float | None = field(default=None, metadata={"help": "default: dropout, if that is set"})
    activation: str | None = field(default=None, metadata={"help": "gelu, relu or swiglu"})
    norm_position: str | None = field(default=None, metadata={"help": "pre (GPT-2) or post (GPT-1)"})
    position_embedding: str | None = field(default=None, metadata={"help": "learned or sinusoidal"})
    tie_word_embeddings: bool | None = field(default=None, metadata={"help": "lm_head = token embedding"})


@dataclass
class DataArguments:
    """Where the text comes from and how it becomes blocks of token ids."""

    dataset_name: str | None = field(default=None, metadata={"help": "datasets.load_dataset name (needs the Hub)"})
    dataset_config_name: str | None = field(default=None, metadata={"help": "its configuration name"})
    text_column: str = field(default="text", metadata={"help": "the dataset's text column"})
    train_file: str | None = field(
        default=None, metadata={"help": "UTF-8 text file; default: the built-in Tiny Shakespeare"}
    )
    validation_file: str | None = field(default=None, metadata={"help": "default: hold out the training tail"})
    validation_percentage: float = field(default=10.0, metadata={"help": "held-out tail in %; nanoGPT's 90/10"})
    block_size: int = field(default=64, metadata={"help": "tokens per training example (nanoGPT's block_size)"})
    window_stride: int | None = field(
        default=None,
        metadata={
            "help": "tokens between the starts of training examples: block_size (default) cuts disjoint blocks, "
            "every token predicted once an epoch; 1 puts a window at every token, shuffled: nanoGPT's random batches"
        },
    )
    tokenizer: str = field(default="char", metadata={"help": "char (one token per character) or bpe (byte-level)"})
    bpe_vocab_size: int = field(default=8192, metadata={"help": "vocabulary size of the BPE tokenizer"})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "processes for tokenizing"})
    sample_prompt: str = field(default="\n", metadata={"help": "prompt of the generated sample (nanoGPT: newline)"})
    sample_tokens: int = field(default=300, metadata={"help": "tokens in the generated sample"})
    hub_repo_name: str | None = field(default=None, metadata={"help": "repo id shown in the card's usage code"})


def check_arguments(model_args, data_args, training_args) -> str | bool | None:
    """One-line errors for settings that would fail late; returns what to pass as `resume_from_checkpoint`."""
    if training_args.max_steps == 0 or training_args.max_steps < -1:
        raise UserError(f"max_steps must be positive (or -1 for num_train_epochs), got {training_args.max_steps}")
    if data_args.block_size < 2:
        raise UserError(f"block_size must be at least 2 (one input and one next token), got {data_args.block_size}")
    check_window_stride(data_args.window_stride, data_args.block_size)  # before any file is written
    if data_args.dataset_name is not None and data_args.train_file is not None:
        raise UserError("give either --dataset_name or --train_file, not both")
    if data_args.tokenizer not in ("char", "bpe"):
        raise UserError(f"tokenizer must be 'char' or 'bpe', got {data_args.tokenizer!r}")
    if model_args.preset not in VanillaGPTConfig.PRESETS:
        raise UserError(f"unknown preset {model_args.preset!r}; expected one of {', '.join(VanillaGPTConfig.PRESETS)}")
    build_config(model_args, None, data_args.block_size)  # impossible sizes fail now, before any file is written
    return resolve_resume_checkpoint(training_args.output_dir, training_args.resume_from_checkpoint)


def build_config(model_args: ModelArguments, tokenizer, block_size: int) -> VanillaGPTConfig:
    """The model's config; with `tokenizer=None` (a check before the tokenizer exists) the preset's vocabulary."""
    overrides = {
        name: value
        for name, value in vars(model_args).items()
        if name != "preset" and value is not None and name in VanillaGPTConfig.__dataclass_fields__
    }
    if model_args.d_model is not None and model_args.ffn_dim is None:
        overrides["ffn_dim"] = 4 * model_args.d_model  # GPT's inner width (GPT-1 §4.1: 3072 = 4 * 768)
    if model_args.dropout is not None and model_args.attention_dropout is None:
        overrides["attention_dropout"] = model_args.dropout  # nanoGPT: one dropout rate everywhere
    overrides.setdefault("max_position_embeddings", block_size)  # nanoGPT: the context is the block size
    if tokenizer is not None:
        overrides.update(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    try:
        config = VanillaGPTConfig.from_preset(model_args.preset, **overrides)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc).strip().splitlines()[0]) from None
    if block_size > config.max_position_embeddings:
        raise UserError(
            f"block_size={block_size} exceeds max_position_embeddings={config.max_position_embeddings} of the model"
        )
    return config


def generate_sample(model, tokenizer, prompt: str, max_new_tokens: int, seed: int) -> str:
    """Sample `max_new_tokens` tokens after `prompt`, nanoGPT-style (temperature 0.8, top-k 200), sliding the
    context window so the text may be longer than the model's `max_position_embeddings`."""
    context = model.config.max_position_embeddings
    chunk = max(1, context // 4)  # new tokens per `generate` call; the other 3/4 of the window is context
    ids = tokenizer(prompt, return_tensors="pt").input_ids  # (1, T)
    if ids.shape[1] == 0:
        raise UserError(f"sample_prompt {prompt!r} has no token in the vocabulary")
    torch.manual_seed(seed)
    model.eval()
    generated = 0
    while generated < max_new_tokens:
        window = ids[:, -(context - chunk) :]  # (1, <= context - chunk)
        n = min(chunk, max_new_tokens - generated)
        out = model.generate(
            window,
            attention_mask=torch.ones_like(window),
            max_length=window.shape[1] + n,
            do_sample=True,
            temperature=0.8,
            top_k=200,
        )  # (1, len(window) + n)
        ids = torch.cat([ids, out[:, window.shape[1] :]], dim=1)
        generated += n
    return tokenizer.decode(ids[0], skip_special_tokens=True)


def main(argv: list[str]) -> None:
    start = time.perf_counter()
    model_args, data_args, training_args = parse_recipe((ModelArguments, DataArguments, TrainingArguments), argv)
    resume = check_arguments(model_args, data_args, training_args)
    with training_args.main_process_first(local=False, desc="output_dir check"):
        pass  # every process has checked output_dir before the main one writes into it
    set_seed(training_args.seed)
    output_dir = Path(training_args.output_dir)

    # The main process reads the text, trains and saves the tokenizer and cuts the blocks first; the others then
    # load its tokenizer (identical ids everywhere) and reuse the datasets cache where there is one (Hub datasets).
    with training_args.main_process_first(local=False, desc="text, tokenizer and blocks"):
        splits = load_text_splits(
            data_args.train_file,
            data_args.validation_file,
            data_args.dataset_name,
            data_args.dataset_config_name,
            data_args.text_column,
            data_args.validation_percentage,
        )
        saved = [d for d in (resume, output_dir) if resume is not None and (Path(d) / "tokenizer.json").is_file()]
        if saved:
            tokenizer = AutoTokenizer.from_pretrained(saved[0])  # the run's own vocabulary, not a retrained one
        elif training_args.should_save:
            tokenizer = train_tokenizer(data_args.tokenizer, splits["train"]["text"], data_args.bpe_vocab_size)
            print(f"tokenizer: trained {data_args.tokenizer} ({len(tokenizer)} tokens)")
        else:  # other processes wait above until the main one has saved it
            tokenizer = AutoTokenizer.from_pretrained(output_dir)
        blocks = group_into_blocks(splits, tokenizer, data_args.block_size, data_args.preprocessing_num_workers)
        # Every position of an example predicts its next token; validation: disjoint windows, each token once.
        train_set = NextTokenWindows(blocks["train"], data_args.window_stride, split="train")
        validation_set = NextTokenWindows(blocks["validation"], split="validation")
        if not saved and training_args.should_save:
            tokenizer.save_pretrained(output_dir)  # once the text is known to give blocks: a refused run writes nothing

    config = build_config(model_args, tokenizer, data_args.block_size)
    tokenizer.model_max_length = config.max_position_embeddings
    model = VanillaGPTForCausalLM(config)
    # `generate` / pipeline defaults: nanoGPT's sample.py sampling, at most one context window.
    model.generation_config.update(
        do_sample=True, temperature=0.8, top_k=200, max_length=config.max_position_embeddings
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: {n_params / 1e6:.2f}M parameters, vocab {config.vocab_size}; "
        f"examples of {data_args.block_size} tokens: {len(train_set)} train (window stride {train_set.stride}), "
        f"{len(validation_set)} validation"
    )

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=validation_set,
        data_collator=CausalLMBlockCollator(),
        processing_class=tokenizer,
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_metrics("train", train_result.metrics)

    # Final loss over the whole validation split, unless the last periodic evaluation was at this very step.
    last = trainer.state.log_history[-2] if len(trainer.state.log_history) > 1 else {}
    if last.get("step") == trainer.state.global_step and "eval_loss" in last:
        metrics = {k: v for k, v in last.items() if k.startswith("eval_")}
    else:
        metrics = trainer.evaluate()
    metrics["perplexity"] = math.exp(metrics["eval_loss"])
    trainer.save_metrics("eval", metrics)  # also merged into all_results.json

    # Weights, config with auto_map, remote code, generation config, tokenizer; written by the main process only.
    trainer.save_model(str(output_dir))
    if not trainer.is_world_process_zero():
        return
    curves = plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png", title="loss")
    sample = generate_sample(model, tokenizer, data_args.sample_prompt, data_args.sample_tokens, training_args.seed)
    write_card(
        output_dir, model_args, data_args, training_args, config, n_params, metrics, train_result, curves, sample
    )
    print(f"validation loss {metrics['eval_loss']:.4f} (perplexity {metrics['perplexity']:.2f})")
    print(f"sample:\n{sample}\n")
    print(f"Hub-ready folder: {output_dir.resolve()} ({time.perf_counter() - start:.0f} s in all)")


def write_card(
    output_dir, model_args, data_args, training_args, config, n_params, metrics, train_result, curves, sample
):
    if data_args.dataset_name:
        dataset_name, dataset_type, datasets = data_args.dataset_name, data_args.dataset_name, [data_args.dataset_name]
    elif data_args.train_file is None:
        dataset_name, dataset_type, datasets = "Tiny Shakespeare (built-in copy)", "tiny_shakespeare", None
    else:
        dataset_name, dataset_type, datasets = Path(data_args.train_file).name, "text", None
    repo_id = data_args.hub_repo_name or training_args.hub_model_id or f"your-name/{output_dir.resolve().name}"
    write_model_card(
        output_dir,
        "language_model.md",
        model_name=output_dir.resolve().name,
        task_type="text-generation",
        task_name="Causal language modelling",
        dataset_type=dataset_type,
        dataset_name=dataset_name,
        metric_type="perplexity",
        metric_name="Validation perplexity",
        metric_value=round(metrics["perplexity"], 4),
        language="en",
        pipeline_tag="text-generation",
        datasets=datasets,
        tags=["gpt", "causal-lm", f"{data_args.tokenizer}-tokenizer"],
        repo_id=repo_id,
        data=dataset_name,
        norm_position=config.norm_position,
        tokenizer_kind="characters" if data_args.tokenizer == "char" else "byte-level BPE",
        vocab_size=config.vocab_size,
        n_params=f"{n_params / 1e6:.2f}M",
        d_model=config.d_model,
        num_heads=config.num_heads,
        num_layers=config.num_layers,
        context=config.max_position_embeddings,
        sampling=(
            "a window starting at every token, shuffled: nanoGPT's random batches"
            if data_args.window_stride == 1
            else f"windows starting every {data_args.window_stride or data_args.block_size} tokens"
        ),
        eval_loss=f"{metrics['eval_loss']:.4f}",
        perplexity=f"{metrics['perplexity']:.2f}",
        steps=train_result.global_step,
        train_seconds=f"{train_result.metrics.get('train_runtime', float('nan')):.0f}",
        curves=curves.name if curves else None,
        sample=sample,
        sample_prompt=repr(data_args.sample_prompt),
        recipe=recipe_as_yaml(model_args, data_args, training_args),
    )


if __name__ == "__main__":
    run_main(main)
