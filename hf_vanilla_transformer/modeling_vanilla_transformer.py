"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017), §3, Figure 1.

    source ids (B, S) -> VanillaEmbeddings -> N x VanillaLayer (self-attention, FFN)          -> memory (B, S, d_model)
    target ids (B, T) -> VanillaEmbeddings -> N x VanillaLayer (masked self-, cross-attn, FFN) -> (B, T, d_model)
                      -> lm_head (the shared embedding matrix, §3.4) -> logits (B, T, vocab)

Shape letters are defined in `vanilla_layers.py`.
"""

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_vanilla_transformer import VanillaTransformerConfig
from .vanilla_layers import (
    VanillaAttention,
    VanillaEmbeddings,
    VanillaLayer,
    VanillaPreTrainedModel,
    advertise_auto_classes,
    linear,
    positions_after_cache,
    token_loss,
)


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher forcing: decoder inputs are the labels moved one step right behind the start token (-100 -> pad)."""
    decoder_input_ids = labels.new_zeros(labels.shape)  # (B, T)
    decoder_input_ids[:, 1:] = labels[:, :-1]
    decoder_input_ids[:, 0] = decoder_start_token_id
    return decoder_input_ids.masked_fill(decoder_input_ids == -100, pad_token_id)


AUTO_MAP = {
    "AutoModel": "modeling_vanilla_transformer.VanillaTransformerModel",
    "AutoModelForSeq2SeqLM": "modeling_vanilla_transformer.VanillaTransformerForConditionalGeneration",
}


class VanillaTransformerPreTrainedModel(VanillaPreTrainedModel):
    config: VanillaTransformerConfig

    # Initialisation (the paper gives none): the library default, N(0, config.init_std = 0.02) for every linear layer
    # and the shared embedding, zero biases, LayerNorms at identity -- as BART/Marian. Measured on Multi30k
    # (bench/README.md): tensor2tensor's Glorot-uniform linears with N(0, d_model^-0.5) embeddings trained
    # markedly slower in a short budget.


class VanillaTransformerEncoder(VanillaTransformerPreTrainedModel):
    """Encoder, §3.1: a stack of N identical layers of self-attention and feed-forward sub-layers."""

    _can_record_outputs = {"hidden_states": VanillaLayer, "attentions": VanillaAttention}

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__(config)
        self.embeddings = VanillaEmbeddings(config)
        self.layers = nn.ModuleList([VanillaLayer(config, i) for i in range(config.num_encoder_layers)])
        # DEVIATION (option): pre-LN stacks need a final LayerNorm; the paper's post-LN stack ends normalised.
        self.final_norm = nn.LayerNorm(config.d_model, config.layer_norm_eps) if config.norm_position == "pre" else None
        self.post_init()

    @capture_outputs
    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs) -> BaseModelOutput:
        inputs = input_ids if input_ids is not None else inputs_embeds  # (B, S) or (B, S, d_model)
        position_ids = positions_after_cache(inputs, None)  # (1, S)
        hidden_states = self.embeddings(input_ids, inputs_embeds, position_ids)  # (B, S, d_model)
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask
        )  # padding mask, built once for all layers
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, **kwargs)
        if self.final_norm is not None:
            hidden_states = self.final_norm(hidden_states)
        return BaseModelOutput(last_hidden_state=hidden_states)


class VanillaTransformerDecoder(VanillaTransformerPreTrainedModel):
    """Decoder, §3.1: N layers of masked self-attention, encoder-decoder attention and feed-forward sub-layers."""

    _can_record_outputs = {
        "hidden_states": VanillaLayer,
        "attentions": OutputRecorder(VanillaAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(VanillaAttention, index=1, layer_name="cross_attn"),
    }

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__(config)
        self.embeddings = VanillaEmbeddings(config)
        self.layers = nn.ModuleList(
            [
                VanillaLayer(config, i, is_causal=True, has_cross_attention=True)
                for i in range(config.num_decoder_layers)
            ]
        )
        self.final_norm = nn.LayerNorm(config.d_model, config.layer_norm_eps) if config.norm_position == "pre" else None
        self.post_init()

    @capture_outputs
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        past_key_values: Cache | None = None,
        inputs_embeds=None,
        position_ids=None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        if not use_cache:
            past_key_values = None
        given_position_ids = position_ids  # only positions given by the caller can mark packed sequences
        if position_ids is None:
            inputs = input_ids if input_ids is not None else inputs_embeds  # (B, T) or (B, T, d_model)
            position_ids = positions_after_cache(inputs, past_key_values)  # (1, T)
        hidden_states = self.embeddings(input_ids, inputs_embeds, position_ids)  # (B, T, d_model)

        self_attention_cache = (
            past_key_values.self_attention_cache if isinstance(past_key_values, EncoderDecoderCache) else None
        )
        # Masks built once per stack: causal (§3.2.3, "prevent leftward information flow") and source padding.
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=attention_mask,
            past_key_values=self_attention_cache,
            position_ids=given_position_ids,
        )
        encoder_attention_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=encoder_attention_mask,
            encoder_hidden_states=encoder_hidden_states,
        )
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                causal_mask,
                encoder_hidden_states,  # positional, for gradient checkpointing
                encoder_attention_mask=encoder_attention_mask,
                past_key_values=past_key_values,
                **kwargs,
            )
        if self.final_norm is not None:
            hidden_states = self.final_norm(hidden_states)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states, past_key_values=past_key_values
        )


