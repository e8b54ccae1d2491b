"""Train, average, evaluate and publish a translation Transformer the paper's way (Vaswani et al., 2017, §5-§6).

    python training/train_translation.py training/configs/multi30k_en_de_small.yaml \
        --data_dir ../shared/data/multi30k --output_dir runs/multi30k_en_de_small
    torchrun --nproc_per_node 8 training/train_translation.py training/configs/wmt14_en_de_base.yaml ...

Steps: read parallel data (`--data_dir` files or `--dataset_name`), learn one shared BPE vocabulary (§5.1), train
`VanillaTransformerForConditionalGeneration` with Adam(0.9, 0.98, 1e-9), the Eq. 3 schedule, label smoothing 0.1
and token-budget batches (§5.1-§5.4), average the last checkpoints (§6.1), report sacreBLEU on the test split with
beam 4 and length penalty 0.6 (§6.1), and leave a Hub-ready folder (weights, remote code, tokenizer, model card).
"""

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout: make `training` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.cli import UserError, parse_recipe, resolve_resume_checkpoint, run_main  # noqa: E402

METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "sacrebleu_metric.py"
PIPELINE_FILE = Path(__file__).resolve().parent / "translation_pipeline.py"


@dataclass
class ModelArguments:
    preset: str = field(default="small", metadata={"help": "base / big (paper Table 3), small (2 CPU cores), tiny"})
    # Any of these replaces the preset's value (None = keep the preset's).
    d_model: int | None = field(default=None, metadata={"help": "model width"})
    num_heads: int | None = field(default=None, metadata={"help": "attention heads h"})
    ffn_dim: int | None = field(default=None, metadata={"help": "feed-forward inner width d_ff"})
    num_encoder_layers: int | None = field(default=None, metadata={"help": "encoder layers N"})
    num_decoder_layers: int | None = field(default=None, metadata={"help": "decoder layers N"})
    dropout: float | None = field(default=None, metadata={"help": "P_drop (§5.4): 0.1 base, 0.3 big"})
    attention_dropout: float | None = field(default=None, metadata={"help": "dropout on attention weights"})
    label_smoothing: float = field(default=0.1, metadata={"help": "epsilon_ls (§5.4), applied inside the model"})
    max_position_embeddings: int | None = field(default=None, metadata={"help": "longest sequence the model takes"})
    norm_position: str | None = field(default=None, metadata={"help": "post (paper) or pre"})


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "datasets.load_dataset name (e.g. wmt14)"})
    dataset_config_name: str | None = field(default=None, metadata={"help": "its config (e.g. de-en)"})
    data_dir: str | None = field(default=None, metadata={"help": "folder of aligned {split}.{lang}[.gz] files"})
    source_lang: str = field(default="en", metadata={"help": "source language code"})
    target_lang: str = field(default="de", metadata={"help": "target language code"})
    train_split: str = field(default="train", metadata={"help": "name of the training split"})
    validation_split: str = field(default="validation", metadata={"help": "name of the validation split"})
    test_split: str = field(default="test", metadata={"help": "name of the test split (final BLEU)"})
    max_train_samples: int | None = field(default=None, metadata={"help": "keep only the first N training pairs"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "keep only the first N validation pairs"})
    max_test_samples: int | None = field(default=None, metadata={"help": "keep only the first N test pairs"})
    max_source_length: int = field(default=256, metadata={"help": "source tokens kept (incl. </s>)"})
    max_target_length: int = field(default=256, metadata={"help": "target tokens kept (incl. </s>)"})
    vocab_size: int = field(default=8000, metadata={"help": "shared BPE vocabulary (§5.1: 37000 for WMT14 en-de)"})
    bpe_min_frequency: int = field(default=2, metadata={"help": "merges seen fewer times are not learned"})


@dataclass
class PaperArguments:
    lr_schedule: str = field(
        default="noam",
        metadata={"help": "noam (Eq. 3; learning_rate is then its factor) or trainer (lr_scheduler_type)"},
    )
    max_tokens_per_batch: int | None = field(
        default=None, metadata={"help": "token budget per batch and process (§5.1: ~25000); None = batch sizes"}
    )
    average_last_checkpoints: int = field(
        default=0, metadata={"help": "average the last N checkpoint-* folders before testing (§6.1: 5 base, 20 big)"}
    )
    max_train_minutes: float | None = field(
        default=None, metadata={"help": "stop training after this much wall-clock time (a last checkpoint is saved)"}
    )
    eval_bleu_during_training: bool = field(
        default=False, metadata={"help": "beam-search BLEU at every evaluation (slow on CPU); else loss only"}
    )


