"""Language modelling end to end: tokenizers, blocks, the training script's Hub-ready folder and its errors."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer

from training.cli import run_main
from training.lm_data import (
    BUILTIN_CORPUS,
    CausalLMBlockCollator,
    NextTokenWindows,
    group_into_blocks,
    load_text_splits,
    train_bpe_tokenizer,
    train_char_tokenizer,
)
from training.train_lm import main

from .conftest import REPO_ROOT, make_hub_cache, run_without_package

RECIPE = str(REPO_ROOT / "training" / "configs" / "shakespeare_char.yaml")
TINY = ["--d_model", "32", "--num_heads", "2", "--num_layers", "1", "--ffn_dim", "64", "--block_size", "32"]


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, and the test machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    """Five steps of the CPU recipe, shrunk, on the built-in Tiny Shakespeare."""
    output_dir = tmp_path_factory.mktemp("lm") / "shakespeare-char-tiny"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = [RECIPE, *TINY, "--max_steps", "5", "--output_dir", str(output_dir), "--sample_tokens", "20"]
        main([*argv, "--disable_tqdm", "true", "--logging_steps", "1"])
    finally:
        torch.set_num_threads(threads)
    return output_dir


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizers and blocks


def test_char_tokenizer_is_the_texts_65_characters_and_round_trips_exactly(tmp_path):
    text = BUILTIN_CORPUS.read_text(encoding="utf-8")
    tokenizer = train_char_tokenizer([text])
    assert len(tokenizer) == 65  # nanoGPT's vocab_size for Tiny Shakespeare
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    piece = text[:5000] + "  double  spaces , and ' quotes .\n\n"
    ids = reloaded(piece)["input_ids"]
    assert len(ids) == len(piece)
    assert reloaded.decode(ids) == piece
    assert tokenizer.convert_ids_to_tokens(ids[:5]) == list(piece[:5])


def test_bpe_tokenizer_round_trips_exactly_and_never_meets_an_unknown_byte(tmp_path):
    text = BUILTIN_CORPUS.read_text(encoding="utf-8")[:20000]
    tokenizer = train_bpe_tokenizer([text], vocab_size=400)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(reloaded) == 400 and reloaded.eos_token == "<|endoftext|>"
    for piece in (text[:3000], "naïve café — 東京 \t tabs\n"):
        ids = reloaded(piece)["input_ids"]
        assert reloaded.decode(ids) == piece
    assert len(reloaded(text[:3000])["input_ids"]) < 3000 * 0.7  # merges learned: fewer tokens than bytes


def test_blocks_are_consecutive_slices_of_the_token_stream_and_labels_equal_inputs():
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 3
    splits = DatasetDict(train=Dataset.from_dict({"text": [text]}), validation=Dataset.from_dict({"text": [text]}))
    tokenizer = train_char_tokenizer([text])
    blocks = group_into_blocks(splits, tokenizer, block_size=7)
    stream = tokenizer(text)["input_ids"]
    train = [row.tolist() for row in blocks["train"]["input_ids"]]
    assert len(train) == len(stream) // 7
    assert sum(train, []) == stream[: len(train) * 7]
    batch = CausalLMBlockCollator()([blocks["train"][i] for i in (0, 3)])
    assert batch["input_ids"].shape == (2, 7)
    assert batch["input_ids"].tolist() == [train[0], train[3]]
    assert torch.equal(batch["labels"], batch["input_ids"])


@pytest.mark.parametrize("in_memory", [True, False], ids=["in-memory", "from-arrow"])
@pytest.mark.parametrize("stride", [None, 1, 3])
def test_windows_are_the_stream_at_every_stride_with_the_next_token_of_each_position(stride, in_memory, monkeypatch):
    monkeypatch.setattr(NextTokenWindows, "IN_MEMORY_TOKENS", 2**26 if in_memory else 0)
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 3
    splits = DatasetDict(train=Dataset.from_dict({"text": [text]}), validation=Dataset.from_dict({"text": [text]}))
    tokenizer = train_char_tokenizer([text])
    blocks = group_into_blocks(splits, tokenizer, block_size=7)
    stream = tokenizer(text)["input_ids"][: len(blocks["train"]) * 7]  # the tail shorter than a block is dropped
    windows = NextTokenWindows(blocks["train"], stride)
    assert (windows.stream is not None) == in_memory
    step = stride or 7
    starts = range(0, len(stream) - 7, step)  # every start that leaves a next token for the last position
    assert len(windows) == len(starts)
    for k, start in enumerate(starts):
        assert windows[k]["input_ids"].tolist() == stream[start : start + 7]
        assert windows[k]["shift_labels"].tolist() == stream[start + 1 : start + 8]
    with pytest.raises(IndexError):
        windows[len(windows)]
    batch = CausalLMBlockCollator()([windows[0], windows[2]])
    assert batch["input_ids"].shape == batch["shift_labels"].shape == (2, 7)
    assert batch["shift_labels"][:, :-1].tolist() == batch["input_ids"][:, 1:].tolist()


def test_validation_is_the_last_tenth_of_the_text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("abcdefghij" * 10, encoding="utf-8")
    splits = load_text_splits(str(path), None)
    assert splits["train"]["text"][0] == ("abcdefghij" * 10)[:90]
    assert splits["validation"]["text"][0] == "abcdefghij"


# ----------------------------------------------------------------------------------------------------------------------
# The training script's output


def test_run_writes_a_hub_ready_folder_with_perplexity(trained_folder):
    names = {p.name for p in trained_folder.iterdir()}
    expected = {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}
    expected |= {"modeling_vanilla_gpt.py", "configuration_vanilla_gpt.py", "README.md", "training_curves.png"}
    assert expected <= names
    config = json.loads((trained_folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_vanilla_gpt.VanillaGPTForCausalLM"
    assert (config["vocab_size"], config["d_model"], config["max_position_embeddings"]) == (65, 32, 32)
    results = json.loads((trained_folder / "all_results.json").read_text())
    assert results["perplexity"] == pytest.approx(torch.tensor(results["eval_loss"]).exp().item(), rel=1e-5)
    card = (trained_folder / "README.md").read_text()
    assert "model-index:" in card and "type: perplexity" in card and f"value: {round(results['perplexity'], 4)}" in card
    assert "training_curves.png" in card and 'pipeline("text-generation"' in card and "```text" in card


def test_pipeline_generates_from_the_folder_by_path_and_by_repo_id_without_our_package(trained_folder, tmp_path):
    cache = tmp_path / "hub"
    make_hub_cache(trained_folder, cache, "someone/shakespeare-char-tiny")
    code = f"""
        from transformers import pipeline
        for model in ({str(trained_folder)!r}, "someone/shakespeare-char-tiny"):
            generator = pipeline("text-generation", model=model, trust_remote_code=True)
            out = generator("ROMEO:", max_new_tokens=8, do_sample=False)[0]["generated_text"]
            assert out.startswith("ROMEO:") and len(out) == len("ROMEO:") + 8, out
            print(type(generator.model).__module__, repr(out))
    """
    stdout = run_without_package(code, cwd=tmp_path, env={"HF_HUB_CACHE": str(cache)})
    lines = stdout.strip().splitlines()
    assert len(lines) == 2 and all("modeling_vanilla_gpt" in line for line in lines)


def test_resume_from_latest_checkpoint_continues_the_step_count(trained_folder, tmp_path, one_thread):
    folder = tmp_path / "run"
    shutil.copytree(trained_folder, folder)
    argv = [RECIPE, *TINY, "--output_dir", str(folder), "--resume_from_checkpoint", "true", "--max_steps", "7"]
    main([*argv, "--disable_tqdm", "true", "--sample_tokens", "5"])
    assert (folder / "checkpoint-7").is_dir()
    state = json.loads((folder / "checkpoint-7" / "trainer_state.json").read_text())
    assert state["global_step"] == 7 and state["log_history"][0]["step"] == 1  # history of steps 1-5 kept


def test_installed_packages_train_and_write_the_card_without_the_repository(tmp_path):
    """What `pip install` (not editable) puts in site-packages: setuptools' build of our packages with the package
    data that setup.cfg declares (recipes, built-in corpus, metric modules, card templates). A run from that copy
    alone, the repository off the path, must end with its Hub-ready folder and card."""
    build, egg_base = tmp_path / "site-packages", tmp_path / "egg-info"
    egg_base.mkdir()  # a fresh file list: a checkout's old *.egg-info/SOURCES.txt would add files setup.cfg omits
    setup_py = [sys.executable, "-c", "from setuptools import setup; setup()", "-q"]
    subprocess.run(
        [*setup_py, "egg_info", "--egg-base", str(egg_base), "build_py", "--build-lib", str(build)],
        cwd=REPO_ROOT, check=True, capture_output=True,
    )  # fmt: skip
    assert sorted(p.name for p in (build / "training" / "model_cards").glob("*.md")) == [
        "language_model.md",
        "translation.md",
    ]
    env = {**os.environ, "PYTHONPATH": str(build), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    code = (
        "import sys, training, hf_vanilla_transformer; "
        "print('from', training.__file__, hf_vanilla_transformer.__file__); "
        "from training.train_lm import main; from training.cli import run_main; run_main(main)"
    )
    recipe = build / "training" / "configs" / "shakespeare_char.yaml"
    args = [recipe, *TINY, "--max_steps", "2", "--output_dir", tmp_path / "run", "--sample_tokens", "4"]
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args), "--disable_tqdm", "true"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    imported_from = result.stdout.split("from ", 1)[1].split()[:2]
    assert all(path.startswith(str(build)) for path in imported_from), imported_from  # not the repository
    card = (tmp_path / "run" / "README.md").read_text()
    assert card.startswith("---\n") and "perplexity" in card


# ----------------------------------------------------------------------------------------------------------------------
# Mistakes in the input: one `error:` line, exit code 2, no traceback


def run_script_in_process(monkeypatch, capsys, argv):
    monkeypatch.setattr(sys, "argv", ["train_lm.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        run_main(main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()  # progress bars may come before it
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], err
    return lines[-1]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_file", "train_file not found: {tmp}/nope.txt"),
        ("empty_file", "train_file {tmp}/empty.txt is empty"),
        ("latin1_file", "train_file {tmp}/latin1.txt is not UTF-8 text"),
        ("unknown_field", "unknown recipe field(s): n_embd"),
        ("max_steps_0", "max_steps must be positive"),
        ("block_too_long", "the validation text is shorter than one block"),
        ("one_block_only", "the validation text is shorter than block_size + 1 = 65 tokens"),
        ("stride_too_long", "window_stride must be between 1 and block_size=64, got 65"),
        ("output_dir_not_empty", "output_dir {tmp}/out exists and is not empty"),
        ("bad_preset", "unknown preset 'gpt5'"),
    ],
)
def test_bad_input_gives_one_error_line(case, expected, tmp_path, monkeypatch, capsys, one_thread):
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("Où est la café?".encode("latin-1"))
    (tmp_path / "short.txt").write_text("To be, or not to be\n" * 20, encoding="utf-8")
    (tmp_path / "one_block.txt").write_text(("to be " * 17)[:100], encoding="utf-8")  # one block of 64 + a tail
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    (tmp_path / "bad.yaml").write_text("n_embd: 128\n")
    out = ["--output_dir", str(tmp_path / "run")]
    argv = {
        "missing_file": [RECIPE, "--train_file", str(tmp_path / "nope.txt"), *out],
        "empty_file": [RECIPE, "--train_file", str(tmp_path / "empty.txt"), *out],
        "latin1_file": [RECIPE, "--train_file", str(tmp_path / "latin1.txt"), *out],
        "unknown_field": [str(tmp_path / "bad.yaml"), *out],
        "max_steps_0": [RECIPE, "--max_steps", "0", *out],
        "block_too_long": [RECIPE, "--train_file", str(tmp_path / "short.txt"), "--block_size", "64", *out],
        "one_block_only": [
            RECIPE,
            "--train_file",
            str(tmp_path / "short.txt"),
            "--validation_file",
            str(tmp_path / "one_block.txt"),
            *out,
        ],
        "stride_too_long": [RECIPE, "--window_stride", "65", *out],
        "output_dir_not_empty": [RECIPE, "--output_dir", str(tmp_path / "out")],
        "bad_preset": [RECIPE, "--preset", "gpt5", *out],
    }[case]
    assert expected.format(tmp=tmp_path) in run_script_in_process(monkeypatch, capsys, argv)


def test_missing_train_file_from_the_command_line_has_no_traceback(tmp_path):
    missing = tmp_path / "missing.txt"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "training" / "train_lm.py"), RECIPE, "--train_file", str(missing)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: train_file not found: {missing}"


def test_hub_dataset_offline_suggests_train_file(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "training" / "train_lm.py"), RECIPE, "--dataset_name", "openwebtext"],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "datasets")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not load dataset 'openwebtext'") and "--train_file" in last
