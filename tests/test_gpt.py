"""The GPT variant: sizes against the published models, generation, attention kernels, loss, training, loading."""

import copy
import json
import logging

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

from hf_vanilla_transformer import VanillaGPTConfig, VanillaGPTForCausalLM, VanillaGPTModel
from hf_vanilla_transformer.vanilla_layers import apply_dropout
from tests.conftest import make_hub_cache, run_without_package

VARIANTS = {
    "pre-ln/learned/gelu": dict(norm_position="pre", position_embedding="learned", activation="gelu"),
    "post-ln/sinusoidal/relu": dict(norm_position="post", position_embedding="sinusoidal", activation="relu"),
    "swiglu": dict(activation="swiglu"),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run ~50x faster on one thread when the 2 cores are shared (two threads spin-wait for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int = 0, **overrides) -> VanillaGPTForCausalLM:
    torch.manual_seed(seed)
    config = VanillaGPTConfig.from_preset("tiny", pad_token_id=0, **overrides)
    return VanillaGPTForCausalLM(config).eval()


def prompt(length: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 99, (batch, length), generator=generator)  # never the pad id 0


def greedy(model, input_ids, attention_mask=None, new_tokens=8, **kwargs):
    return model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids) if attention_mask is None else attention_mask,
        max_new_tokens=new_tokens,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
        **kwargs,
    )


# --- sizes and configuration -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "preset, published",
    [
        ("gpt1", 116.5e6),  # GPT-1, Radford et al. 2018 (with its 40478-token vocabulary)
        ("gpt2", 124.4e6),  # GPT-2 small as released (124,439,808 parameters)
        ("shakespeare-char", 10.65e6),  # nanoGPT's train_shakespeare_char: "number of parameters: 10.65M"
    ],
)
def test_parameter_counts_match_published_figures(preset, published):
    with torch.device("meta"):
        model = VanillaGPTForCausalLM(VanillaGPTConfig.from_preset(preset))
    count = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    assert abs(count / published - 1) < 0.02, f"{preset}: {count:,} parameters vs {published:,.0f} published"


def test_gpt2_preset_has_exactly_the_parameters_of_transformers_gpt2():
    with torch.device("meta"):
        ours = VanillaGPTForCausalLM(VanillaGPTConfig.from_preset("gpt2"))
        reference = GPT2LMHeadModel(GPT2Config())  # GPT-2 small
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters()) == 124_439_808


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(d_model=30, num_heads=4), "divisible"),
        (dict(num_layers=0), "num_layers"),
        (dict(activation="tanh"), "activation"),
        (dict(norm_position="middle"), "norm_position"),
        (dict(position_embedding="rotary"), "position_embedding"),
        (dict(dropout=1.5), "dropout"),
        (dict(eos_token_id=99), "eos_token_id"),
    ],
)
def test_impossible_configs_raise_value_error(overrides, field):
    with pytest.raises(ValueError, match=field):
        VanillaGPTConfig.from_preset("tiny", **overrides)


def test_unknown_preset_raises_value_error():
    with pytest.raises(ValueError, match="gpt5"):
        VanillaGPTConfig.from_preset("gpt5")


def test_final_layer_norm_only_for_pre_ln():
    assert tiny_model(norm_position="pre").model.final_norm is not None
    assert tiny_model(norm_position="post").model.final_norm is None


def test_residual_projections_start_smaller_as_in_gpt2():
    model = tiny_model(num_layers=8, d_model=256, ffn_dim=512, num_heads=4)
    layer = model.model.layers[0]
    expected = 0.02 / (2 * 8) ** 0.5  # GPT-2 §2.3: 1/sqrt(N) with N = 2 residual layers per block
    for proj in (layer.self_attn.o_proj, layer.mlp.fc2):
        assert proj.weight.std().item() == pytest.approx(expected, rel=0.05)
        assert not proj.bias.any()
    assert layer.self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)