def argument_types():
    from transformers import Seq2SeqTrainingArguments

    return (ModelArguments, DataArguments, PaperArguments, Seq2SeqTrainingArguments)


# ----------------------------------------------------------------------------------------------------------------------
# Checks that need no data


def check_arguments(model_args, data_args, paper_args, training_args) -> str | bool | None:
    """Raise `UserError` for contradictory settings; return what to pass as `resume_from_checkpoint`."""
    if training_args.max_steps == 0 or training_args.max_steps < -1:  # 0 would silently mean num_train_epochs
        raise UserError(f"max_steps must be positive (or -1 for num_train_epochs), got {training_args.max_steps}")
    if (data_args.dataset_name is None) == (data_args.data_dir is None):
        raise UserError("give exactly one of --dataset_name NAME and --data_dir DIR")
    if paper_args.lr_schedule not in ("noam", "trainer"):
        raise UserError(f"--lr_schedule must be noam or trainer, got {paper_args.lr_schedule!r}")
    if training_args.label_smoothing_factor != 0:
        raise UserError("keep --label_smoothing_factor 0: label smoothing is the model's --label_smoothing")
    n_avg = paper_args.average_last_checkpoints
    if n_avg < 0:
        raise UserError(f"--average_last_checkpoints must be >= 0, got {n_avg}")
    if n_avg > 1 and training_args.save_total_limit is not None and training_args.save_total_limit < n_avg:
        raise UserError(
            f"--save_total_limit {training_args.save_total_limit} keeps fewer than the {n_avg} checkpoints to average"
        )
    if n_avg > 0 and training_args.save_strategy == "no":
        raise UserError("--average_last_checkpoints needs saved checkpoints (save_strategy is 'no')")
    model_config(model_args)  # impossible sizes fail now, before any file is written
    return resolve_resume_checkpoint(training_args.output_dir, training_args.resume_from_checkpoint)


# ----------------------------------------------------------------------------------------------------------------------
# Data and tokenizer


def load_raw_datasets(data_args):
    from training.translation_data import load_from_dir, load_from_hub

    splits = {"train": data_args.train_split, "validation": data_args.validation_split, "test": data_args.test_split}
    langs = (data_args.source_lang, data_args.target_lang)
    if data_args.data_dir is not None:
        raw = load_from_dir(data_args.data_dir, splits, *langs)
    else:
        raw = load_from_hub(data_args.dataset_name, data_args.dataset_config_name, splits, *langs)
    for split, limit in (
        ("train", data_args.max_train_samples),
        ("validation", data_args.max_eval_samples),
        ("test", data_args.max_test_samples),
    ):
        if limit is not None:
            raw[split] = raw[split].select(range(min(limit, len(raw[split]))))
    return raw


def get_tokenizer(raw, data_args, training_args):
    """Train the shared BPE on the training pairs (main process) and save it into output_dir; every process then
    loads that saved copy, so all use identical ids. A resumed run reuses the saved tokenizer."""
    from transformers import PreTrainedTokenizerFast

    from training.translation_data import train_shared_bpe

    output_dir = Path(training_args.output_dir)
    with training_args.main_process_first(local=False, desc="tokenizer training"):
        if training_args.process_index == 0 and not (output_dir / "tokenizer.json").is_file():
            train = raw["train"]
            tokenizer = train_shared_bpe(
                (text for column in ("source", "target") for text in train[column]),
                vocab_size=data_args.vocab_size,
                min_frequency=data_args.bpe_min_frequency,
                model_max_length=data_args.max_source_length,
            )
            tokenizer.save_pretrained(output_dir)
    return PreTrainedTokenizerFast.from_pretrained(output_dir)


# ----------------------------------------------------------------------------------------------------------------------
# Model


def model_config(model_args, **fields):
    """The preset with the command line's sizes and `fields`; an impossible combination is a `UserError`."""
    from hf_vanilla_transformer import VanillaTransformerConfig

    overrides = {
        name: getattr(model_args, name)
        for name in (
            "d_model", "num_heads", "ffn_dim", "num_encoder_layers", "num_decoder_layers", "dropout",
            "attention_dropout", "max_position_embeddings", "norm_position",
        )
        if getattr(model_args, name) is not None
    }  # fmt: skip
    try:
        return VanillaTransformerConfig.from_preset(
            model_args.preset, label_smoothing=model_args.label_smoothing, **overrides, **fields
        )
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc).splitlines()[0]) from None


