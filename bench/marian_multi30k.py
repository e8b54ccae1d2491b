"""Reference point for the Multi30k recipe: transformers' own `MarianMTModel`, trained from scratch through exactly the
same procedure as `training/train_translation.py` (same recipe, data, shared BPE tokenizer, token batches, Eq. 3
schedule, label smoothing 0.1, wall-clock budget, checkpoint averaging, beam 4 / length penalty 0.6 test decoding).
Only the model differs: MarianMTModel sized like our `small` preset (post-LN, sinusoidal positions, ReLU, tied
embeddings, scaled embeddings -- the paper's architecture as transformers implements it).

    python bench/marian_multi30k.py training/configs/multi30k_en_de_small.yaml --output_dir runs/marian_multi30k

Prints the test BLEU with its sacreBLEU signature and writes all_results.json, like the training script.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import MarianConfig, MarianMTModel  # noqa: E402
from transformers.models.marian.modeling_marian import shift_tokens_right  # noqa: E402

from hf_vanilla_transformer.vanilla_layers import token_loss  # noqa: E402
from training.cli import run_main  # noqa: E402
from training.train_translation import main  # noqa: E402


class LabelSmoothedMarianMTModel(MarianMTModel):
    """MarianMTModel with the same loss as ours: label-smoothed cross-entropy summed over target tokens and divided
    by `num_items_in_batch` (stock Marian takes a plain per-batch mean and has no label smoothing)."""

    label_smoothing = 0.1

    def forward(self, input_ids=None, attention_mask=None, labels=None, num_items_in_batch=None, **kwargs):
        if labels is not None and kwargs.get("decoder_input_ids") is None:
            kwargs["decoder_input_ids"] = shift_tokens_right(
                labels, self.config.pad_token_id, self.config.decoder_start_token_id
            )
        outputs = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if labels is not None:
            outputs.loss = token_loss(outputs.logits, labels, self.label_smoothing, num_items_in_batch)
        return outputs


def build_marian(model_args, tokenizer, data_args):
    """MarianMTModel with the sizes our `small` preset (or the recipe's overrides) would give."""
    from hf_vanilla_transformer import VanillaTransformerConfig

    ours = VanillaTransformerConfig.from_preset(
        model_args.preset,
        **{
            name: getattr(model_args, name)
            for name in ("d_model", "num_heads", "ffn_dim", "num_encoder_layers", "num_decoder_layers", "dropout")
            if getattr(model_args, name) is not None
        },
    )
    config = MarianConfig(
        vocab_size=len(tokenizer),
        decoder_vocab_size=len(tokenizer),
        d_model=ours.d_model,
        encoder_layers=ours.num_encoder_layers,
        decoder_layers=ours.num_decoder_layers,
        encoder_attention_heads=ours.num_heads,
        decoder_attention_heads=ours.num_heads,
        encoder_ffn_dim=ours.ffn_dim,
        decoder_ffn_dim=ours.ffn_dim,
        dropout=ours.dropout,
        attention_dropout=0.0,
        activation_dropout=0.0,
        activation_function="relu",
        max_position_embeddings=max(data_args.max_source_length, data_args.max_target_length) + 2,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
        forced_eos_token_id=None,
    )
    model = LabelSmoothedMarianMTModel(config)
    model.label_smoothing = model_args.label_smoothing
    model.generation_config.num_beams = 4
    model.generation_config.length_penalty = 0.6
    model.generation_config.early_stopping = True
    print(f"MarianMTModel: {model.num_parameters() / 1e6:.2f}M parameters")
    return model


if __name__ == "__main__":
    run_main(lambda argv: main(argv, model_builder=build_marian, publish=False))
