"""Exact resume: a language-model run killed with SIGKILL after a checkpoint and restarted ends where an
uninterrupted run with the same seed ends (data order, RNG, schedule and tokenizer restored), also when the kill
falls in a later epoch; refused or unusable checkpoints give one `error:` line."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from training.lm_data import BUILTIN_CORPUS

from .conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "training" / "train_lm.py"
RECIPE = REPO_ROOT / "training" / "configs" / "shakespeare_char.yaml"
# 33 training blocks of 16 characters, cut into 32 disjoint windows (stride 16) in batches of 8: 4 steps an epoch,
# so 20 steps are 5 epochs and the kill after checkpoint-8 falls in a later epoch than the first. No dropout in the
# recipe, but the sampler's shuffling needs its RNG.
TINY = [
    "--d_model", "16", "--num_heads", "2", "--num_layers", "1", "--ffn_dim", "32", "--block_size", "16",
    "--per_device_train_batch_size", "8", "--max_steps", "20", "--warmup_steps", "2", "--save_steps", "4",
    "--eval_strategy", "no", "--logging_steps", "1", "--sample_tokens", "4", "--disable_tqdm", "true",
    "--seed", "7", "--window_stride", "16",
]  # fmt: skip


def start(train_file, output_dir, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    argv = [sys.executable, str(SCRIPT), str(RECIPE), "--train_file", str(train_file), "--output_dir", str(output_dir)]
    return subprocess.Popen(
        [*argv, *TINY, *map(str, extra)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(process, timeout=120):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err.decode()[-3000:]
    return out.decode() + err.decode()


def eval_loss(output_dir):
    return json.loads((output_dir / "all_results.json").read_text())["eval_loss"]


def wait_for_checkpoint(process, folder, timeout=90):
    """Until `folder/trainer_state.json` is complete JSON (it is the last file a checkpoint gets)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before its checkpoint: " + process.stderr.read().decode()[-2000:]
        try:
            return json.loads((folder / "trainer_state.json").read_text())
        except (FileNotFoundError, ValueError):
            time.sleep(0.02)
    raise TimeoutError(f"no {folder} after {timeout} s")


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "small.txt"
    path.write_text(BUILTIN_CORPUS.read_text(encoding="utf-8")[:600], encoding="utf-8")
    return path


def test_killed_run_resumes_to_the_same_eval_loss_as_an_uninterrupted_one(train_file, tmp_path):
    # The uninterrupted reference and the run to kill side by side.
    reference = start(train_file, tmp_path / "reference")
    killed_dir = tmp_path / "killed"
    killed = start(train_file, killed_dir)
    state = wait_for_checkpoint(killed, killed_dir / "checkpoint-8")
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    assert state["epoch"] > 1  # the kill falls after the first epoch
    assert not (killed_dir / "all_results.json").exists() and not (killed_dir / "checkpoint-20").exists()

    # Continue it twice: from the latest checkpoint (`true`) and from an explicit, earlier checkpoint path.
    by_path_dir = tmp_path / "by_path"
    shutil.copytree(killed_dir, by_path_dir)
    latest = start(train_file, killed_dir, "--resume_from_checkpoint", "true")
    by_path = start(train_file, by_path_dir, "--resume_from_checkpoint", by_path_dir / "checkpoint-4")
    finish(reference)
    finish(latest)
    finish(by_path)

    expected = eval_loss(tmp_path / "reference")
    assert eval_loss(killed_dir) == pytest.approx(expected, abs=1e-3)
    assert eval_loss(by_path_dir) == pytest.approx(expected, abs=1e-3)
    for folder in (killed_dir, by_path_dir):
        state = json.loads((folder / "checkpoint-20" / "trainer_state.json").read_text())
        assert state["global_step"] == 20 and state["log_history"][0]["step"] == 1  # the whole history
        assert (folder / "tokenizer.json").read_text() == (tmp_path / "reference" / "tokenizer.json").read_text()
        for weights_dir in (folder, *folder.glob("checkpoint-*")):  # weights only as safetensors
            assert (weights_dir / "model.safetensors").is_file() and not list(weights_dir.glob("pytorch_model*"))
    reference_losses = [r["loss"] for r in json.loads((tmp_path / "reference" / "checkpoint-20" / "trainer_state.json").read_text())["log_history"] if "loss" in r]  # fmt: skip
    resumed_losses = [r["loss"] for r in state["log_history"] if "loss" in r]
    assert resumed_losses == pytest.approx(reference_losses, abs=1e-4)  # step by step: same batches, same updates


def test_every_torch_load_of_the_project_is_weights_only():
    """Weights travel as safetensors; anything else the project unpickles must go through weights_only=True
    (Trainer's own optimizer/scheduler/RNG-state loads in transformers 5.23 already do)."""
    sources = [p for folder in ("hf_vanilla_transformer", "training", "bench", "tests") for p in (REPO_ROOT / folder).rglob("*.py")]  # fmt: skip
    calls = []
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"torch\.load\((.*?)\)", text, flags=re.DOTALL):
            calls.append((path.name, "weights_only=True" in match.group(1)))
    assert all(safe for _, safe in calls), calls
