"""See inside (issue 9): the shape trace of the real model and the attention heat maps."""

import os
import struct
import subprocess
import sys

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from hf_vanilla_transformer import (
    VanillaGPTConfig,
    VanillaGPTForCausalLM,
    VanillaTransformerConfig,
    VanillaTransformerForConditionalGeneration,
)
from hf_vanilla_transformer.trace import build_preset, parameter_table, trace_model
from hf_vanilla_transformer.visualize import attention_maps, attention_weights

from .conftest import REPO_ROOT

WORDS = "the cat sat on mat a dog ran in park die katze sass auf der matte ein hund lief im".split()
SOURCE, TARGET = "the cat sat on the mat", "die katze sass auf der matte"
IMPLEMENTATIONS = ["eager", "sdpa"]


@pytest.fixture(scope="module")
def tokenizer():
    """Whitespace words over a tiny vocabulary; <pad>=0, <s>=1, </s>=2 as in the configs; </s> appended."""
    vocab = {token: i for i, token in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_model(arch: str, implementation: str = "eager", **overrides):
    torch.manual_seed(0)
    if arch == "gpt":
        model = VanillaGPTForCausalLM(VanillaGPTConfig.from_preset("tiny", **overrides))
    else:
        model = VanillaTransformerForConditionalGeneration(VanillaTransformerConfig.from_preset("tiny", **overrides))
    model.set_attn_implementation(implementation)
    return model.eval()


def shapes_of(records) -> dict[str, tuple[int, ...]]:
    return {r.name: r.shape for r in records}


# --- trace ---------------------------------------------------------------------------------------------------------


def test_trace_of_base_preset_has_the_papers_shapes():
    # The paper's base model (d_model 512, h 8, d_k 64, d_ff 2048, N 6); a small vocabulary keeps it quick.
    model = build_preset("base", vocab_size=100)
    records = trace_model(model, torch.randint(3, 100, (2, 6)))  # B=2, T=S=6
    shapes = shapes_of(records)

    assert shapes["model.encoder.embeddings.input_ids"] == (2, 6)
    assert shapes["model.encoder.embeddings"] == (2, 6, 512)
    for attn in ("encoder.layers.0.self_attn", "decoder.layers.0.self_attn", "decoder.layers.0.cross_attn"):
        prefix = f"model.{attn}"
        assert shapes[f"{prefix}.q_proj"] == (2, 6, 512)
        for step in ("queries", "keys", "values", "weighted_sum"):
            assert shapes[f"{prefix}.{step}"] == (2, 8, 6, 64)
        assert shapes[f"{prefix}.scores"] == shapes[f"{prefix}.weights"] == (2, 8, 6, 6)
        assert shapes[f"{prefix}.concat"] == shapes[f"{prefix}.o_proj"] == (2, 6, 512)
    assert shapes["model.encoder.layers.0.mlp.fc1"] == (2, 6, 2048)
    assert shapes["model.decoder.layers.0.final_layer_norm"] == (2, 6, 512)
    assert shapes["lm_head"] == (2, 6, 100)
    assert shapes["model.decoder.layers.5"] == (2, 6, 512)
    assert all(type(r.shape) is tuple for r in records)
    params = {r.name: r.params for r in records}
    assert params["model.encoder.layers.0.self_attn.q_proj"] == 512 * 512 + 512  # W^Q and bias
    assert params["model.encoder.layers.0.mlp"] == 2 * 512 * 2048 + 2048 + 512  # Eq. 2: W_1, b_1, W_2, b_2
    assert sum(count for _, count in parameter_table(model)) == model.num_parameters()


def test_trace_follows_the_order_the_model_computes():
    model = tiny_model("transformer")
    names = [r.name for r in trace_model(model, torch.randint(3, 99, (2, 6)))]
    order = [
        "model.encoder.embeddings.input_ids",
        "model.encoder.embeddings",
        "model.encoder.layers.0.self_attn.q_proj",
        "model.encoder.layers.0.self_attn.scores",
        "model.encoder.layers.0.self_attn.weights",
        "model.encoder.layers.0.self_attn.weighted_sum",
        "model.encoder.layers.0.self_attn.o_proj",
        "model.encoder.layers.0.self_attn_layer_norm",
        "model.encoder.layers.0.mlp",
        "model.encoder.layers.1",
        "model.decoder.embeddings",
        "model.decoder.layers.0.cross_attn.weights",
        "model.decoder.layers.1",
        "lm_head",
    ]
    assert [names.index(name) for name in order] == sorted(names.index(name) for name in order)
    assert names[-1] == "lm_head"


def test_trace_of_source_and_target_of_different_lengths():
    model = tiny_model("transformer")  # d_model 32, 4 heads of 8
    records = trace_model(model, torch.randint(3, 99, (2, 7)), decoder_input_ids=torch.randint(3, 99, (2, 5)))
    shapes = shapes_of(records)
    assert shapes["model.decoder.layers.0.self_attn.scores"] == (2, 4, 5, 5)  # (B, H, T, T)
    assert shapes["model.decoder.layers.0.cross_attn.scores"] == (2, 4, 5, 7)  # (B, H, T, S)
    assert shapes["model.decoder.layers.0.cross_attn.keys"] == (2, 4, 7, 8)  # from the encoder output
    assert shapes["lm_head"] == (2, 5, 99)


def test_trace_of_gpt2_preset_has_gpt2_shapes():
    model = build_preset("gpt2", vocab_size=100, num_layers=1)  # 768 wide, 12 heads of 64
    shapes = shapes_of(trace_model(model, torch.randint(0, 100, (2, 6))))
    assert shapes["model.layers.0.self_attn.queries"] == (2, 12, 6, 64)
    assert shapes["model.layers.0.self_attn.scores"] == (2, 12, 6, 6)
    assert shapes["model.layers.0.mlp.fc1"] == (2, 6, 3072)
    assert shapes["model.final_norm"] == (2, 6, 768)  # pre-LN: one more LayerNorm after the last block
    assert shapes["lm_head"] == (2, 6, 100)
    assert not any(".cross_attn" in name for name in shapes)


@pytest.mark.parametrize("arch", ["transformer", "gpt"])
def test_parameter_table_adds_up_to_num_parameters(arch):
    model = tiny_model(arch)
    table = dict(parameter_table(model))
    assert sum(table.values()) == model.num_parameters()
    assert table["lm_head"] == 0  # tied to the token embedding (§3.4), counted there


def test_trace_leaves_no_hooks_behind():
    model = tiny_model("transformer")
    ids = torch.randint(3, 99, (2, 6))
    with torch.no_grad():
        expected = model(input_ids=ids, decoder_input_ids=ids).logits
    # transformers keeps the hooks of `output_attentions` installed once used; ours must be gone
    hooks = lambda: [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]  # noqa: E731
    trace_model(model, ids)
    before = hooks()
    trace_model(model, ids)
    assert hooks() == before
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, decoder_input_ids=ids).logits, expected)