class VanillaTransformerModel(VanillaTransformerPreTrainedModel):
    """Encoder and decoder with one shared token embedding (§3.4, shared source/target BPE vocabulary)."""

    _tied_weights_keys = {"decoder.embeddings.embed_tokens.weight": "encoder.embeddings.embed_tokens.weight"}

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__(config)
        self.encoder = VanillaTransformerEncoder(config)
        self.decoder = VanillaTransformerDecoder(config)
        advertise_auto_classes(config, AUTO_MAP)
        self.post_init()

    def get_input_embeddings(self):
        return self.encoder.embeddings.embed_tokens

    def set_input_embeddings(self, value):
        self.encoder.embeddings.embed_tokens = value
        self.decoder.embeddings.embed_tokens = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        encoder_outputs=None,
        past_key_values: Cache | None = None,
        inputs_embeds=None,
        decoder_inputs_embeds=None,
        decoder_position_ids=None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> Seq2SeqModelOutput:
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            past_key_values=past_key_values,
            inputs_embeds=decoder_inputs_embeds,
            position_ids=decoder_position_ids,
            use_cache=use_cache,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            past_key_values=decoder_outputs.past_key_values,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


class VanillaTransformerForConditionalGeneration(VanillaTransformerPreTrainedModel, GenerationMixin):
    """The translation model: encoder-decoder plus the output projection and softmax (§3.4).

    Source embedding, target embedding and `lm_head` are one matrix when `tie_word_embeddings` (the paper's
    default). `labels` give the label-smoothed cross-entropy of §5.4.
    """

    _tied_weights_keys = {
        "lm_head.weight": "model.encoder.embeddings.embed_tokens.weight",
        "model.decoder.embeddings.embed_tokens.weight": "model.encoder.embeddings.embed_tokens.weight",
    }

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__(config)
        self.model = VanillaTransformerModel(config)
        # The output projection has no bias: it is the (shared) embedding matrix, §3.4.
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            # Tied copies are not written; saying so lets `Trainer` resume from a checkpoint without reporting
            # them as missing (it re-ties them instead).
            self._keys_to_ignore_on_save = list(self._tied_weights_keys)
        self.post_init()
        # Decoding as in §6.1: beam size 4, length penalty alpha 0.6, an explicit length limit.
        # DEVIATION: transformers divides beam scores by length**alpha, the paper used GNMT's ((5+len)/6)**alpha.
        self.generation_config.num_beams = 4
        self.generation_config.length_penalty = 0.6
        self.generation_config.early_stopping = True
        # Never transformers' silent 20-token default; the paper allowed input length + 50 (§6.1).
        self.generation_config.max_new_tokens = 256

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def _reorder_cache(self, past_key_values: Cache, beam_idx: torch.LongTensor) -> Cache:
        """Beam search (§6.1): `generate` calls this hook, when a model has it, after each step with the row each
        surviving beam continues. Only the decoder's self-attention keys/values follow the beams. The encoder-
        decoder attention keys/values of a sentence are the same in all its beam rows (`generate` repeats the
        encoder output per beam) and beams never move between sentences, so gathering them would copy identical
        rows: (B·beams, H, S, d_k) per layer, twice, every step (bench/README.md)."""
        if isinstance(past_key_values, EncoderDecoderCache):
            past_key_values.self_attention_cache.reorder_cache(beam_idx)
        else:
            past_key_values.reorder_cache(beam_idx)
        return past_key_values

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        encoder_outputs=None,
        past_key_values: Cache | None = None,
        inputs_embeds=None,
        decoder_inputs_embeds=None,
        labels=None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state  # (B, T, d_model)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = linear(self.lm_head, hidden_states[:, keep, :])  # (B, T_keep, vocab)

        loss = None
        if labels is not None:
            loss = token_loss(logits, labels, self.config.label_smoothing, num_items_in_batch)
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )


__all__ = [
    "VanillaTransformerPreTrainedModel",
    "VanillaTransformerEncoder",
    "VanillaTransformerDecoder",
    "VanillaTransformerModel",
    "VanillaTransformerForConditionalGeneration",
]
