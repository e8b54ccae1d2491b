"""The encoder-decoder of "Attention Is All You Need" as a transformers 5 model: sizes, tying, attention kernels,
generation, loss and gradient accumulation, checkpoints and remote code."""

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, Seq2SeqTrainer, Seq2SeqTrainingArguments

from hf_vanilla_transformer import (
    VanillaTransformerConfig,
    VanillaTransformerForConditionalGeneration,
    VanillaTransformerModel,
)
from tests.conftest import make_hub_cache, run_without_package

VARIANTS = {
    "paper": {},  # post-LN, sinusoidal, ReLU
    "pre_ln_learned_gelu": dict(norm_position="pre", position_embedding="learned", activation="gelu"),
    "swiglu": dict(activation="swiglu"),
}


def tiny_model(seed=0, **overrides) -> VanillaTransformerForConditionalGeneration:
    torch.manual_seed(seed)
    model = VanillaTransformerForConditionalGeneration(VanillaTransformerConfig.from_preset("tiny", **overrides))
    return model.eval()


def source_batch(seed=1, batch=3, length=7):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, 99, (batch, length), generator=generator)


# --- sizes and configuration -------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset,paper_count", [("base", 65e6), ("big", 213e6)])
def test_parameter_count_matches_paper_table_3(preset, paper_count):
    config = VanillaTransformerConfig.from_preset(preset, vocab_size=37000)
    with torch.device("meta"):
        model = VanillaTransformerForConditionalGeneration(config)
    count = model.num_parameters()
    assert abs(count - paper_count) / paper_count < 0.04, count


def test_presets_have_paper_sizes():
    base, big = VanillaTransformerConfig.from_preset("base"), VanillaTransformerConfig.from_preset("big")
    assert (base.d_model, base.num_heads, base.ffn_dim, base.num_encoder_layers, base.dropout) == (512, 8, 2048, 6, 0.1)
    assert (big.d_model, big.num_heads, big.ffn_dim, big.dropout) == (1024, 16, 4096, 0.3)
    assert VanillaTransformerConfig().to_dict()["d_model"] == 512  # defaults are the base model
    assert base.hidden_size == 512 and base.num_attention_heads == 8  # HF names map onto the paper's


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (dict(d_model=100, num_heads=3), "d_model=100 must be divisible by num_heads=3"),
        (dict(activation="tanh"), "activation='tanh'"),
        (dict(norm_position="middle"), "norm_position='middle'"),
        (dict(position_embedding="rotary"), "position_embedding='rotary'"),
        (dict(dropout=1.5), "dropout"),
        (dict(num_encoder_layers=0), "num_encoder_layers must be a positive integer, got 0"),
        (dict(pad_token_id=500), "pad_token_id=500 is outside the vocabulary"),
    ],
)
def test_impossible_config_names_field_and_value(overrides, fragment):
    with pytest.raises(ValueError, match="VanillaTransformerConfig") as info:
        VanillaTransformerConfig.from_preset("tiny", **overrides)
    assert fragment in str(info.value)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*base, big, small, tiny"):
        VanillaTransformerConfig.from_preset("huge")


def test_auto_classes_know_the_model():
    config = AutoConfig.for_model("vanilla-transformer", **VanillaTransformerConfig.PRESETS["tiny"])
    assert isinstance(AutoModelForSeq2SeqLM.from_config(config), VanillaTransformerForConditionalGeneration)
    assert isinstance(AutoModel.from_config(config), VanillaTransformerModel)


# --- the paper's architecture ------------------------------------------------------------------------------------


def test_three_way_tied_embedding_is_one_storage():
    model = tiny_model()
    source = model.model.encoder.embeddings.embed_tokens.weight
    assert source is model.model.decoder.embeddings.embed_tokens.weight
    assert source is model.lm_head.weight
    assert abs(source.std().item() - model.config.init_std) < 0.005  # N(0, init_std), as BART/Marian


def test_untied_config_gets_three_matrices():
    model = tiny_model(tie_word_embeddings=False)
    weights = [
        model.model.encoder.embeddings.embed_tokens.weight,
        model.model.decoder.embeddings.embed_tokens.weight,
        model.lm_head.weight,
    ]
    assert len({w.data_ptr() for w in weights}) == 3


def test_sinusoidal_positions_follow_section_3_5():
    from hf_vanilla_transformer.vanilla_layers import sinusoidal_positions

    d_model = 16
    pe = sinusoidal_positions(torch.arange(50)[None], d_model)[0]  # (T, d_model)
    pos, i = 37, 3
    assert torch.isclose(pe[pos, 2 * i], torch.tensor(torch.sin(torch.tensor(pos / 10000 ** (2 * i / d_model))).item()))
    assert torch.isclose(pe[pos, 2 * i + 1], torch.cos(torch.tensor(pos / 10000 ** (2 * i / d_model))))