# --- generation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_greedy_equals_uncached(variant):
    model = tiny_model(**VARIANTS[variant])
    input_ids = prompt(5, batch=2)
    cached = greedy(model, input_ids, use_cache=True)
    uncached = greedy(model, input_ids, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    for step_cached, step_uncached in zip(cached.logits, uncached.logits, strict=True):
        torch.testing.assert_close(step_cached, step_uncached, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["pre-ln/learned/gelu", "post-ln/sinusoidal/relu"])
def test_left_padded_row_generates_like_the_prompt_alone(variant):
    model = tiny_model(**VARIANTS[variant])
    long, short = prompt(7, seed=2), prompt(3, seed=3)
    pad = torch.zeros(1, 4, dtype=torch.long)
    input_ids = torch.cat([long, torch.cat([pad, short], dim=1)])  # (2, 7), second row left-padded
    attention_mask = (input_ids != 0).long()
    batched = greedy(model, input_ids, attention_mask)
    alone = greedy(model, short)
    assert torch.equal(batched.sequences[1, 7:], alone.sequences[0, 3:])
    for step_batched, step_alone in zip(batched.logits, alone.logits, strict=True):
        torch.testing.assert_close(step_batched[1:], step_alone, atol=1e-5, rtol=1e-5)


def test_logits_to_keep_returns_only_the_last_positions():
    model = tiny_model()
    input_ids = prompt(6, batch=2)
    full = model(input_ids).logits  # (B, T, vocab)
    assert full.shape == (2, 6, 99)
    torch.testing.assert_close(model(input_ids, logits_to_keep=1).logits, full[:, -1:])
    torch.testing.assert_close(model(input_ids, logits_to_keep=3).logits, full[:, -3:])
    torch.testing.assert_close(model(input_ids, logits_to_keep=torch.tensor([0, 4])).logits, full[:, [0, 4]])


def test_seeded_sampling_with_top_k_top_p_temperature_is_reproducible():
    model = tiny_model()
    input_ids = prompt(4, batch=3)
    settings = dict(do_sample=True, top_k=20, top_p=0.9, temperature=0.7, max_new_tokens=10)

    def sample(seed):
        torch.manual_seed(seed)
        return model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **settings)

    first, again = sample(0), sample(0)
    assert torch.equal(first, again)
    assert first.shape == (3, 14)
    assert not torch.equal(first, sample(1))


def test_too_long_input_raises_value_error_naming_both_lengths():
    model = tiny_model()  # 64 learned positions
    with pytest.raises(ValueError, match=r"65 exceeds max_position_embeddings=64"):
        model(prompt(65))
    with pytest.raises(ValueError, match=r"70 exceeds max_position_embeddings=64"):
        model.generate(prompt(70), attention_mask=torch.ones(1, 70, dtype=torch.long), max_new_tokens=2)
    # A prompt that fits but a generation that runs past the table stops at the first position beyond it.
    with pytest.raises(ValueError, match=r"65 exceeds max_position_embeddings=64"):
        model.generate(prompt(60), attention_mask=torch.ones(1, 60, dtype=torch.long), max_new_tokens=10)


def test_sinusoidal_positions_accept_any_length():
    model = tiny_model(position_embedding="sinusoidal")
    assert model(prompt(80)).logits.shape == (1, 80, 99)


# --- attention -----------------------------------------------------------------------------------------------------