def build_model(model_args, tokenizer, data_args):
    from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration
    from training.translation_pipeline import CUSTOM_PIPELINES

    config = model_config(
        model_args,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
    )
    longest = max(data_args.max_source_length, data_args.max_target_length)
    if config.position_embedding == "learned" and config.max_position_embeddings < longest:
        raise UserError(f"max_position_embeddings={config.max_position_embeddings} < max length {longest}")
    config.custom_pipelines = CUSTOM_PIPELINES  # pipeline("translation", ..., trust_remote_code=True)
    return VanillaTransformerForConditionalGeneration(config)


# ----------------------------------------------------------------------------------------------------------------------
# Metric


def bleu_metric_fn(tokenizer, references: list[str]):
    """`compute_metrics` for one split: sacreBLEU of the decoded beam outputs against the raw (untokenised)
    reference sentences of that split, in dataset order."""
    import evaluate
    import numpy as np

    metric = evaluate.load(str(METRIC_PATH))

    def compute_metrics(eval_prediction):
        predictions = eval_prediction.predictions
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        # Under DDP (measured: transformers 5.23 + accelerate, 2 CPU processes) the gathered predictions can keep
        # the samples that even_batches repeats to fill the last batches; they come after the real ones, in order.
        predictions = np.where(predictions < 0, tokenizer.pad_token_id, predictions)[: len(references)]
        hypotheses = [text.strip() for text in tokenizer.batch_decode(predictions, skip_special_tokens=True)]
        result = metric.compute(predictions=hypotheses, references=[[ref] for ref in references[: len(hypotheses)]])
        compute_metrics.last_hypotheses = hypotheses
        return {"bleu": round(result["score"], 2), "bleu_signature": result["signature"]}

    compute_metrics.last_hypotheses = []
    return compute_metrics


# ----------------------------------------------------------------------------------------------------------------------
# Publishing


def plot_cross_attention(model, tokenizer, sample, path: Path) -> Path | None:
    """The last decoder layer's cross-attention (every head) over the first test sentence and its translation."""
    if not sample or not sample[0]:
        return None
    from hf_vanilla_transformer.visualize import attention_maps

    layer = model.config.num_decoder_layers - 1
    target = sample[1] or None  # None: the model's own greedy output
    figure = attention_maps(model, tokenizer, sample[0], target, layers=[layer], kind="cross")
    figure.savefig(path, dpi=80)
    return path


def write_hub_folder(trainer, tokenizer, model_args, data_args, paper_args, training_args, test_metrics, sample):
    from training.publish import plot_training_curves, recipe_as_yaml, write_model_card

    output_dir = Path(training_args.output_dir)
    tokenizer.save_pretrained(output_dir)
    shutil.copy(PIPELINE_FILE, output_dir / PIPELINE_FILE.name)
    curve = plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png", title="translation")
    cross_attention = plot_cross_attention(trainer.model, tokenizer, sample, output_dir / "cross_attention.png")
    src, tgt = data_args.source_lang, data_args.target_lang
    dataset = data_args.dataset_name or Path(data_args.data_dir).name
    config = trainer.model.config
    write_model_card(
        output_dir,
        "translation.md",
        model_name=output_dir.name,
        task_type="translation",
        task_name=f"Translation {src}-{tgt}",
        dataset_type=dataset,
        dataset_name=f"{dataset} ({data_args.test_split})",
        metric_type="bleu",
        metric_name="sacreBLEU",
        metric_value=test_metrics.get("test_bleu", 0.0),
        language=[src, tgt],
        pipeline_tag="translation",
        datasets=[data_args.dataset_name] if data_args.dataset_name else None,
        tags=["translation", f"{src}-{tgt}"],
        source_lang=src,
        target_lang=tgt,
        dataset=dataset,
        test_split=data_args.test_split,
        bleu=test_metrics.get("test_bleu", "n/a"),
        signature=test_metrics.get("test_bleu_signature", "n/a"),
        averaged=paper_args.average_last_checkpoints,
        num_parameters=f"{trainer.model.num_parameters() / 1e6:.2f}M",
        sizes=f"d_model={config.d_model}, h={config.num_heads}, d_ff={config.ffn_dim}, "
        f"N={config.num_encoder_layers}+{config.num_decoder_layers}, vocab={config.vocab_size}",
        steps=trainer.state.global_step,
        curve=curve.name if curve else None,
        cross_attention=cross_attention.name if cross_attention else None,
        recipe=recipe_as_yaml(model_args, data_args, paper_args, training_args),
        repo_id=training_args.hub_model_id or f"your-name/{output_dir.name}",
        sample_source=sample[0],
        sample_translation=sample[1],
    )


# ----------------------------------------------------------------------------------------------------------------------


