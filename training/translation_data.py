"""Parallel data and the shared BPE tokenizer of the translation recipe (paper §5.1).

Two sources, one shape: a `DatasetDict` whose splits have the columns `source` and `target` (plain strings).

- `--data_dir DIR`: aligned text files `DIR/{split}.{lang}` or `DIR/{split}.{lang}.gz`, one sentence per line
  (the layout of Multi30k, WMT news-test sets, ...);
- `--dataset_name NAME`: `datasets.load_dataset(NAME, CONFIG)` with the usual `translation: {lang: text}` column
  (wmt14, opus_books, ...).

Every mistake in those inputs raises `UserError` with the file or dataset named, so the script prints one line.
"""

import gzip
from pathlib import Path

from datasets import Dataset, DatasetDict

from training.cli import UserError

# Special tokens in the order that gives the model's default ids (configuration_vanilla_transformer.py).
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0, 1, 2, 3


# ----------------------------------------------------------------------------------------------------------------------
# Reading aligned text files


def find_split_file(data_dir: Path, split: str, lang: str) -> Path:
    """`DIR/{split}.{lang}`, else `DIR/{split}.{lang}.gz`; a `UserError` naming the expected path otherwise."""
    for name in (f"{split}.{lang}", f"{split}.{lang}.gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise UserError(f"data file not found: {data_dir / f'{split}.{lang}'} (nor {split}.{lang}.gz)")


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (gzip when the name ends in .gz), without their line endings."""
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:  # unreadable file, or a corrupt/truncated gzip stream
        raise UserError(f"cannot read {path}: {exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{path} is not valid UTF-8 (line {line}, byte offset {exc.start})") from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise UserError(f"{path} is empty")
    return lines


def read_parallel_split(data_dir: Path, split: str, source_lang: str, target_lang: str) -> Dataset:
    source_path = find_split_file(data_dir, split, source_lang)
    target_path = find_split_file(data_dir, split, target_lang)
    sources, targets = read_lines(source_path), read_lines(target_path)
    if len(sources) != len(targets):
        raise UserError(
            f"line counts differ: {source_path} has {len(sources)} lines, {target_path} has {len(targets)}; "
            "the files of a split must be aligned line by line"
        )
    return Dataset.from_dict({"source": sources, "target": targets})


def load_from_dir(data_dir: str, splits: dict[str, str], source_lang: str, target_lang: str) -> DatasetDict:
    """`splits` maps our names (train/validation/test) to file split names (e.g. test -> test_2016_flickr)."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise UserError(f"data directory not found: {data_dir}")
    return DatasetDict(
        {ours: read_parallel_split(folder, theirs, source_lang, target_lang) for ours, theirs in splits.items()}
    )


# ----------------------------------------------------------------------------------------------------------------------
# Hub datasets


def load_from_hub(
    name: str, config: str | None, splits: dict[str, str], source_lang: str, target_lang: str
) -> DatasetDict:
    """`datasets.load_dataset(name, config)` flattened to source/target columns."""
    import datasets

    try:
        raw = datasets.load_dataset(name, config)
    except Exception as exc:  # offline, unknown name, missing config: all end up here, each with its own type
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"could not load dataset {name!r}{f' ({config})' if config else ''}: {reason} -- without network access, "
            f"use --data_dir DIR with aligned files DIR/{{split}}.{{lang}}[.gz] instead"
        ) from None
    result = {}
    for ours, theirs in splits.items():
        if theirs not in raw:
            raise UserError(f"dataset {name!r} has no split {theirs!r}; it has: {', '.join(raw)}")
        split = raw[theirs]
        if "translation" not in split.column_names:
            raise UserError(f"dataset {name!r} has no 'translation' column; columns: {', '.join(split.column_names)}")
        pairs = split["translation"]
        for lang in (source_lang, target_lang):
            if pairs and lang not in pairs[0]:
                raise UserError(f"dataset {name!r} has no language {lang!r}; it has: {', '.join(pairs[0])}")
        result[ours] = Dataset.from_dict(
            {"source": [p[source_lang] for p in pairs], "target": [p[target_lang] for p in pairs]}
        )
    return DatasetDict(result)


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizer: one BPE vocabulary shared by source and target (§5.1), so the three embedding matrices can be tied (§3.4)


def train_shared_bpe(texts, vocab_size: int, min_frequency: int = 2, model_max_length: int | None = None):
    """A transformers fast tokenizer with a BPE vocabulary learned on `texts` (sources and targets together).

    Metaspace pre-tokenisation (spaces become "▁" inside tokens) with the matching decoder, so that decoding gives
    back normal, detokenised text for sacreBLEU. Every encoded sequence ends in </s>.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    eos_id = tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
    )
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK, **extra
    )


def tokenize_pairs(dataset: Dataset, tokenizer, max_source_length: int, max_target_length: int) -> Dataset:
    """input_ids/attention_mask from `source`, labels from `target` (both ending in </s>)."""

    def encode(batch):
        return tokenizer(
            batch["source"],
            text_target=batch["target"],
            max_length=max_source_length,
            max_target_length=max_target_length,
            truncation=True,
        )

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenizing")