def test_eager_and_sdpa_agree_and_set_attn_implementation_switches():
    model = tiny_model()
    input_ids = prompt(6, batch=2)
    attention_mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    model.set_attn_implementation("sdpa")
    assert model.config._attn_implementation == "sdpa"
    sdpa = model(input_ids, attention_mask=attention_mask).logits
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    eager = model(input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(sdpa[:, 2:], eager[:, 2:], atol=1e-4, rtol=1e-4)  # rows of padding are don't-care
    torch.testing.assert_close(sdpa[0], eager[0], atol=1e-4, rtol=1e-4)


def test_output_attentions_are_causal_and_normalised():
    model = tiny_model()  # sdpa: output_attentions falls back to the eager kernel
    input_ids = prompt(7, batch=2)
    outputs = model(input_ids, output_attentions=True, output_hidden_states=True)
    assert len(outputs.attentions) == model.config.num_layers
    assert len(outputs.hidden_states) == model.config.num_layers + 1  # embeddings, then each block
    torch.testing.assert_close(
        outputs.hidden_states[0], model.model.embeddings(input_ids, position_ids=torch.arange(7)[None])
    )
    torch.testing.assert_close(outputs.hidden_states[-1], model.model(input_ids).last_hidden_state)  # after final norm
    for weights in outputs.attentions:
        assert weights.shape == (2, 4, 7, 7)  # (B, H, T, T)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 7))
        assert not weights.triu(diagonal=1).any()  # no token sees the future


def test_base_model_returns_hidden_states_and_cache():
    model = VanillaGPTModel(VanillaGPTConfig.from_preset("tiny")).eval()
    outputs = model(prompt(5), use_cache=True)
    assert outputs.last_hidden_state.shape == (1, 5, 32)
    assert outputs.past_key_values.get_seq_length() == 5


# --- loss and training ---------------------------------------------------------------------------------------------


def test_loss_equals_cross_entropy_on_shifted_logits():
    model = tiny_model()
    input_ids = prompt(8, batch=2)
    labels = input_ids.clone()
    labels[1, :3] = -100  # e.g. a prompt that is not trained on
    outputs = model(input_ids, labels=labels)
    expected = F.cross_entropy(outputs.logits[:, :-1].reshape(-1, 99), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(outputs.loss, expected)


def test_shift_labels_train_every_position_including_the_last():
    model = tiny_model()
    window = prompt(9, batch=2)  # nanoGPT: x = window[:, :-1], y = window[:, 1:]
    outputs = model(window[:, :-1], shift_labels=window[:, 1:])
    expected = F.cross_entropy(outputs.logits.reshape(-1, 99), window[:, 1:].reshape(-1))
    torch.testing.assert_close(outputs.loss, expected)
    # The same first T - 1 targets as labels that the model shifts itself; only the last position is extra.
    with_labels = model(window[:, :-1], labels=window[:, :-1]).loss
    first = F.cross_entropy(outputs.logits[:, :-1].reshape(-1, 99), window[:, 1:-1].reshape(-1))
    torch.testing.assert_close(with_labels, first)
    assert not torch.isclose(outputs.loss, with_labels)


def test_dropout_keeps_one_minus_p_scaled_and_its_gradient_follows_the_mask():
    x = torch.ones(200, 500, requires_grad=True)
    out = apply_dropout(x, 0.1, training=True)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.005  # 100k draws: the standard error is 0.001
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.9))
    out.sum().backward()
    torch.testing.assert_close(x.grad, out.detach())  # d(out)/dx is the scaled mask itself
    assert not torch.equal(kept, apply_dropout(x, 0.1, training=True) != 0)  # a fresh mask each call
    assert apply_dropout(x, 0.1, training=False) is x and apply_dropout(x, 0.0, training=True) is x


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model(**VARIANTS["pre-ln/learned/gelu"]).train()
    input_ids = prompt(8, batch=2)

    def gradients():
        model.zero_grad()
        model(input_ids, labels=input_ids).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = gradients()
    model.activation_checkpointing_enable()
    checkpointed = gradients()
    assert model.model.layers[0].gradient_checkpointing
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


def _train_one_step(model, tmp_path, batch_size, accumulation):
    generator = torch.Generator().manual_seed(5)
    rows = []
    for kept in (8, 2, 5, 1):  # unequal numbers of trained tokens per row: a mean per micro-batch would be wrong
        input_ids = torch.randint(1, 99, (8,), generator=generator)
        labels = input_ids.clone()
        labels[: 8 - kept] = -100
        rows.append({"input_ids": input_ids, "attention_mask": torch.ones(8, dtype=torch.long), "labels": labels})
    args = TrainingArguments(
        output_dir=str(tmp_path / f"b{batch_size}x{accumulation}"),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=1.0,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=rows).train()
    return model


def test_gradient_accumulation_through_trainer_equals_one_large_batch(tmp_path):
    initial = tiny_model()
    one_batch = _train_one_step(copy.deepcopy(initial), tmp_path, batch_size=4, accumulation=1)
    accumulated = _train_one_step(copy.deepcopy(initial), tmp_path, batch_size=2, accumulation=2)
    moved = False
    for (name, p_one), p_acc, p_init in zip(
        one_batch.named_parameters(), accumulated.parameters(), initial.parameters(), strict=True
    ):
        torch.testing.assert_close(p_acc, p_one, atol=1e-5, rtol=1e-5, msg=name)
        moved |= not torch.allclose(p_one, p_init)
    assert moved, "the training step changed nothing"


