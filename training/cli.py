"""Shared command-line plumbing of the training scripts: YAML recipe + `--field value` overrides, one-line errors.

    python training/train_xxx.py training/configs/RECIPE.yaml --max_steps 20 --output_dir runs/x

Every field of every argument dataclass may appear in the recipe or on the command line; the command line wins.
A `UserError` (a mistake in the user's input) ends the script with one `error: ...` line and exit code 2; any
other exception is a bug and keeps its traceback.
"""

import dataclasses
import sys
from pathlib import Path

import yaml
from transformers import HfArgumentParser


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


def parse_recipe(dataclass_types, argv: list[str]) -> tuple:
    """Fill `dataclass_types` from an optional leading RECIPE.yaml and `--field value` overrides."""
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


def run_main(main) -> None:
    """Run `main(argv)`; a `UserError` becomes `error: ...` on stderr and exit code 2."""
    try:
        main(sys.argv[1:])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
