"""Translation end to end: training/train_translation.py, its data checks, schedule, batching and averaging."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import REPO_ROOT, make_hub_cache, run_without_package
from training.translation_training import (
    TokenBatchSampler,
    average_checkpoints,
    last_checkpoints,
    noam_lambda,
    noam_rate,
)

SCRIPT = REPO_ROOT / "training" / "train_translation.py"
RECIPE = REPO_ROOT / "training" / "configs" / "multi30k_en_de_small.yaml"

# A model small enough for 20 CPU steps in seconds; the recipe's procedure is otherwise unchanged.
TINY = [
    "--d_model", "32", "--num_heads", "2", "--ffn_dim", "64", "--num_encoder_layers", "1",
    "--num_decoder_layers", "1", "--vocab_size", "400", "--max_train_samples", "2000",
    "--max_eval_samples", "50", "--max_test_samples", "50", "--generation_max_length", "24",
    "--logging_steps", "5", "--disable_tqdm", "true",
]  # fmt: skip


def run_script(*args, cwd=REPO_ROOT, env=None, timeout=600):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# ----------------------------------------------------------------------------------------------------------------------
# The 20-step run and its Hub folder


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    shared = REPO_ROOT.parent / "shared" / "data" / "multi30k"
    if not shared.is_dir():
        pytest.skip(f"shared data not found at {shared}")
    output_dir = tmp_path_factory.mktemp("translation") / "multi30k-en-de-tiny"
    result = run_script(
        RECIPE, "--data_dir", shared, "--output_dir", output_dir, "--max_steps", "20", *TINY,
        "--eval_strategy", "steps", "--eval_steps", "10", "--save_strategy", "steps", "--save_steps", "5",
        "--average_last_checkpoints", "3", "--eval_bleu_during_training", "true",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return output_dir, result.stdout + result.stderr


def test_twenty_step_run_writes_a_hub_ready_folder(trained_folder):
    folder, log = trained_folder
    for name in (
        "config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "README.md", "training_curves.png", "cross_attention.png", "all_results.json", "translation_pipeline.py",
        "modeling_vanilla_transformer.py", "configuration_vanilla_transformer.py", "vanilla_layers.py",
    ):  # fmt: skip
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSeq2SeqLM"].startswith("modeling_vanilla_transformer.")
    assert "translation" in config["custom_pipelines"]
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["num_beams"] == 4 and generation["length_penalty"] == 0.6
    assert generation["max_new_tokens"] == 24  # the explicit --generation_max_length, not the 20-token default
    results = json.loads((folder / "all_results.json").read_text())
    assert "test_bleu" in results and results["test_bleu_signature"].startswith("nrefs:1|case:mixed")
    assert "averaged 3 checkpoints: checkpoint-10, checkpoint-15, checkpoint-20" in log
    assert "test BLEU = " in log and "nrefs:1" in log
    card = (folder / "README.md").read_text()
    assert "pipeline_tag: translation" in card and "model-index" in card and "library_name: transformers" in card
    assert "training_curves.png" in card and "trust_remote_code=True" in card
    assert "![cross-attention](cross_attention.png)" in card  # a heat-map of a test sentence


def test_published_model_is_the_average_of_the_last_checkpoints(trained_folder):
    folder, _ = trained_folder
    expected = average_checkpoints(last_checkpoints(folder, 3))
    from safetensors.torch import load_file

    published = load_file(str(folder / "model.safetensors"))
    for name, tensor in expected.items():
        torch.testing.assert_close(published[name], tensor)


def test_pipeline_translation_by_repo_id_without_our_package(trained_folder, tmp_path):
    folder, _ = trained_folder
    cache = tmp_path / "hub"
    make_hub_cache(folder, cache, "someone/multi30k-en-de-tiny")
    out = run_without_package(
        """
        import json
        from transformers import pipeline
        translator = pipeline("translation", model="someone/multi30k-en-de-tiny", trust_remote_code=True)
        result = translator("A man is riding a bike.")
        several = translator(["A dog runs.", "Two men talk."], num_beams=2)
        assert [list(r) for r in several] == [["translation_text"], ["translation_text"]], several
        print(json.dumps(result))
        """,
        cwd=tmp_path,
        env={"HF_HUB_CACHE": str(cache), "HF_MODULES_CACHE": str(tmp_path / "modules")},  # no stale remote code
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert isinstance(result[0]["translation_text"], str)


def test_auto_classes_load_the_folder_and_tokenizer_roundtrips(trained_folder, tmp_path):
    folder, _ = trained_folder
    out = run_without_package(
        f"""
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained({str(folder)!r}, trust_remote_code=True)
        model = AutoModelForSeq2SeqLM.from_pretrained({str(folder)!r}, trust_remote_code=True)
        text = "Zwei Männer stehen am Herd und kochen."
        ids = tokenizer(text)["input_ids"]
        assert ids[-1] == tokenizer.eos_token_id == 2, ids
        assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id) == (0, 1, 3)
        assert tokenizer.decode(ids, skip_special_tokens=True) == text, tokenizer.decode(ids)
        batch = tokenizer([text, "Ein Hund."], return_tensors="pt", padding=True)
        generated = model.generate(**batch)
        print(type(model).__name__, generated.shape[0], model.generation_config.num_beams)
        """,
        cwd=tmp_path,
        env={"HF_MODULES_CACHE": str(tmp_path / "modules")},
    )
    assert out.strip().splitlines()[-1].split() == ["VanillaTransformerForConditionalGeneration", "2", "4"]


# ----------------------------------------------------------------------------------------------------------------------
# Learning rate, Eq. 3


def test_noam_schedule_matches_equation_3():
    d_model, warmup = 512, 4000
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, noam_lambda(d_model, warmup))
    rates = []
    for _ in range(8000):
        rates.append(optimizer.param_groups[0]["lr"])  # the rate used by update number len(rates)
        optimizer.step()
        scheduler.step()
    for step_num in (1, 100, 3999, 4000, 4001, 8000):
        expected = d_model**-0.5 * min(step_num**-0.5, step_num * warmup**-1.5)
        assert rates[step_num - 1] == pytest.approx(expected, rel=1e-12)
    assert max(rates) == pytest.approx(rates[warmup - 1])  # peak at the end of the warm-up
    assert rates[warmup - 1] == pytest.approx(512**-0.5 * 4000**-0.5)  # ~7.0e-4, the paper's base model peak
    assert noam_rate(10, 256, 100, factor=2.0) == pytest.approx(2 * 256**-0.5 * 10 * 100**-1.5)


# ----------------------------------------------------------------------------------------------------------------------
# Token batches


def test_token_batches_respect_the_budget_and_cover_every_pair_once():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 60, (1000,), generator=generator).tolist()
    sampler = TokenBatchSampler(lengths, max_tokens=300, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 300
    sampler.set_epoch(1)
    assert list(sampler) != batches  # reshuffled each epoch
    assert list(TokenBatchSampler(lengths, max_tokens=300, seed=3)) == batches  # deterministic given seed/epoch


def test_token_batches_give_every_rank_the_same_number_of_batches():
    lengths = [5, 50, 7, 33, 12, 60, 2, 44, 18, 9, 27] * 7
    for world_size in (2, 3, 4):
        for drop_last in (False, True):
            shards = [
                list(TokenBatchSampler(lengths, 120, seed=1, num_replicas=world_size, rank=r, drop_last=drop_last))
                for r in range(world_size)
            ]
            counts = {len(shard) for shard in shards}
            assert len(counts) == 1, (world_size, drop_last, counts)
            assert counts.pop() == len(
                TokenBatchSampler(lengths, 120, seed=1, num_replicas=world_size, rank=0, drop_last=drop_last)
            )
            if not drop_last:  # padding repeats batches, it never loses a pair
                assert {i for shard in shards for b in shard for i in b} == set(range(len(lengths)))
            # ranks see different batches
            assert shards[0] != shards[1]


def test_a_pair_longer_than_the_budget_gets_its_own_batch():
    batches = list(TokenBatchSampler([500, 3, 3], max_tokens=100, shuffle=False))
    assert sorted(map(sorted, batches)) == [[0], [1, 2]]


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoint averaging


def test_average_checkpoints_is_the_elementwise_mean(tmp_path):
    tensors = [{"w": torch.randn(3, 4), "b": torch.randn(4).to(torch.bfloat16)} for _ in range(4)]
    for step, state in zip((100, 200, 300, 1000), tensors):
        (tmp_path / f"checkpoint-{step}").mkdir()
        save_file(state, str(tmp_path / f"checkpoint-{step}" / "model.safetensors"))
    (tmp_path / "checkpoint-final-copy").mkdir()  # not a numbered checkpoint: ignored
    folders = last_checkpoints(tmp_path, 3)
    assert [f.name for f in folders] == ["checkpoint-200", "checkpoint-300", "checkpoint-1000"]  # numeric order
    averaged = average_checkpoints(folders)
    torch.testing.assert_close(averaged["w"], torch.stack([t["w"] for t in tensors[1:]]).mean(0))
    expected_b = torch.stack([t["b"].double() for t in tensors[1:]]).mean(0).to(torch.bfloat16)
    assert averaged["b"].dtype == torch.bfloat16
    torch.testing.assert_close(averaged["b"], expected_b)


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: one `error:` line, non-zero exit, no traceback


def write_gz(path: Path, data: bytes):
    with gzip.open(path, "wb") as f:
        f.write(data)


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for split in ("train", "val", "test"):
        (folder / f"{split}.en").write_text("A dog runs.\nTwo men talk.\n", encoding="utf-8")
        write_gz(folder / f"{split}.de.gz", "Ein Hund rennt.\nZwei Männer reden.\n".encode())
    return folder


def bad_run(data_dir, tmp_path, *extra):
    return run_script(
        "--data_dir", data_dir, "--validation_split", "val", "--output_dir", tmp_path / "out", "--max_steps", "1",
        *extra,
    )  # fmt: skip


def test_mismatched_line_counts_name_both_files_and_counts(data_dir, tmp_path):
    (data_dir / "train.en").write_text("one\ntwo\nthree\n", encoding="utf-8")
    result = bad_run(data_dir, tmp_path)
    assert_one_line_error(result, "train.en has 3 lines", "train.de.gz has 2")


def test_missing_data_dir_and_missing_file_are_named(data_dir, tmp_path):
    assert_one_line_error(bad_run(tmp_path / "nowhere", tmp_path), "data directory not found", "nowhere")
    (data_dir / "test.en").unlink()
    assert_one_line_error(bad_run(data_dir, tmp_path), "data file not found", "test.en")


def test_non_utf8_and_empty_files_are_refused(data_dir, tmp_path):
    write_gz(data_dir / "val.de.gz", b"gut\n\xff\xfe kaputt\n")
    assert_one_line_error(bad_run(data_dir, tmp_path), "val.de.gz is not valid UTF-8", "line 2")
    (data_dir / "val.de.gz").unlink()
    (data_dir / "val.de").write_text("", encoding="utf-8")
    assert_one_line_error(bad_run(data_dir, tmp_path), "val.de is empty")


def test_unknown_recipe_field_is_refused(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("preset: small\nnum_layerz: 3\n", encoding="utf-8")
    result = run_script(recipe, "--output_dir", tmp_path / "out")
    assert_one_line_error(result, "unknown recipe field(s): num_layerz")
    assert result.returncode == 2


def test_offline_dataset_name_suggests_data_dir(tmp_path):
    result = run_script(
        "--dataset_name", "wmt14", "--dataset_config_name", "de-en", "--output_dir", tmp_path / "out",
        env={"HF_HOME": str(tmp_path / "hf")},
    )  # fmt: skip
    assert_one_line_error(result, "could not load dataset 'wmt14'", "--data_dir")


def test_non_empty_output_dir_is_refused_without_resume(data_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    assert_one_line_error(bad_run(data_dir, tmp_path), "is not empty", "--resume_from_checkpoint")
    result = bad_run(data_dir, tmp_path, "--resume_from_checkpoint", "true")
    assert_one_line_error(result, "no checkpoint-* folder")


@pytest.mark.parametrize("recipe", ["multi30k_en_de_small", "wmt14_en_de_base", "wmt14_en_de_big"])
def test_recipes_parse_with_the_papers_optimizer(recipe, tmp_path):
    from training.cli import parse_recipe
    from training.train_translation import argument_types

    path = REPO_ROOT / "training" / "configs" / f"{recipe}.yaml"
    # bf16 (GPU recipes) is refused by TrainingArguments on a CPU-only machine
    model_args, data_args, paper_args, args = parse_recipe(
        argument_types(), [str(path), "--output_dir", str(tmp_path), "--bf16", "false"]
    )
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.weight_decay) == (0.9, 0.98, 1e-9, 0.0)
    assert args.label_smoothing_factor == 0 and model_args.label_smoothing == 0.1
    assert paper_args.lr_schedule == "noam" and paper_args.max_tokens_per_batch
    assert args.generation_num_beams == 4 and args.generation_max_length >= 128
    if recipe.startswith("wmt14"):
        assert args.warmup_steps == 4000 and data_args.vocab_size == 37000


def test_resume_continues_from_the_latest_checkpoint(trained_folder, tmp_path):
    import shutil

    folder, _ = trained_folder
    resumed = tmp_path / "resumed"
    shutil.copytree(folder, resumed)
    result = run_script(
        RECIPE, "--data_dir", REPO_ROOT.parent / "shared" / "data" / "multi30k", "--output_dir", resumed,
        "--max_steps", "25", *TINY, "--save_strategy", "steps", "--save_steps", "5", "--eval_strategy", "no",
        "--average_last_checkpoints", "0", "--resume_from_checkpoint", "true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((resumed / "trainer_state.json").read_text())
    assert state["global_step"] == 25
    assert (resumed / "tokenizer.json").read_text() == (folder / "tokenizer.json").read_text()