def test_encoder_output_is_layer_normed_in_post_ln_and_pre_ln():
    for norm_position in ("post", "pre"):
        model = tiny_model(norm_position=norm_position)
        memory = model.model.encoder(input_ids=source_batch()).last_hidden_state
        # Both end in a LayerNorm with unit weight at init: per-position mean 0 and std 1.
        assert memory.mean(-1).abs().max() < 1e-4
        assert (memory.std(-1, unbiased=False) - 1).abs().max() < 1e-2


def test_dropout_is_active_in_training_only():
    model = tiny_model(dropout=0.3)
    batch = dict(input_ids=source_batch(), decoder_input_ids=source_batch(2))
    with torch.no_grad():
        eval_logits = model(**batch).logits
        assert torch.equal(eval_logits, model(**batch).logits)
        model.train()
        assert not torch.allclose(model(**batch).logits, eval_logits)


# --- attention kernels -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_eager_and_sdpa_give_the_same_logits(variant):
    model = tiny_model(**VARIANTS[variant])
    input_ids = source_batch()
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 5:] = 0  # one padded row
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=source_batch(3, length=5))
    with torch.no_grad():
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
        eager = model(**batch).logits
        model.set_attn_implementation("sdpa")
        assert model.config._attn_implementation == "sdpa"
        sdpa = model(**batch).logits
    torch.testing.assert_close(eager, sdpa, atol=1e-4, rtol=0)


def test_flex_attention_gives_the_same_logits_as_eager():
    model = tiny_model()
    input_ids = source_batch()
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 5:] = 0
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=source_batch(3, length=5))
    with torch.no_grad():
        model.set_attn_implementation("eager")
        eager = model(**batch).logits
        model.set_attn_implementation("flex_attention")
        flex = model(**batch).logits
    torch.testing.assert_close(eager, flex, atol=1e-4, rtol=0)


def test_output_attentions_returns_weights_for_each_attention():
    model = tiny_model()
    model.set_attn_implementation("sdpa")
    out = model(input_ids=source_batch(), decoder_input_ids=source_batch(2, length=5), output_attentions=True)
    assert len(out.encoder_attentions) == len(out.decoder_attentions) == len(out.cross_attentions) == 2
    assert out.encoder_attentions[0].shape == (3, 4, 7, 7)  # (B, H, S, S)
    assert out.decoder_attentions[0].shape == (3, 4, 5, 5)  # (B, H, T, T)
    assert out.cross_attentions[0].shape == (3, 4, 5, 7)  # (B, H, T, S)
    decoder_self = out.decoder_attentions[1]
    torch.testing.assert_close(decoder_self.sum(-1), torch.ones(3, 4, 5))
    assert decoder_self.triu(1).abs().max() == 0  # causal: nothing above the diagonal


# --- generation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_greedy_equals_uncached(variant):
    model = tiny_model(**VARIANTS[variant])
    source = source_batch()
    kwargs = dict(num_beams=1, do_sample=False, max_new_tokens=12, min_new_tokens=12)
    cached = model.generate(source, use_cache=True, **kwargs)
    uncached = model.generate(source, use_cache=False, **kwargs)
    assert cached.shape == (3, 13)
    assert torch.equal(cached, uncached)


def test_cached_beam_search_equals_uncached():
    """Also the beam scores: our `_reorder_cache` moves only the decoder's self-attention cache with the beams
    (the cross-attention keys/values are the same in every beam of a sentence). Without a cache nothing can be
    reordered wrongly; a cache left unreordered changes the scores here even where it leaves the tokens alone."""
    model = tiny_model()
    source = source_batch()
    kwargs = dict(
        num_beams=4, num_return_sequences=2, length_penalty=0.6, max_new_tokens=10, min_new_tokens=10,
        return_dict_in_generate=True, output_scores=True,
    )  # fmt: skip
    cached = model.generate(source, use_cache=True, **kwargs)
    uncached = model.generate(source, use_cache=False, **kwargs)
    assert cached.sequences.shape[0] == 6  # B * num_return_sequences
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores)


