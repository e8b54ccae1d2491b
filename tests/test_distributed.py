"""Both recipes under `accelerate launch` with two processes: real DDP on CPU (gloo), CI-sized.

training/accelerate_configs/cpu_2proc.yaml starts two processes through accelerate's torchrun launcher; on a
machine without CUDA the scripts join them in a gloo process group (training/cli.py: use_gloo_without_gpus).
The shipped accelerate configs are also checked against accelerate's own config schema and launch arguments.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training.lm_data import BUILTIN_CORPUS

from .conftest import REPO_ROOT

ACCELERATE = Path(sys.executable).parent / "accelerate"
CONFIGS = REPO_ROOT / "training" / "accelerate_configs"
CPU_2PROC = CONFIGS / "cpu_2proc.yaml"
LM_SCRIPT = REPO_ROOT / "training" / "train_lm.py"
LM_RECIPE = REPO_ROOT / "training" / "configs" / "shakespeare_char.yaml"
# 33 training blocks of 16 characters, a window at every token (the recipe's stride 1); batches of 8 per process.
LM_TINY = [
    "--d_model", "16", "--num_heads", "2", "--num_layers", "1", "--ffn_dim", "32", "--block_size", "16",
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "2", "--max_steps", "4",
    "--warmup_steps", "1", "--save_steps", "2", "--eval_strategy", "no", "--logging_steps", "1",
    "--sample_tokens", "4", "--disable_tqdm", "true", "--seed", "3",
]  # fmt: skip


def launch(script, *args, num_processes=2, timeout=240):
    """`accelerate launch` with cpu_2proc.yaml (or one plain process); every process on one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["MASTER_PORT"] = env.get("MASTER_PORT", str(29500 + os.getpid() % 1000))
    if num_processes == 1:
        command = [sys.executable, str(script)]
    else:
        command = [str(ACCELERATE), "launch", "--config_file", str(CPU_2PROC), "--num_processes", str(num_processes)]
        command += ["--main_process_port", env["MASTER_PORT"], str(script)]
    return subprocess.run(
        [*command, *map(str, args)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def lm_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm_text") / "small.txt"
    path.write_text(BUILTIN_CORPUS.read_text(encoding="utf-8")[:600], encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------------------
# The accelerate configs


@pytest.mark.parametrize("name", ["cpu_2proc", "gpu_1", "gpu_8_ddp_bf16", "fsdp_big"])
def test_accelerate_config_loads_with_accelerates_own_schema(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    path = CONFIGS / f"{name}.yaml"
    config = load_config_from_file(str(path))  # raises on keys accelerate does not know
    raw = yaml.safe_load(path.read_text())
    assert config.num_processes == {"cpu_2proc": 2, "gpu_1": 1}.get(name, 8)
    # Nested FSDP keys are not checked by the loader: accelerate launch maps each to its --fsdp_* argument.
    launch_args = {action.dest for action in launch_command_parser()._actions}
    for key in raw.get("fsdp_config", {}):
        assert key in launch_args, key
    if name == "fsdp_big":
        from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration

        fsdp = config.fsdp_config
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        model_config = VanillaTransformerConfig.from_preset("tiny")
        wrapped = fsdp["fsdp_transformer_layer_cls_to_wrap"]
        model = VanillaTransformerForConditionalGeneration(model_config)
        assert wrapped in model._no_split_modules
        assert any(type(m).__name__ == wrapped for m in model.modules())
    if name == "gpu_8_ddp_bf16":
        assert config.mixed_precision == "bf16"


# ----------------------------------------------------------------------------------------------------------------------
# Language modelling


@pytest.fixture(scope="module")
def two_process_lm_run(lm_text, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("lm") / "run"
    log = ok(launch(LM_SCRIPT, LM_RECIPE, "--train_file", lm_text, "--output_dir", output_dir, *LM_TINY))
    return output_dir, log


def test_lm_two_processes_train_with_a_doubled_batch_and_the_main_process_writes_the_folder(two_process_lm_run):
    output_dir, log = two_process_lm_run

    # Two processes really trained together: one RNG state each, and 2 x 8 examples per step.
    checkpoint = output_dir / "checkpoint-4"
    assert sorted(p.name for p in checkpoint.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    train_examples = int(log.split("examples of 16 tokens: ")[1].split(" train")[0])
    assert state["global_step"] == 4 and state["epoch"] == pytest.approx(4 / -(-train_examples // 16))
    # The tokenizer was trained once (main process first; the other loaded it), the folder written once.
    assert log.count("tokenizer: trained char") == 1
    assert log.count("model: ") == 2  # both processes built the model
    assert log.count("Hub-ready folder: ") == 1 and log.count("validation loss ") == 1
    names = sorted(p.name for p in output_dir.iterdir())
    assert names.count("README.md") == 1 and not [n for n in names if n.endswith((".tmp", ".lock"))]
    assert {"model.safetensors", "tokenizer.json", "config.json", "all_results.json"} <= set(names)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(output_dir, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert model.config.vocab_size == len(tokenizer)
    card = (output_dir / "README.md").read_text()
    assert card.count("model-index:") == 1 and card.startswith("---\n")


def test_lm_two_process_run_resumed_from_its_checkpoint_repeats_the_uninterrupted_run(
    two_process_lm_run, lm_text, tmp_path
):
    """Both processes restore their own RNG state and skip the batches already seen, so steps 3-4 after a resume
    from checkpoint-2 give the uninterrupted run's losses and final model."""
    uninterrupted, _ = two_process_lm_run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(uninterrupted / "checkpoint-2", resumed / "checkpoint-2")  # as if killed after step 2
    log = ok(launch(
        LM_SCRIPT, LM_RECIPE, "--train_file", lm_text, "--output_dir", resumed, *LM_TINY,
        "--resume_from_checkpoint", "true",
    ))  # fmt: skip
    assert log.count("Hub-ready folder: ") == 1

    def history(folder):
        state = json.loads((folder / "checkpoint-4" / "trainer_state.json").read_text())
        return {r["step"]: r["loss"] for r in state["log_history"] if "loss" in r}

    assert list(history(resumed)) == [1, 2, 3, 4]  # the whole history, steps 1-2 from checkpoint-2
    assert history(resumed) == pytest.approx(history(uninterrupted), abs=1e-5)
    final = [json.loads((folder / "all_results.json").read_text())["eval_loss"] for folder in (uninterrupted, resumed)]
    assert final[1] == pytest.approx(final[0], abs=1e-5)


def test_lm_bad_input_under_two_processes_ends_with_one_error_line(lm_text, tmp_path):
    result = launch(
        LM_SCRIPT, LM_RECIPE, "--train_file", lm_text, "--output_dir", tmp_path / "run", "--d_model", "100",
        "--num_heads", "3", timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: VanillaGPTConfig: d_model=100 must be divisible by num_heads=3 "
        "(each head gets d_model / num_heads dimensions, paper §3.2.2)"
    ], result.stderr
    # The launcher reports the failed child with its own ChildFailedError traceback; none comes from our script.
    assert 'train_lm.py", line' not in result.stderr and "training/cli.py" not in result.stderr
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Translation

TRANSLATION_SCRIPT = REPO_ROOT / "training" / "train_translation.py"
TRANSLATION_RECIPE = REPO_ROOT / "training" / "configs" / "multi30k_en_de_small.yaml"
# 25 test sentences in batches of 4 per process: 7 batches, so the second process's last batch is padding that
# the BLEU must not count.
TRANSLATION_TINY = [
    "--d_model", "32", "--num_heads", "2", "--ffn_dim", "64", "--num_encoder_layers", "1",
    "--num_decoder_layers", "1", "--vocab_size", "300", "--max_train_samples", "400", "--max_eval_samples", "10",
    "--max_test_samples", "25", "--per_device_eval_batch_size", "4", "--generation_max_length", "8",
    "--logging_steps", "1", "--disable_tqdm", "true", "--max_tokens_per_batch", "400",
]  # fmt: skip


@pytest.fixture(scope="module")
def multi30k():
    folder = REPO_ROOT.parent / "shared" / "data" / "multi30k"
    if not folder.is_dir():
        pytest.skip(f"shared data not found at {folder}")
    return folder


@pytest.fixture(scope="module")
def two_process_translation_run(multi30k, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("translation") / "run"
    log = ok(
        launch(
            TRANSLATION_SCRIPT, TRANSLATION_RECIPE, "--data_dir", multi30k, "--output_dir", output_dir,
            *TRANSLATION_TINY, "--max_steps", "4", "--save_steps", "2", "--eval_strategy", "no",
            "--average_last_checkpoints", "2",
        )
    )  # fmt: skip
    return output_dir, log


def test_translation_two_processes_train_and_the_main_process_writes_the_folder(two_process_translation_run):
    output_dir, log = two_process_translation_run
    checkpoint = output_dir / "checkpoint-4"
    assert sorted(p.name for p in checkpoint.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert log.count("test BLEU = ") == 1 and log.count("averaged 2 checkpoints") == 2  # both processes average
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["test_samples"] == 25
    assert len((output_dir / "generated_predictions.txt").read_text(encoding="utf-8").splitlines()) == 25
    names = [p.name for p in output_dir.iterdir()]
    assert names.count("README.md") == 1 and "model.safetensors" in names and "translation_pipeline.py" in names


def test_translation_bleu_of_a_saved_model_is_the_same_with_one_and_two_processes(
    two_process_translation_run, multi30k, tmp_path
):
    """BLEU over exactly the test set, gathered from all processes in order, without the padding duplicates."""
    trained, _ = two_process_translation_run
    results = {}
    for processes in (1, 2):
        folder = tmp_path / f"eval_{processes}"
        shutil.copytree(trained, folder, ignore=shutil.ignore_patterns("*results.json", "generated_predictions.txt"))
        ok(
            launch(
                TRANSLATION_SCRIPT, TRANSLATION_RECIPE, "--data_dir", multi30k, "--output_dir", folder,
                *TRANSLATION_TINY, "--do_train", "false", "--resume_from_checkpoint", "true",
                "--average_last_checkpoints", "1",
                num_processes=processes,
            )
        )  # fmt: skip
        predictions = (folder / "generated_predictions.txt").read_text(encoding="utf-8").splitlines()
        results[processes] = json.loads((folder / "all_results.json").read_text()), predictions
    (one, one_predictions), (two, two_predictions) = results[1], results[2]
    assert len(one_predictions) == len(two_predictions) == one["test_samples"] == two["test_samples"] == 25
    assert two_predictions == one_predictions  # same sentences, same order: no duplicates, none lost
    assert two["test_bleu"] == one["test_bleu"] and two["test_bleu_signature"] == one["test_bleu_signature"]


def _time_budget_worker(rank, world_size, port, results):
    import types

    import torch.distributed as dist
    from transformers import TrainerControl

    from training.translation_training import TimeBudgetCallback

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        callback = TimeBudgetCallback(minutes=0.0 if rank == 0 else 60.0)  # only rank 0 is out of time
        args = types.SimpleNamespace(world_size=world_size, device="cpu")
        callback.on_train_begin(args, None, TrainerControl())
        control = callback.on_step_end(args, None, TrainerControl())
        results[rank] = (control.should_training_stop, control.should_save)
    finally:
        dist.destroy_process_group()


def test_time_budget_stops_every_process_at_the_same_step():
    """Each process has its own clock; one out of time stops all (else the others wait in DDP's all-reduce)."""
    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    port = 29500 + (os.getpid() + 7) % 1000
    mp.spawn(_time_budget_worker, args=(2, port, results), nprocs=2, join=True)
    assert dict(results) == {0: (True, True), 1: (True, True)}
