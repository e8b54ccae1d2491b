"""Shared command-line plumbing of the training scripts: YAML recipe + `--field value` overrides, one-line errors.

    python training/train_xxx.py training/configs/RECIPE.yaml --max_steps 20 --output_dir runs/x

Every field of every argument dataclass may appear in the recipe or on the command line; the command line wins.
A `UserError` (a mistake in the user's input) ends the script with one `error: ...` line and exit code 2; any
other exception is a bug and keeps its traceback. Under a launcher (`accelerate launch`, `torchrun`) every process
meets the same mistake and the main process prints the line.
"""

import dataclasses
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import yaml
from transformers import HfArgumentParser
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

# Seconds a non-main process waits before printing its own `error:` line: when the main process fails the same way,
# the launcher ends this one first, so the mistake is printed once.
OTHER_PROCESS_ERROR_DELAY_S = 10.0


class UserError(Exception):
    """A mistake in the user's input (file, field or value); printed as one line without a traceback."""


def field_names(dataclass_types) -> set[str]:
    return {f.name for dc in dataclass_types for f in dataclasses.fields(dc) if f.init}


def load_recipe(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"recipe file not found: {path}")
    try:
        recipe = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(recipe, dict):
        raise UserError(f"recipe {path} must be a mapping of field: value, got {type(recipe).__name__}")
    return recipe


def use_gloo_without_gpus() -> None:
    """Under a multi-process launcher on a machine without CUDA, run DDP on CPU (gloo).

    `accelerate launch --cpu` starts a single process (accelerate 1.15 spawns several CPU processes only through
    mpirun); `accelerate launch --multi_gpu` (or training/accelerate_configs/cpu_2proc.yaml) starts several, but
    without ACCELERATE_USE_CPU each one would train alone and write the same output folder.
    """
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def parse_recipe(dataclass_types, argv: list[str]) -> tuple:
    """Fill `dataclass_types` from an optional leading RECIPE.yaml and `--field value` overrides."""
    use_gloo_without_gpus()
    argv = list(argv)
    recipe = load_recipe(argv.pop(0)) if argv and argv[0].endswith((".yaml", ".yml")) else {}
    unknown = sorted(set(recipe) - field_names(dataclass_types))
    if unknown:
        raise UserError(f"unknown recipe field(s): {', '.join(unknown)}")
    parser = HfArgumentParser(dataclass_types)
    for action in parser._actions:
        if action.dest in recipe:
            action.required = False  # a value in the recipe satisfies a required field
    parser.set_defaults(**recipe)
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as exc:  # raised by the dataclasses' own validation (e.g. TrainingArguments)
        raise UserError(str(exc).strip().splitlines()[0]) from None
    if remaining:
        raise UserError(f"unknown argument(s): {' '.join(remaining)}")
    return tuple(parsed)


# ----------------------------------------------------------------------------------------------------------------------
# Resuming


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete Trainer checkpoint (a kill while saving leaves one half-written), or None.

    Reads only headers: trainer_state.json, the safetensors header (its offsets must fit the file) and the zip
    directory at the end of every torch-saved file (optimizer, scheduler, RNG states).
    """
    if not folder.is_dir():
        return "not found"
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "has no trainer_state.json (saving was interrupted?)"
    try:
        if not isinstance(json.loads(state.read_text(encoding="utf-8")).get("global_step"), int):
            return "has a trainer_state.json without global_step"
    except (ValueError, UnicodeDecodeError, AttributeError):
        return "has a corrupt trainer_state.json"
    weights = [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else []
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weights = [
                folder / name for name in set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            ]
        except (ValueError, KeyError, TypeError, AttributeError):
            return "has a corrupt model.safetensors.index.json"
    if not weights and not any(folder.glob("pytorch_model_fsdp*")):  # FSDP's sharded state dict: its own format
        return "has no model.safetensors"
    from safetensors import safe_open

    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except Exception as exc:  # safetensors raises its own error types for a bad or truncated header
            return f"has a corrupt {file.name} ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})"
    for file in sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth")):
        if not zipfile.is_zipfile(file):
            return f"has a corrupt {file.name}"
    return None


def resolve_resume_checkpoint(output_dir: str | Path, resume) -> str | None:
    """What to pass to `Trainer.train(resume_from_checkpoint=...)` for `--resume_from_checkpoint` `resume`.

    None/false: start afresh, refusing a non-empty `output_dir`. true: the newest complete checkpoint-N of
    `output_dir` (a half-written newer one, left by a kill while saving, is skipped with a message). A path: that
    checkpoint, which must be complete. Every refusal is a `UserError` naming the folder.
    """
    output_dir = Path(output_dir)
    if resume is None or str(resume).lower() in ("false", "no", "0", "none", ""):
        if output_dir.is_dir() and any(output_dir.iterdir()):
            raise UserError(
                f"output_dir {output_dir} exists and is not empty; choose another, or continue it with "
                "--resume_from_checkpoint true (latest checkpoint) or --resume_from_checkpoint PATH"
            )
        return None
    if str(resume).lower() in ("true", "yes", "1"):
        found = [p for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.name.split("-")[-1].isdigit()]
        if not found:
            raise UserError(f"--resume_from_checkpoint true: no checkpoint-* folder in {output_dir}")
        for folder in sorted(found, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
            problem = checkpoint_problem(folder)
            if problem is None:
                return str(folder)
            print(f"skipping {folder}: it {problem}", file=sys.stderr)
        raise UserError(f"--resume_from_checkpoint true: no complete checkpoint-* folder in {output_dir}")
    problem = checkpoint_problem(Path(resume))
    if problem == "not found":
        raise UserError(f"checkpoint to resume from not found: {resume}")
    if problem is not None:
        raise UserError(f"cannot resume from {resume}: the checkpoint {problem}")
    return str(resume)


def run_main(main) -> None:
    """Run `main(argv)`; a `UserError` becomes `error: ...` on stderr and exit code 2.

    Under a launcher a process other than the main one waits `OTHER_PROCESS_ERROR_DELAY_S` first: if the main
    process meets the same mistake it prints it and the launcher stops the others; if not (a mistake seen by this
    process only), this one prints it and the launcher stops the others, so nothing waits on a collective forever.
    """
    try:
        main(sys.argv[1:])
    except UserError as exc:
        if int(os.environ.get("RANK", "0")) != 0:
            time.sleep(OTHER_PROCESS_ERROR_DELAY_S)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
