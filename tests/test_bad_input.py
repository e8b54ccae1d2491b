"""User mistakes the other test files do not cover, as a user meets them: the script run as a subprocess prints
one `error: ...` line naming the file, field or value, exits non-zero, and shows no traceback.

Covered elsewhere: tests/test_lm.py (missing, empty and non-UTF-8 train_file, unknown recipe field, max_steps 0,
text shorter than a block, non-empty output_dir, unknown preset, offline Hub dataset) and tests/test_translation.py
(parallel files with different line counts, missing data_dir or split file, non-UTF-8 and empty files, unknown
recipe field, offline Hub dataset, non-empty output_dir and resume without a checkpoint). Two processes under
accelerate: tests/test_distributed.py.
"""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from training.lm_data import BUILTIN_CORPUS
from training.train_lm import main as train_lm_main

from .conftest import REPO_ROOT

LM_SCRIPT = REPO_ROOT / "training" / "train_lm.py"
LM_RECIPE = REPO_ROOT / "training" / "configs" / "shakespeare_char.yaml"
LM_TINY = ["--d_model", "16", "--num_heads", "2", "--num_layers", "1", "--ffn_dim", "32", "--block_size", "16"]


def run(script, *args, cwd=REPO_ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def error_line(result) -> str:
    """The one `error:` line of a refused run (asserting exit code, no traceback, nothing after it)."""
    assert result.returncode != 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    return errors[0]


# ----------------------------------------------------------------------------------------------------------------------
# Language modelling


@pytest.fixture(scope="module")
def lm_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm_text") / "small.txt"
    path.write_text(BUILTIN_CORPUS.read_text(encoding="utf-8")[:600], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lm_checkpoint(tmp_path_factory, lm_text):
    """A finished 2-step run with its checkpoint-2."""
    output_dir = tmp_path_factory.mktemp("lm_run") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = [str(LM_RECIPE), "--train_file", str(lm_text), *LM_TINY, "--max_steps", "2", "--save_steps", "2"]
        train_lm_main([*argv, "--output_dir", str(output_dir), "--sample_tokens", "2", "--disable_tqdm", "true"])
    finally:
        torch.set_num_threads(threads)
    assert (output_dir / "checkpoint-2" / "trainer_state.json").is_file()
    return output_dir


def lm_run(lm_text, output_dir, *extra):
    return run(LM_SCRIPT, LM_RECIPE, "--train_file", lm_text, "--output_dir", output_dir, *LM_TINY, *extra)


def test_lm_impossible_model_sizes_say_divisible_before_writing_anything(lm_text, tmp_path):
    result = lm_run(lm_text, tmp_path / "out", "--d_model", "100", "--num_heads", "3")
    line = error_line(result)
    assert line.startswith("error: VanillaGPTConfig: d_model=100 must be divisible by num_heads=3"), line
    assert not (tmp_path / "out").exists()  # refused before the tokenizer was trained and saved


def test_lm_max_steps_0_is_refused(lm_text, tmp_path):
    line = error_line(lm_run(lm_text, tmp_path / "out", "--max_steps", "0"))
    assert line == "error: max_steps must be positive (or -1 for num_train_epochs), got 0"


def test_lm_missing_checkpoint_is_named(lm_text, tmp_path):
    missing = tmp_path / "nowhere" / "checkpoint-5"
    line = error_line(lm_run(lm_text, tmp_path / "out", "--resume_from_checkpoint", missing))
    assert line == f"error: checkpoint to resume from not found: {missing}"


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("truncate_weights", "the checkpoint has a corrupt model.safetensors"),
        ("drop_trainer_state", "the checkpoint has no trainer_state.json"),
        ("garble_trainer_state", "the checkpoint has a corrupt trainer_state.json"),
        ("truncate_optimizer", "the checkpoint has a corrupt optimizer.pt"),
    ],
)
def test_lm_corrupted_checkpoint_is_refused_with_its_path(damage, expected, lm_checkpoint, lm_text, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(lm_checkpoint, run_dir)
    checkpoint = run_dir / "checkpoint-2"
    if damage == "truncate_weights":
        data = (checkpoint / "model.safetensors").read_bytes()
        (checkpoint / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "drop_trainer_state":
        (checkpoint / "trainer_state.json").unlink()
    elif damage == "garble_trainer_state":
        (checkpoint / "trainer_state.json").write_text('{"global_step": 2, "log_hist')
    else:
        data = (checkpoint / "optimizer.pt").read_bytes()
        (checkpoint / "optimizer.pt").write_bytes(data[:100])
    line = error_line(lm_run(lm_text, run_dir, "--max_steps", "4", "--resume_from_checkpoint", checkpoint))
    assert line.startswith(f"error: cannot resume from {checkpoint}: {expected}"), line


def test_lm_resume_true_skips_a_half_written_checkpoint_and_refuses_when_none_is_complete(
    lm_checkpoint, lm_text, tmp_path
):
    run_dir = tmp_path / "run"
    shutil.copytree(lm_checkpoint, run_dir)
    (run_dir / "checkpoint-2" / "trainer_state.json").unlink()  # as if killed while saving
    result = lm_run(lm_text, run_dir, "--max_steps", "4", "--resume_from_checkpoint", "true")
    line = error_line(result)
    assert line == f"error: --resume_from_checkpoint true: no complete checkpoint-* folder in {run_dir}"
    assert f"skipping {run_dir / 'checkpoint-2'}: it has no trainer_state.json" in result.stderr


# ----------------------------------------------------------------------------------------------------------------------
# Translation


TRANSLATION_SCRIPT = REPO_ROOT / "training" / "train_translation.py"


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for split in ("train", "validation", "test"):
        (folder / f"{split}.en").write_text("A dog runs.\nTwo men talk.\n", encoding="utf-8")
        (folder / f"{split}.de").write_text("Ein Hund rennt.\nZwei Männer reden.\n", encoding="utf-8")
    return folder


def translation_run(data_dir, output_dir, *extra):
    return run(TRANSLATION_SCRIPT, "--data_dir", data_dir, "--output_dir", output_dir, "--max_steps", "1", *extra)


def fake_checkpoint(folder, damage):
    """A checkpoint folder as Trainer writes it (weights, state, optimizer), with one part damaged."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(64, 64)}, str(folder / "model.safetensors"))
    (folder / "trainer_state.json").write_text('{"global_step": 3, "log_history": []}')
    torch.save({"state": {}}, folder / "optimizer.pt")
    if damage == "truncate_weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "drop_weights":
        (folder / "model.safetensors").unlink()


def test_translation_impossible_model_sizes_say_divisible_before_writing_anything(data_dir, tmp_path):
    line = error_line(translation_run(data_dir, tmp_path / "out", "--d_model", "100", "--num_heads", "3"))
    assert line.startswith("error: VanillaTransformerConfig: d_model=100 must be divisible by num_heads=3"), line
    assert not (tmp_path / "out").exists()


def test_translation_max_steps_0_is_refused(data_dir, tmp_path):
    line = error_line(translation_run(data_dir, tmp_path / "out", "--max_steps", "0"))
    assert line == "error: max_steps must be positive (or -1 for num_train_epochs), got 0"


def test_translation_without_data_dir_or_dataset_name_says_which_to_give(tmp_path):
    line = error_line(run(TRANSLATION_SCRIPT, "--output_dir", tmp_path / "out"))
    assert line == "error: give exactly one of --dataset_name NAME and --data_dir DIR"


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("missing", "error: checkpoint to resume from not found: {checkpoint}"),
        ("truncate_weights", "error: cannot resume from {checkpoint}: the checkpoint has a corrupt model.safetensors"),
        ("drop_weights", "error: cannot resume from {checkpoint}: the checkpoint has no model.safetensors"),
    ],
)
def test_translation_corrupted_or_missing_checkpoint_is_refused(damage, expected, data_dir, tmp_path):
    checkpoint = tmp_path / "out" / "checkpoint-3"
    if damage != "missing":
        fake_checkpoint(checkpoint, damage)
    line = error_line(translation_run(data_dir, tmp_path / "out", "--resume_from_checkpoint", checkpoint))
    assert line.startswith(expected.format(checkpoint=checkpoint)), line
