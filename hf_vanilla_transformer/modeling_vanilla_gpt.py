"""The GPT variant: the Transformer's decoder (§3.1) without encoder-decoder attention, as a language model.

Papers: Radford et al. 2018 (GPT-1) and 2019 (GPT-2); the blocks are those of Vaswani et al. 2017.

    token ids (B, T) -> VanillaEmbeddings (tokens + learned positions) -> N x VanillaLayer (masked self-attention, FFN)
                     -> [final LayerNorm, pre-LN only] -> lm_head (the token embedding matrix) -> logits (B, T, vocab)

Shape letters are defined in `vanilla_layers.py`.
"""

import math

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils.output_capturing import capture_outputs

from .configuration_vanilla_gpt import VanillaGPTConfig
from .vanilla_layers import (
    VanillaAttention,
    VanillaEmbeddings,
    VanillaLayer,
    VanillaPreTrainedModel,
    advertise_auto_classes,
    linear,
    positions_after_cache,
)

AUTO_MAP = {
    "AutoModel": "modeling_vanilla_gpt.VanillaGPTModel",
    "AutoModelForCausalLM": "modeling_vanilla_gpt.VanillaGPTForCausalLM",
}


class VanillaGPTPreTrainedModel(VanillaPreTrainedModel):
    config: VanillaGPTConfig
    _can_record_outputs = {"hidden_states": VanillaLayer, "attentions": VanillaAttention}

    @torch.no_grad()
    def _init_weights(self, module):
        # GPT-1 §4.1: N(0, 0.02) weights (config.init_std), zero biases, LayerNorm at identity: the library default.
        super()._init_weights(module)
        # GPT-2 §2.3: "scale the weights of residual layers at initialization by a factor of 1/sqrt(N)", N the number
        # of residual layers (two per block). Decided on the Linear itself: transformers never passes custom-code
        # modules without parameters of their own (VanillaAttention, VanillaFeedForward) to `_init_weights`.
        if isinstance(module, nn.Linear) and any(module is proj for proj in self._residual_projections()):
            init.normal_(module.weight, mean=0.0, std=self.config.init_std / math.sqrt(2 * self.config.num_layers))

    def _residual_projections(self) -> list[nn.Linear]:
        """The maps that write into the residual stream: W^O of the attention (o_proj) and W_2 of the FFN (fc2)."""
        return [m for name, m in self.named_modules() if name.endswith(("self_attn.o_proj", "mlp.fc2"))]


class VanillaGPTModel(VanillaGPTPreTrainedModel):
    """The decoder stack alone (GPT-1 §3.1: "a multi-layer Transformer decoder"), returning hidden states."""

    def __init__(self, config: VanillaGPTConfig):
        super().__init__(config)
        self.embeddings = VanillaEmbeddings(config)
        self.layers = nn.ModuleList(
            [VanillaLayer(config, i, is_causal=True, has_cross_attention=False) for i in range(config.num_layers)]
        )
        # GPT-2 §2.3: "an additional layer normalization was added after the final self-attention block" (pre-LN only;
        # a post-LN stack already ends normalised).
        self.final_norm = nn.LayerNorm(config.d_model, config.layer_norm_eps) if config.norm_position == "pre" else None
        advertise_auto_classes(config, AUTO_MAP)
        self.post_init()

    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        given_position_ids = position_ids  # `generate` passes positions derived from the attention mask (left padding)
        if position_ids is None:
            inputs = input_ids if input_ids is not None else inputs_embeds  # (B, T) or (B, T, d_model)
            position_ids = positions_after_cache(inputs, past_key_values)  # (1, T)
        hidden_states = self.embeddings(input_ids, inputs_embeds, position_ids)  # (B, T, d_model)

        # Built once for all layers: causal ("masked self-attention", GPT-1 §3.1) and padding. Only positions given
        # by the caller can mark packed sequences; checking our own 0..T-1 would cost a pass and a sync per step.
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=given_position_ids,
        )
        for layer in self.layers:
            hidden_states = layer(hidden_states, causal_mask, past_key_values=past_key_values, **kwargs)
        if self.final_norm is not None:
            hidden_states = self.final_norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, past_key_values=past_key_values)


class VanillaGPTForCausalLM(VanillaGPTPreTrainedModel, GenerationMixin):
    """Language model: P(u_i | u_<i) = softmax(h_n W_e^T) with W_e the token embedding (GPT-1 §3.1, Eq. 2).

    `labels` are the input ids (-100 where no loss is wanted); the loss shifts them by one position itself.
    Or pass `shift_labels` (B, T), the next token of every position, already shifted (transformers' convention):
    then all T positions are predicted, the last one included (nanoGPT's targets).
    """

    _tied_weights_keys = {"lm_head.weight": "model.embeddings.embed_tokens.weight"}

    def __init__(self, config: VanillaGPTConfig):
        super().__init__(config)
        self.model = VanillaGPTModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)  # W_e^T when tied
        if config.tie_word_embeddings:
            # The tied copy is not written; declaring it lets `Trainer` resume from a checkpoint (it re-ties).
            self._keys_to_ignore_on_save = list(self._tied_weights_keys)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        shift_labels = kwargs.pop("shift_labels", None)  # for the loss only, not for the layers
        if shift_labels is not None:
            shift_labels = shift_labels.contiguous()  # transformers' loss `view`s it; a slice of a window is not
        if (labels is not None or shift_labels is not None) and use_cache is None:
            use_cache = False  # training: no cache to build
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        # Generation needs only the last position's logits: (B, T_keep, d_model) with T_keep = 1, not T.
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = linear(self.lm_head, outputs.last_hidden_state[:, keep, :])  # (B, T_keep, vocab)

        loss = None
        if labels is not None or shift_labels is not None:
            # Shifts labels (unless given shifted), sums over tokens and divides by `num_items_in_batch` when the
            # Trainer passes it, so gradient accumulation equals one large batch.
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, shift_labels=shift_labels, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = ["VanillaGPTPreTrainedModel", "VanillaGPTModel", "VanillaGPTForCausalLM"]