def test_reorder_cache_moves_self_attention_rows_and_keeps_cross_attention():
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    model = tiny_model()
    rows = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 3, 5)  # (B·beams, H, len, d_k): row i holds i
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    cache.self_attention_cache.update(rows.clone(), rows.clone(), 0)
    cross_keys, cross_values = cache.cross_attention_cache.update(rows.clone(), rows.clone(), 0)
    beam_idx = torch.tensor([1, 1, 2, 2])  # two sentences x two beams; beams stay within their sentence
    assert model._reorder_cache(cache, beam_idx) is cache
    moved = cache.self_attention_cache.layers[0]
    assert moved.keys[:, 0, 0, 0].tolist() == [1, 1, 2, 2] and moved.values[:, 0, 0, 0].tolist() == [1, 1, 2, 2]
    assert cache.cross_attention_cache.layers[0].keys is cross_keys  # not copied
    assert cache.cross_attention_cache.layers[0].values is cross_values


@pytest.mark.parametrize("num_beams", [1, 4])
def test_padded_row_decodes_exactly_as_alone(num_beams):
    model = tiny_model()
    short, long = source_batch(5, batch=1, length=4), source_batch(6, batch=1, length=9)
    padded = torch.full((2, 9), model.config.pad_token_id)
    padded[0, :4], padded[1] = short[0], long[0]
    mask = (torch.arange(9) < torch.tensor([[4], [9]])).long()
    kwargs = dict(num_beams=num_beams, max_new_tokens=10, min_new_tokens=10)
    together = model.generate(padded, attention_mask=mask, **kwargs)
    assert torch.equal(together[0], model.generate(short, **kwargs)[0])
    assert torch.equal(together[1], model.generate(long, **kwargs)[0])


def test_seeded_sampling_is_reproducible():
    model = tiny_model()
    kwargs = dict(do_sample=True, num_beams=1, top_k=20, top_p=0.9, temperature=1.5, max_new_tokens=10)
    torch.manual_seed(7)
    first = model.generate(source_batch(), **kwargs)
    torch.manual_seed(7)
    assert torch.equal(first, model.generate(source_batch(), **kwargs))


def test_generation_config_carries_paper_decoding_and_ids():
    model = tiny_model()
    gen = model.generation_config
    assert (gen.num_beams, gen.length_penalty) == (4, 0.6)
    assert gen.decoder_start_token_id == model.config.decoder_start_token_id == 1
    assert (gen.eos_token_id, gen.pad_token_id) == (2, 0)
    assert gen.max_new_tokens is not None  # never the silent 20-token default
    out = model.generate(source_batch(), max_new_tokens=5)  # no ids passed by the caller
    assert (out[:, 0] == 1).all()


# --- loss and gradient accumulation ------------------------------------------------------------------------------


def labels_with_padding():
    labels = source_batch(9, batch=4, length=6)
    labels[0, 3:] = -100
    labels[2, 1:] = -100
    return labels


def test_loss_equals_torch_label_smoothed_cross_entropy_read_at_call_time():
    model = tiny_model()
    source, labels = source_batch(batch=4), labels_with_padding()
    for smoothing in (0.1, 0.0, 0.25):
        model.config.label_smoothing = smoothing
        out = model(input_ids=source, labels=labels)
        reference = F.cross_entropy(out.logits.reshape(-1, 99), labels.reshape(-1), label_smoothing=smoothing)
        torch.testing.assert_close(out.loss, reference)


def test_token_loss_gradient_equals_torch_cross_entropy():
    from hf_vanilla_transformer.vanilla_layers import token_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, dtype=torch.float64)
    labels = torch.randint(0, 11, (2, 5))
    labels[1, 3:] = -100
    for smoothing in (0.0, 0.1, 0.3):
        for num_items in (None, torch.tensor(12)):
            ours_in, torch_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
            ours = token_loss(ours_in, labels, smoothing, num_items)
            reduction = "mean" if num_items is None else "sum"
            reference = F.cross_entropy(
                torch_in.reshape(-1, 11), labels.reshape(-1), label_smoothing=smoothing, reduction=reduction
            ) / (1 if num_items is None else num_items)
            (3 * ours).backward()
            (3 * reference).backward()
            torch.testing.assert_close(ours.double(), reference)
            torch.testing.assert_close(ours_in.grad, torch_in.grad)
            assert ours_in.grad[1, 3:].abs().max() == 0  # ignored positions get no gradient


def test_decoder_inputs_are_labels_shifted_right():
    model = tiny_model()
    labels = torch.tensor([[10, 11, 2, -100], [12, 2, -100, -100]])
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels)
    assert decoder_input_ids.tolist() == [[1, 10, 11, 2], [1, 12, 2, 0]]
    via_labels = model(input_ids=source_batch(batch=2), labels=labels).logits
    explicit = model(input_ids=source_batch(batch=2), decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(via_labels, explicit)


class _Pairs(torch.utils.data.Dataset):
    """Pairs of different target lengths, so a mean per micro-batch would differ from the mean per batch."""

    def __init__(self):
        self.source, self.labels = source_batch(11, batch=4), labels_with_padding()

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"input_ids": self.source[i], "labels": self.labels[i]}


