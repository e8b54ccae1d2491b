"""Language-modelling data: plain text -> a character-level or byte-level BPE tokenizer -> contiguous blocks.

- `read_text`: one UTF-8 text file, with one-line `UserError`s for a missing, empty or non-UTF-8 file;
- `load_text_splits`: train/validation `DatasetDict` (column "text") from files or `datasets.load_dataset`;
- `train_char_tokenizer` / `train_bpe_tokenizer`: `tokenizers` models saved as transformers fast tokenizers;
- `group_into_blocks`: tokenize, concatenate, cut into blocks of `block_size` tokens (nanoGPT's stream of ids);
- `NextTokenWindows`: examples of `block_size` inputs and the `block_size` tokens after them, read from the blocks
  at any stride: disjoint (every token predicted once per epoch) or a window at every token (nanoGPT's sampling);
- `CausalLMBlockCollator`: stacks examples into a batch (`input_ids`, `labels`, and `shift_labels` when given).
"""

from importlib.resources import files
from itertools import chain
from pathlib import Path

import numpy as np
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
        ids = np.fromiter(chain.from_iterable(e.ids + eos for e in backend.encode_batch(batch["text"])), np.int64)
        usable = len(ids) // block_size * block_size
        return {"input_ids": ids[:usable].reshape(-1, block_size)}  # (n_blocks, block_size)

    blocks = splits.map(
        tokenize_and_cut, batched=True, batch_size=1000, remove_columns=["text"], num_proc=num_proc, desc="blocks"
    )
    for name, split in blocks.items():
        if len(split) == 0:
            raise UserError(f"the {name} text is shorter than one block of block_size={block_size} tokens")
    return blocks.with_format("torch")


def check_window_stride(stride: int | None, block_size: int) -> None:
    """`UserError` unless windows of `block_size` tokens can start every `stride` tokens (None: block_size)."""
    if stride is not None and not 1 <= stride <= block_size:
        raise UserError(f"window_stride must be between 1 and block_size={block_size}, got {stride}")


class NextTokenWindows(torch.utils.data.Dataset):
    """Examples cut from a split's blocks: `input_ids`, `block_size` consecutive tokens, and `shift_labels`, the
    token after each of them -- nanoGPT's x, y = data[i : i+T], data[i+1 : i+1+T] -- so all T positions of an
    example are predicted (a block alone predicts T - 1: its last token has no successor inside it).

    Window k starts at token k * stride of the split's token stream (its blocks, one after another). A stream of
    up to `IN_MEMORY_TOKENS` tokens is held as one tensor (a window is then a slice, ~1 us); a larger one is read
    lazily from two neighbouring blocks (~140 us from Arrow), so a corpus of any size stays memory-mapped.
    - stride = block_size: disjoint windows, every token predicted exactly once per epoch (evaluation; run_clm);
    - stride = 1: a window at every token. The Trainer's shuffled sampler then draws a fresh window for each
      example, which is nanoGPT's random batches (without repeats); one "epoch" is then block_size passes over
      the text, so such runs are sized with `max_steps`.
    """

    IN_MEMORY_TOKENS = 2**26  # 64M token ids, 512 MB as int64

    def __init__(self, blocks, stride: int | None = None, split: str = "train"):
        self.blocks = blocks  # rows {"input_ids": (block_size,)}, torch format
        self.block_size = len(blocks[0]["input_ids"])
        self.stride = self.block_size if stride is None else stride
        check_window_stride(self.stride, self.block_size)
        last_start = (len(blocks) - 1) * self.block_size - 1  # a window needs block_size + 1 tokens
        if last_start < 0:
            raise UserError(
                f"the {split} text is shorter than block_size + 1 = {self.block_size + 1} tokens (one block and the token "
                "after it)"
            )
        self.length = last_start // self.stride + 1
        self.stream = None  # (n_blocks * block_size,) when small enough to hold
        if len(blocks) * self.block_size <= self.IN_MEMORY_TOKENS:
            self.stream = torch.as_tensor(blocks.with_format("numpy")["input_ids"][:]).reshape(-1).long()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"window {index} out of range (0..{self.length - 1})")
        start = index * self.stride
        if self.stream is not None:
            window = self.stream[start : start + self.block_size + 1]  # (block_size + 1,)
        else:
            row, offset = divmod(start, self.block_size)
            tokens = torch.as_tensor(self.blocks[row : row + 2]["input_ids"]).reshape(-1)  # (2 * block_size,)
            window = tokens[offset : offset + self.block_size + 1]
        return {"input_ids": window[:-1], "shift_labels": window[1:]}


class CausalLMBlockCollator:
    """Stacks equal-length examples into `input_ids` (B, T) with `labels` the same ids, which the model shifts
    itself, or, for `NextTokenWindows`, also `shift_labels` (B, T): the already-shifted targets, which the loss
    and the Trainer's token count then use as they are (transformers' convention for pre-shifted labels)."""

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        input_ids = torch.stack([torch.as_tensor(f["input_ids"]) for f in features])  # (B, T)
        batch = {"input_ids": input_ids, "labels": input_ids.clone()}
        if "shift_labels" in features[0]:
            batch["shift_labels"] = torch.stack([torch.as_tensor(f["shift_labels"]) for f in features])  # (B, T)
        return batch