def main(argv: list[str], model_builder=None, publish: bool = True) -> dict:
    """The whole run; returns the test metrics. `model_builder(model_args, tokenizer, data_args)` replaces
    `build_model` (bench/marian_multi30k.py trains another architecture through the same procedure); `publish=False`
    skips the model card and pipeline file, which describe our model."""
    model_args, data_args, paper_args, training_args = parse_recipe(argument_types(), argv)
    resume_from = check_arguments(model_args, data_args, paper_args, training_args)
    # Every process has checked output_dir before the main one writes into it.
    with training_args.main_process_first(desc="output_dir check"):
        pass

    import transformers
    from transformers import DataCollatorForSeq2Seq, set_seed

    from training.translation_data import tokenize_pairs
    from training.translation_training import (
        TimeBudgetCallback,
        TranslationTrainer,
        average_checkpoints,
        last_checkpoints,
    )

    transformers.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)

    raw = load_raw_datasets(data_args)
    tokenizer = get_tokenizer(raw, data_args, training_args)
    with training_args.main_process_first(desc="tokenizing"):
        tokenized = {
            split: tokenize_pairs(raw[split], tokenizer, data_args.max_source_length, data_args.max_target_length)
            for split in raw
        }

    model = (model_builder or build_model)(model_args, tokenizer, data_args)
    # Decode as evaluated, and ship that to the Hub (generation_config.json): never transformers' 20-token default.
    if training_args.generation_max_length is None:
        training_args.generation_max_length = data_args.max_target_length
    if training_args.generation_num_beams is None:
        training_args.generation_num_beams = model.generation_config.num_beams
    model.generation_config.max_new_tokens = training_args.generation_max_length
    model.generation_config.num_beams = training_args.generation_num_beams
    gen_kwargs = {
        "max_new_tokens": training_args.generation_max_length,
        "num_beams": training_args.generation_num_beams,
    }

    training_args.predict_with_generate = paper_args.eval_bleu_during_training
    trainer = TranslationTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        compute_metrics=bleu_metric_fn(tokenizer, raw["validation"]["target"])
        if paper_args.eval_bleu_during_training
        else None,
        max_tokens_per_batch=paper_args.max_tokens_per_batch,
        noam_d_model=model.config.d_model if paper_args.lr_schedule == "noam" else None,
        gen_kwargs=gen_kwargs,
        callbacks=[TimeBudgetCallback(paper_args.max_train_minutes)] if paper_args.max_train_minutes else None,
    )

    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=resume_from)
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()

    if paper_args.average_last_checkpoints > 0:
        trainer.accelerator.wait_for_everyone()  # the main process may still be writing the last checkpoint
        folders = last_checkpoints(training_args.output_dir, paper_args.average_last_checkpoints)
        if not folders:
            raise UserError(f"no checkpoint-* folders in {training_args.output_dir} to average")
        # Keys missing from the files are the ones save_pretrained leaves out (tied to a loaded matrix, or rebuilt).
        _, unexpected = model.load_state_dict(average_checkpoints(folders), strict=False)
        if unexpected:
            raise RuntimeError(f"averaged checkpoints hold weights the model lacks: {unexpected}")
        print(f"averaged {len(folders)} checkpoints: {', '.join(f.name for f in folders)}")
        trainer.save_model()  # the averaged weights are the published model

    # Final test BLEU with beam search (§6.1) on the (averaged) model.
    training_args.predict_with_generate = True
    trainer.compute_metrics = bleu_metric_fn(tokenizer, raw["test"]["target"])
    output = trainer.predict(tokenized["test"], metric_key_prefix="test", **gen_kwargs)
    metrics = output.metrics
    metrics["test_samples"] = len(tokenized["test"])
    trainer.log_metrics("test", metrics)
    trainer.save_metrics("test", metrics)
    hypotheses = trainer.compute_metrics.last_hypotheses
    if trainer.is_world_process_zero():
        print(f"test BLEU = {metrics['test_bleu']:.2f}  ({metrics['test_bleu_signature']})")
        (Path(training_args.output_dir) / "generated_predictions.txt").write_text(
            "".join(h + "\n" for h in hypotheses), encoding="utf-8"
        )
        sample = (raw["test"]["source"][0], hypotheses[0] if hypotheses else "")
        if publish:
            write_hub_folder(trainer, tokenizer, model_args, data_args, paper_args, training_args, metrics, sample)
    if training_args.push_to_hub and publish:
        trainer.push_to_hub(commit_message=f"test BLEU {metrics['test_bleu']:.2f}")
    return metrics


if __name__ == "__main__":
    run_main(main)