# --- attention weights ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_encoder_decoder_attention_weights_are_masked_distributions(implementation):
    model = tiny_model("transformer", implementation)
    input_ids = torch.randint(3, 99, (2, 7))
    attention_mask = torch.ones(2, 7, dtype=torch.long)
    attention_mask[1, 4:] = 0  # the second source is 4 tokens long, then padding
    with torch.no_grad():
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=torch.randint(3, 99, (2, 5)),
            output_attentions=True,
        )
    for weights in (*out.encoder_attentions, *out.decoder_attentions, *out.cross_attentions):
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))  # each row: a distribution
    for weights in out.decoder_attentions:  # (B, H, T, T): no query sees a later target token
        assert weights.shape == (2, 4, 5, 5)
        assert torch.count_nonzero(weights.triu(diagonal=1)) == 0
    for weights in (*out.encoder_attentions, *out.cross_attentions):  # padded source keys get nothing
        assert torch.count_nonzero(weights[1, :, :, 4:]) == 0
        assert torch.all(weights[0] > 0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_gpt_attention_weights_are_causal_distributions(implementation):
    model = tiny_model("gpt", implementation)
    attention_mask = torch.ones(2, 6, dtype=torch.long)
    attention_mask[1, 4:] = 0  # right padding
    with torch.no_grad():
        out = model(input_ids=torch.randint(3, 99, (2, 6)), attention_mask=attention_mask, output_attentions=True)
    for weights in out.attentions:  # (B, H, T, T)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
        assert torch.count_nonzero(weights.triu(diagonal=1)) == 0
        assert torch.count_nonzero(weights[1, :, :, 4:]) == 0  # padded keys get nothing


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_attention_weights_follow_the_tokens(tokenizer, implementation):
    model = tiny_model("transformer", implementation)
    maps = attention_weights(model, tokenizer, SOURCE, TARGET)
    assert maps["encoder"].query_tokens == maps["cross"].key_tokens == [*SOURCE.split(), "</s>"]
    assert maps["decoder"].query_tokens == maps["cross"].query_tokens == ["<s>", *TARGET.split(), "</s>"]
    assert maps["encoder"].weights.shape == (2, 4, 7, 7)  # (L, H, S, S)
    assert maps["cross"].weights.shape == (2, 4, 8, 7)  # (L, H, T, S)
    assert torch.count_nonzero(maps["decoder"].weights.triu(diagonal=1)) == 0
    for single in maps.values():
        torch.testing.assert_close(single.weights.sum(-1), torch.ones(single.weights.shape[:-1]))

    gpt = attention_weights(tiny_model("gpt", implementation), tokenizer, SOURCE)
    assert list(gpt) == ["self"] and gpt["self"].weights.shape == (2, 4, 7, 7)
    assert torch.count_nonzero(gpt["self"].weights.triu(diagonal=1)) == 0


def test_attention_weights_without_target_use_the_generated_output(tokenizer):
    maps = attention_weights(tiny_model("transformer"), tokenizer, SOURCE)
    assert maps["decoder"].query_tokens[0] == "<s>"  # the decoder start token, then the greedy output
    assert maps["cross"].weights.shape[2] == len(maps["decoder"].query_tokens)


# --- figures and command lines -------------------------------------------------------------------------------------


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_attention_maps_draw_a_layer_by_head_grid_per_kind(tokenizer, tmp_path):
    pytest.importorskip("matplotlib")
    fig = attention_maps(tiny_model("transformer"), tokenizer, SOURCE, TARGET)
    heat_maps = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert len(heat_maps) == 3 * 2 * 4  # kinds x layers x heads
    assert [label.get_text() for label in heat_maps[0].get_yticklabels()] == [*SOURCE.split(), "</s>"]
    fig.savefig(tmp_path / "maps.png", dpi=60)
    width, height = png_size(tmp_path / "maps.png")
    assert width > 300 and height > 300 and (tmp_path / "maps.png").stat().st_size > 20_000

    from matplotlib.image import imread

    pixels = imread(tmp_path / "maps.png")
    assert pixels.shape[:2] == (height, width) and pixels.std() > 0.05  # an image, not a blank page

    fig = attention_maps(tiny_model("gpt"), tokenizer, SOURCE, layers=[1], heads=[0, 2], kind="self")
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["layer 1, head 0", "layer 1, head 2"]
    with pytest.raises(ValueError, match="unknown kind"):
        attention_maps(tiny_model("gpt"), tokenizer, SOURCE, kind="cross")


def test_attention_maps_without_matplotlib_say_what_to_install(tokenizer, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib...` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install hf_vanilla_transformer\[viz\]"):
        attention_maps(tiny_model("gpt"), tokenizer, SOURCE)


def run_module(*args, cwd) -> str:
    result = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"},
    )
    assert result.returncode == 0, f"STDOUT:\n{result.stdout}\nSTDERR:\n{result.stderr}"
    return result.stdout


@pytest.mark.parametrize("arch", ["transformer", "gpt"])
def test_visualize_and_trace_command_lines_on_a_saved_model(tokenizer, tmp_path, arch):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "model"
    tiny_model(arch).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    target = ["--target", TARGET] if arch == "transformer" else []
    out = tmp_path / "maps.png"
    stdout = run_module(
        "hf_vanilla_transformer.visualize", str(folder), SOURCE, *target, "--out", str(out), cwd=REPO_ROOT
    )
    assert "wrote" in stdout and png_size(out)[0] > 300

    if arch == "gpt":
        return  # the GPT's trace command line is tested on a preset below
    stdout = run_module("hf_vanilla_transformer.trace", "--model", str(folder), cwd=REPO_ROOT)
    assert "(2, 4, 6, 8)" in stdout  # B=2, H=4, T=6, d_k=8
    assert stdout.count(f"{tiny_model(arch).num_parameters():,}") == 2  # total and model.num_parameters()


def test_trace_command_line_on_a_preset():
    stdout = run_module(
        "hf_vanilla_transformer.trace", "--preset", "tiny", "--arch", "gpt", "--seq_len", "5", cwd=REPO_ROOT
    )
    assert "model.layers.0.self_attn.scores" in stdout and "(2, 4, 5, 5)" in stdout
    assert "model.layers.1.self_attn" not in stdout  # later layers are summarised without --all_layers