# --- saving and loading ----------------------------------------------------------------------------------------------


def test_save_and_load_keep_outputs_and_one_tied_storage(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is VanillaGPTForCausalLM  # the registered local class wins over the shipped copy
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embeddings.embed_tokens.weight.data_ptr()
    input_ids = prompt(6)
    torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits, atol=0, rtol=0)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_vanilla_gpt.VanillaGPTForCausalLM"
    assert config["auto_map"]["AutoModel"] == "modeling_vanilla_gpt.VanillaGPTModel"
    assert {"modeling_vanilla_gpt.py", "configuration_vanilla_gpt.py", "vanilla_layers.py"} <= {
        p.name for p in tmp_path.iterdir()
    }
    # Remote code in the same process as the registered package.
    remote = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    torch.testing.assert_close(remote(input_ids).logits, model(input_ids).logits, atol=0, rtol=0)
    base = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    torch.testing.assert_close(base(input_ids).last_hidden_state, model.model(input_ids).last_hidden_state)


class _Texts(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        input_ids = prompt(8, seed=index)[0]
        return {"input_ids": input_ids, "labels": input_ids}


def test_trainer_checkpoint_of_tied_model_saves_and_resumes(tmp_path, caplog):
    def trainer(max_steps):
        args = TrainingArguments(
            output_dir=str(tmp_path),
            per_device_train_batch_size=2,
            max_steps=max_steps,
            save_steps=2,
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
            seed=0,
        )
        return Trainer(model=tiny_model(seed=5).train(), args=args, train_dataset=_Texts())

    trainer(2).train()
    with caplog.at_level(logging.WARNING):
        resumed = trainer(4)
        resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert resumed.state.global_step == 4
    assert "missing" not in caplog.text.lower() and "share memory" not in caplog.text.lower()
    assert resumed.model.lm_head.weight is resumed.model.model.embeddings.embed_tokens.weight


CHARACTERS = "abcdefghijklmnopqrstuvwxyz .,"


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: BPE with single characters as its vocabulary and no merges."""
    from tokenizers import Tokenizer, decoders, models

    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{c: i + 3 for i, c in enumerate(CHARACTERS)}}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.decoder = decoders.Fuse()  # join characters without spaces
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def test_pipeline_runs_remote_code_by_path_and_by_repo_id_without_the_package(tmp_path):
    tokenizer = char_tokenizer()
    assert tokenizer.decode(tokenizer("to be, or not")["input_ids"]) == "to be, or not"
    torch.manual_seed(0)
    config = VanillaGPTConfig.from_preset("tiny", vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=2)
    model = VanillaGPTForCausalLM(config).eval()
    folder = tmp_path / "tiny-gpt"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    make_hub_cache(folder, tmp_path / "hub", "someone/tiny-gpt")

    input_ids = tokenizer("to be", return_tensors="pt")["input_ids"]
    new_ids = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=6, do_sample=False)
    expected = tokenizer.decode(new_ids[0])

    output = run_without_package(
        """
        import json
        from transformers import pipeline
        texts = {}
        for name in ("tiny-gpt", "someone/tiny-gpt"):
            pipe = pipeline("text-generation", model=name, trust_remote_code=True)
            assert type(pipe.model).__module__.startswith("transformers_modules"), type(pipe.model).__module__
            result = pipe("to be", max_new_tokens=6, do_sample=False)
            texts[name] = result[0]["generated_text"]
        print(json.dumps(texts))
        """,
        cwd=tmp_path,
        env={
            "HF_HUB_CACHE": str(tmp_path / "hub"),
            "HF_MODULES_CACHE": str(tmp_path / "modules"),
            "OMP_NUM_THREADS": "1",
        },
    )
    texts = json.loads(output.strip().splitlines()[-1])
    assert texts == {"tiny-gpt": expected, "someone/tiny-gpt": expected}
