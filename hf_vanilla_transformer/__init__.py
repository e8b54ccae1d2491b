"""hf_vanilla_transformer: the "Attention Is All You Need" Transformer and a GPT sibling as Hugging Face models.

Importing the package registers the classes with the Auto classes, so `AutoConfig`, `AutoModel` and
`AutoModelForSeq2SeqLM` know `model_type="vanilla-transformer"`. This file is not shipped to the Hub:
saved checkpoints carry the configuration and modeling files (and their siblings) as remote code instead.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

from .configuration_vanilla_gpt import VanillaGPTConfig
from .configuration_vanilla_transformer import VanillaTransformerConfig
from .modeling_vanilla_gpt import VanillaGPTForCausalLM, VanillaGPTModel, VanillaGPTPreTrainedModel
from .modeling_vanilla_transformer import (
    VanillaTransformerDecoder,
    VanillaTransformerEncoder,
    VanillaTransformerForConditionalGeneration,
    VanillaTransformerModel,
    VanillaTransformerPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(VanillaTransformerConfig.model_type, VanillaTransformerConfig, exist_ok=True)
AutoModel.register(VanillaTransformerConfig, VanillaTransformerModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(VanillaTransformerConfig, VanillaTransformerForConditionalGeneration, exist_ok=True)

# `save_pretrained` copies the modeling code next to the weights and writes `auto_map` for these Auto classes.
VanillaTransformerConfig.register_for_auto_class()
VanillaTransformerModel.register_for_auto_class("AutoModel")
VanillaTransformerForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")

# The GPT variant, model_type="vanilla-gpt": AutoModel and AutoModelForCausalLM.
AutoConfig.register(VanillaGPTConfig.model_type, VanillaGPTConfig, exist_ok=True)
AutoModel.register(VanillaGPTConfig, VanillaGPTModel, exist_ok=True)
AutoModelForCausalLM.register(VanillaGPTConfig, VanillaGPTForCausalLM, exist_ok=True)
VanillaGPTConfig.register_for_auto_class()
VanillaGPTModel.register_for_auto_class("AutoModel")
VanillaGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "VanillaTransformerConfig",
    "VanillaTransformerPreTrainedModel",
    "VanillaTransformerEncoder",
    "VanillaTransformerDecoder",
    "VanillaTransformerModel",
    "VanillaTransformerForConditionalGeneration",
    "VanillaGPTConfig",
    "VanillaGPTPreTrainedModel",
    "VanillaGPTModel",
    "VanillaGPTForCausalLM",
]
