"""The paper's training procedure (§5) on top of `Seq2SeqTrainer`.

- `noam_lambda`: the learning-rate schedule of Eq. 3, as a `LambdaLR` factor;
- `TokenBatchSampler`: batches of similar-length pairs up to a token budget (§5.1: "approximately 25000 source
  tokens and 25000 target tokens"), identical on every process given seed and epoch, sharded by rank;
- `average_checkpoints`: the mean of the last N checkpoints' weights (§6.1);
- `TranslationTrainer`: a `Seq2SeqTrainer` that uses both.
"""

import math
import re
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Sampler
from transformers import Seq2SeqTrainer, TrainerCallback

# ----------------------------------------------------------------------------------------------------------------------
# Learning rate, Eq. 3


def noam_rate(step_num: int, d_model: int, warmup_steps: int, factor: float = 1.0) -> float:
    """lrate = factor * d_model^-0.5 * min(step_num^-0.5, step_num * warmup_steps^-1.5), step_num from 1 (Eq. 3)."""
    step_num = max(step_num, 1)
    return factor * d_model**-0.5 * min(step_num**-0.5, step_num * warmup_steps**-1.5)


def noam_lambda(d_model: int, warmup_steps: int):
    """Multiplier for `LambdaLR`: the optimizer's lr is the factor. LambdaLR counts from 0 (before the first update),
    the paper from 1, hence `step + 1`."""
    if warmup_steps < 1:
        raise ValueError(f"the noam schedule needs warmup_steps >= 1, got {warmup_steps}")
    return lambda step: noam_rate(step + 1, d_model, warmup_steps)


# ----------------------------------------------------------------------------------------------------------------------
# Token-based batching


class TokenBatchSampler(Sampler):
    """Batches of indices whose padded size `len(batch) * max(longest source, longest target)` stays within
    `max_tokens` (a pair longer than the budget gets a batch of its own).

    Each epoch: a seeded shuffle, a stable sort by length (so equal lengths mix differently every epoch), greedy
    packing, then a seeded shuffle of the batch order. Everything depends only on (seed, epoch), so all processes
    build the same list; process `rank` takes batches rank, rank + num_replicas, ... . The list is first padded
    with its own first batches (or cut, `drop_last`) to a multiple of `num_replicas`: every process runs the same
    number of steps, which DDP's collective operations require.
    """

    def __init__(
        self,
        lengths: list[int],
        max_tokens: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ):
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.max_tokens, self.seed, self.shuffle, self.drop_last = max_tokens, seed, shuffle, drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def all_batches(self) -> list[list[int]]:
        """The batches of every process for this epoch, before sharding."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = (
            torch.randperm(len(self.lengths), generator=generator) if self.shuffle else torch.arange(len(self.lengths))
        )
        order = order[torch.argsort(self.lengths[order], stable=True)].tolist()
        batches, batch, longest = [], [], 0
        for index in order:
            length = int(self.lengths[index])
            if batch and max(longest, length) * (len(batch) + 1) > self.max_tokens:
                batches.append(batch)
                batch, longest = [], 0
            batch.append(index)
            longest = max(longest, length)
        if batch:
            batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def _per_rank(self, total: int) -> int:
        return total // self.num_replicas if self.drop_last else math.ceil(total / self.num_replicas)

    def __iter__(self):
        batches = self.all_batches()
        needed = self._per_rank(len(batches)) * self.num_replicas
        batches = (batches * math.ceil(needed / max(len(batches), 1)))[:needed]  # pad by repeating, or cut
        return iter(batches[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        # The batch count does not depend on the epoch: the sorted lengths, hence the packing, are the same.
        return self._per_rank(len(self.all_batches()))


def pair_lengths(dataset) -> list[int]:
    """max(source tokens, target tokens) per pair: the padded width a pair adds to a batch."""
    return [max(len(s), len(t)) for s, t in zip(dataset["input_ids"], dataset["labels"])]


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoint averaging, §6.1


def last_checkpoints(output_dir: str | Path, n: int) -> list[Path]:
    """The `n` highest-numbered `checkpoint-*` folders of `output_dir`, oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))[-n:]


def average_checkpoints(folders: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the `model.safetensors` of `folders` (accumulated in float64, returned in each
    tensor's own dtype). Integer tensors (none in this model) are taken from the last checkpoint."""
    if not folders:
        raise ValueError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    last = {}
    for folder in folders:
        last = load_file(str(Path(folder) / "model.safetensors"))
        for name, tensor in last.items():
            if tensor.is_floating_point():
                total[name] = total.get(name, 0) + tensor.double()
    return {
        name: (total[name] / len(folders)).to(tensor.dtype) if name in total else tensor
        for name, tensor in last.items()
    }


# ----------------------------------------------------------------------------------------------------------------------
# Wall-clock budget


class TimeBudgetCallback(TrainerCallback):
    """Stop training (saving a last checkpoint) once `minutes` of training wall-clock time have passed: a budget
    that holds on any machine, where a step count would not. Under DDP the processes agree after every step (the
    first one out of time stops them all): stopping one step apart would leave the others waiting forever."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        over = time.monotonic() - self.start >= self.seconds
        if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([float(over)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            over = bool(flag.item())
        if over:
            control.should_training_stop = True
            control.should_save = True
        return control


# ----------------------------------------------------------------------------------------------------------------------
# Trainer


class TranslationTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` with token-budget batches (`max_tokens_per_batch`) and the Eq. 3 schedule (`noam_warmup`).

    With the noam schedule, `args.learning_rate` is the factor in front of Eq. 3 (1.0 = the paper).
    """

    def __init__(
        self,
        *args,
        max_tokens_per_batch: int | None = None,
        noam_d_model: int | None = None,
        gen_kwargs: dict | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.max_tokens_per_batch = max_tokens_per_batch
        self.noam_d_model = noam_d_model
        # Decoding settings for every evaluate/predict, including the Trainer's own evaluations during training.
        self.default_gen_kwargs = dict(gen_kwargs or {})

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval", **gen_kwargs):
        return super().evaluate(
            eval_dataset, ignore_keys, metric_key_prefix, **{**self.default_gen_kwargs, **gen_kwargs}
        )

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix="test", **gen_kwargs):
        return super().predict(
            test_dataset, ignore_keys, metric_key_prefix, **{**self.default_gen_kwargs, **gen_kwargs}
        )

    def create_model_card(self, *args, **kwargs):
        """Keep the card that train_translation.py rendered from training/model_cards/translation.md."""
        if not (Path(self.args.output_dir) / "README.md").is_file():
            super().create_model_card(*args, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.noam_d_model is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            optimizer = self.optimizer if optimizer is None else optimizer
            warmup = self.args.get_warmup_steps(num_training_steps)
            self.lr_scheduler = LambdaLR(optimizer, noam_lambda(self.noam_d_model, warmup))
        return self.lr_scheduler

    def get_train_dataloader(self) -> DataLoader:
        if not self.max_tokens_per_batch:
            return super().get_train_dataloader()
        dataset = self._remove_unused_columns(self.train_dataset, description="training")
        sampler = TokenBatchSampler(
            pair_lengths(dataset),
            self.max_tokens_per_batch,
            seed=self.args.seed,
            num_replicas=self.args.world_size,
            rank=self.args.process_index,
        )
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        # Already sharded by rank: let accelerate move batches to the device but not split them again.
        prepared = self.accelerator.prepare_data_loader(loader, device_placement=True)
        inner = getattr(prepared, "batch_sampler", None)
        if inner is not None and getattr(inner, "batch_sampler", None) is sampler:
            inner.num_processes, inner.process_index = 1, 0
        return prepared