def _params_after_one_update(tmp_path, batch_size, accumulation):
    model = tiny_model(seed=3)
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path / f"acc{accumulation}"),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        train_sampling_strategy="sequential",
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # plain SGD: the update is the gradient itself
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=_Pairs(), optimizers=(optimizer, None))
    trainer.train()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_gradient_accumulation_is_exact_through_seq2seq_trainer(tmp_path):
    one_batch = _params_after_one_update(tmp_path, batch_size=4, accumulation=1)
    accumulated = _params_after_one_update(tmp_path, batch_size=2, accumulation=2)
    initial = dict(tiny_model(seed=3).named_parameters())
    assert any((one_batch[n] - initial[n]).abs().max() > 1e-3 for n in one_batch)  # the update did happen
    for name in one_batch:
        torch.testing.assert_close(accumulated[name], one_batch[name], atol=1e-5, rtol=0, msg=name)


def test_gradient_checkpointing_gives_the_same_gradients():
    source, labels = source_batch(batch=4), labels_with_padding()

    def gradients(checkpointing):
        model = tiny_model(seed=4).train()
        if checkpointing:
            model.activation_checkpointing_enable()  # transformers 5.23 name; the old one warns
            layers = [*model.model.encoder.layers, *model.model.decoder.layers]
            assert all(layer.gradient_checkpointing for layer in layers)  # really on, or the test proves nothing
        model(input_ids=source, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, checkpointed = gradients(False), gradients(True)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


# --- checkpoints and remote code ---------------------------------------------------------------------------------


def test_save_pretrained_writes_safetensors_auto_map_and_code(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert {"modeling_vanilla_transformer.py", "configuration_vanilla_transformer.py", "vanilla_layers.py"} <= files
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForSeq2SeqLM"].endswith("VanillaTransformerForConditionalGeneration")
    assert auto_map["AutoModel"].endswith("VanillaTransformerModel")
    assert auto_map["AutoConfig"].endswith("VanillaTransformerConfig")
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["num_beams"] == 4 and generation["length_penalty"] == 0.6


def test_saved_and_loaded_model_is_identical_and_still_tied(tmp_path, caplog):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert "missing" not in caplog.text.lower() and "unexpected" not in caplog.text.lower()
    embedding = loaded.model.encoder.embeddings.embed_tokens.weight
    assert embedding is loaded.lm_head.weight is loaded.model.decoder.embeddings.embed_tokens.weight
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    kwargs = dict(max_new_tokens=8)
    assert torch.equal(model.generate(source_batch(), **kwargs), loaded.generate(source_batch(), **kwargs))


def test_remote_code_loads_without_the_package_by_path_and_repo_id(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "folder")
    make_hub_cache(tmp_path / "folder", tmp_path / "hub", "someone/vanilla-tiny")
    expected = model.generate(source_batch(), max_new_tokens=6).tolist()
    code = f"""
        import torch
        from transformers import AutoModelForSeq2SeqLM
        source = torch.tensor({source_batch().tolist()})
        for name in ({str(tmp_path / "folder")!r}, "someone/vanilla-tiny"):
            model = AutoModelForSeq2SeqLM.from_pretrained(name, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            lm_head = model.get_output_embeddings().weight
            assert lm_head is model.get_input_embeddings().weight
            print(model.generate(source, max_new_tokens=6).tolist())
    """
    out = run_without_package(code, cwd=tmp_path, env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert out.splitlines() == [str(expected), str(expected)]


def test_remote_code_and_registered_classes_coexist_in_one_process(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    remote = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    local = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert isinstance(local, VanillaTransformerForConditionalGeneration)
    assert torch.equal(
        remote.generate(source_batch(), max_new_tokens=6), local.generate(source_batch(), max_new_tokens=6)
    )


def test_trainer_checkpoint_of_tied_model_saves_and_resumes(tmp_path, caplog):
    def trainer(max_steps):
        args = Seq2SeqTrainingArguments(
            output_dir=str(tmp_path),
            per_device_train_batch_size=2,
            max_steps=max_steps,
            save_steps=2,
            report_to=[],
            disable_tqdm=True,
            use_cpu=True,
            seed=0,
        )
        return Seq2SeqTrainer(model=tiny_model(seed=5), args=args, train_dataset=_Pairs())

    trainer(2).train()
    checkpoint = tmp_path / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file()
    with caplog.at_level(logging.WARNING):
        resumed = trainer(4)
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    assert "missing" not in caplog.text.lower() and "share memory" not in caplog.text.lower()
    model = resumed.model
    assert model.lm_head.weight is model.model.encoder.embeddings.embed_tokens.weight
