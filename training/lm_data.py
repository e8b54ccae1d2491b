"""Language-modelling data: plain text -> a character-level or byte-level BPE tokenizer -> contiguous blocks.

- `read_text`: one UTF-8 text file, with one-line `UserError`s for a missing, empty or non-UTF-8 file;
- `load_text_splits`: train/validation `DatasetDict` (column "text") from files or `datasets.load_dataset`;
- `train_char_tokenizer` / `train_bpe_tokenizer`: `tokenizers` models saved as transformers fast tokenizers;
- `group_into_blocks`: tokenize, concatenate, cut into blocks of `block_size` tokens (nanoGPT's stream of ids);
- `CausalLMBlockCollator`: stacks blocks into a batch with labels = input ids (the model shifts them).
"""

from importlib.resources import files
from itertools import chain
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from training.cli import UserError

# Tiny Shakespeare (Karpathy's char-rnn corpus, public domain), shipped as package data: the default corpus.
BUILTIN_CORPUS = Path(str(files("hf_vanilla_transformer") / "data" / "tinyshakespeare.txt"))
END_OF_TEXT = "<|endoftext|>"  # GPT-2's document separator; BPE only (the char vocabulary is the text's characters)


def read_text(path: str | Path, what: str = "text file") -> str:
    """The whole file as one string; a missing, empty or non-UTF-8 file is a `UserError` naming the path."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    if not text.strip():
        raise UserError(f"{what} {path} is empty")
    return text


def load_text_splits(
    train_file: str | None,
    validation_file: str | None,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    text_column: str = "text",
    validation_percentage: float = 10.0,
) -> DatasetDict:
    """`train` and `validation` splits with one column "text".

    Files are read whole (one document each); without a validation file the last `validation_percentage` % of
    the training text's characters is held out, as nanoGPT's `prepare.py` does (90/10). A Hub dataset without a
    validation split gives up its last `validation_percentage` % of rows instead.
    """
    if not 0 < validation_percentage < 100:
        raise UserError(f"validation_percentage must be in (0, 100), got {validation_percentage}")
    if dataset_name is not None:
        return _load_hub_splits(dataset_name, dataset_config_name, text_column, validation_percentage)
    train_text = read_text(train_file or BUILTIN_CORPUS, "train_file")
    if validation_file is not None:
        validation_text = read_text(validation_file, "validation_file")
    else:
        cut = int(len(train_text) * (1 - validation_percentage / 100))
        train_text, validation_text = train_text[:cut], train_text[cut:]
    return DatasetDict(
        train=Dataset.from_dict({"text": [train_text]}), validation=Dataset.from_dict({"text": [validation_text]})
    )


def _load_hub_splits(name: str, config_name: str | None, text_column: str, validation_percentage: float):
    import datasets

    try:
        raw = datasets.load_dataset(name, config_name)
    except (ConnectionError, OSError, ValueError) as exc:  # offline, unknown name, bad config
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"could not load dataset {name!r} ({reason}); offline or a typo? pass --train_file PATH instead"
        ) from None
    if "train" not in raw:
        raise UserError(f"dataset {name!r} has no 'train' split (splits: {', '.join(raw)})")
    if text_column not in raw["train"].column_names:
        raise UserError(
            f"dataset {name!r} has no column {text_column!r} (columns: {', '.join(raw['train'].column_names)}); "
            "set --text_column"
        )
    train = raw["train"].select_columns([text_column]).rename_column(text_column, "text")
    if "validation" in raw:
        validation = raw["validation"].select_columns([text_column]).rename_column(text_column, "text")
    else:
        cut = int(len(train) * (1 - validation_percentage / 100))
        if cut < 1 or cut == len(train):
            raise UserError(f"dataset {name!r} has too few rows ({len(train)}) to hold out a validation split")
        train, validation = train.select(range(cut)), train.select(range(cut, len(train)))
    return DatasetDict(train=train, validation=validation)


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizers


def _as_transformers_tokenizer(tokenizer: Tokenizer, **special_tokens) -> PreTrainedTokenizerFast:
    # clean_up_tokenization_spaces would turn " ." into "." on decode: text must round-trip exactly.
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=False, **special_tokens)


def train_char_tokenizer(texts) -> PreTrainedTokenizerFast:
    """One token per character of `texts`, ids in sorted character order (nanoGPT's `stoi`: 65 for Shakespeare).

    A BPE model without merges: every character is looked up on its own, with no pre-tokenizer (spaces and
    newlines are characters like any other); characters outside the vocabulary are dropped, not mapped to an
    unknown token, so the vocabulary stays exactly the text's characters. `Fuse` joins tokens without spaces.
    """
    chars = sorted(set(chain.from_iterable(texts)))
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    tokenizer.decoder = decoders.Fuse()
    return _as_transformers_tokenizer(tokenizer)


def train_bpe_tokenizer(texts, vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2, Radford et al. 2019 §2.2) trained on `texts`; <|endoftext|> separates documents."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: no text is ever out of vocabulary
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return _as_transformers_tokenizer(tokenizer, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT)


def train_tokenizer(kind: str, texts, bpe_vocab_size: int) -> PreTrainedTokenizerFast:
    if kind == "char":
        return train_char_tokenizer(texts)
    if kind == "bpe":
        return train_bpe_tokenizer(texts, bpe_vocab_size)
    raise UserError(f"tokenizer must be 'char' or 'bpe', got {kind!r}")


# ----------------------------------------------------------------------------------------------------------------------
# Blocks


def group_into_blocks(splits: DatasetDict, tokenizer, block_size: int, num_proc: int | None = None) -> DatasetDict:
    """Each split as rows of `block_size` consecutive token ids of its concatenated documents (EOS after each
    document when the tokenizer has one); the tail shorter than a block is dropped, per batch of 1000 documents."""
    backend = tokenizer.backend_tokenizer  # no length warnings, no Python-side special-token handling
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def tokenize_and_cut(batch):
        ids = list(chain.from_iterable(e.ids + eos for e in backend.encode_batch(batch["text"])))
        usable = len(ids) // block_size * block_size
        return {"input_ids": [ids[i : i + block_size] for i in range(0, usable, block_size)]}

    blocks = splits.map(
        tokenize_and_cut, batched=True, batch_size=1000, remove_columns=["text"], num_proc=num_proc, desc="blocks"
    )
    for name, split in blocks.items():
        if len(split) == 0:
            raise UserError(f"the {name} text is shorter than one block of block_size={block_size} tokens")
    return blocks.with_format("torch")


class CausalLMBlockCollator:
    """Stacks equal-length blocks into `input_ids` (B, T) with `labels` the same ids: the model shifts them."""

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        input_ids = torch.stack([torch.as_tensor(f["input_ids"]) for f in features])  # (B, T)
        return {"input_ids": input_ids, "labels": input_ids.clone()}
