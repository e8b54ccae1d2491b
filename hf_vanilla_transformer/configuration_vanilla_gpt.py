"""Configuration of the GPT variant: the Transformer's decoder stack alone, without cross-attention.

Papers: Radford et al. 2018 (GPT-1, "Improving Language Understanding by Generative Pre-Training") and 2019
(GPT-2, "Language Models are Unsupervised Multitask Learners"). Defaults are GPT-2 small's shape; `from_preset`
gives GPT-1, GPT-2, nanoGPT's character-level Shakespeare model and a tiny test model.
"""

from transformers import PreTrainedConfig

from .configuration_vanilla_common import config_from_preset, validate_common_fields


class VanillaGPTConfig(PreTrainedConfig):
    r"""
    vocab_size: token vocabulary (GPT-2: 50257 byte-level BPE tokens; GPT-1: 40478 BPE tokens).
    d_model: model width (768 for GPT-1 and GPT-2 small).
    num_heads: attention heads h (12); d_k = d_model / h.
    ffn_dim: inner width of the feed-forward network (3072 = 4 * d_model).
    num_layers: number of blocks (12).
    max_position_embeddings: context length; the size of the learned position table (GPT-1: 512, GPT-2: 1024).
    dropout: dropout on embeddings+positions and every sub-layer output (0.1 in GPT-1 and GPT-2).
    attention_dropout: dropout on the attention weights (0.1 in GPT-1 and GPT-2).
    activation: "gelu" (GPT), "relu" (the original Transformer, Eq. 2) or "swiglu".
    norm_position: "pre" (GPT-2, §2.3: LayerNorm at the input of each sub-block plus one after the last block)
        or "post" (GPT-1 and the original Transformer: LayerNorm(x + Sublayer(x))).
    position_embedding: "learned" (GPT) or "sinusoidal" (the Transformer, §3.5).
    scale_embedding: multiply token embeddings by sqrt(d_model) as the Transformer does (§3.4); GPT does not.
    layer_norm_eps: epsilon of every LayerNorm.
    init_std: standard deviation of the normal initialisation (0.02, GPT-1 §4.1).
    tie_word_embeddings: the output projection is the token embedding matrix (GPT-1 and GPT-2).
    """

    model_type = "vanilla-gpt"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "num_heads",
        "num_hidden_layers": "num_layers",
        "intermediate_size": "ffn_dim",
    }

    PRESETS = {
        # GPT-1 (Radford et al. 2018, §4.1): 12 layers, 768 wide, 12 heads, 3072 inner, 512 positions, post-LN.
        "gpt1": dict(
            vocab_size=40478, d_model=768, num_heads=12, ffn_dim=3072, num_layers=12, max_position_embeddings=512,
            norm_position="post",
        ),
        # GPT-2 small (Radford et al. 2019, Table 2): the same sizes, 1024 positions, pre-LN with a final LayerNorm.
        "gpt2": dict(
            vocab_size=50257, d_model=768, num_heads=12, ffn_dim=3072, num_layers=12, max_position_embeddings=1024,
            norm_position="pre", bos_token_id=50256, eos_token_id=50256,  # <|endoftext|> is both
        ),
        # nanoGPT's config/train_shakespeare_char.py: "baby GPT" over the 65 characters of tiny Shakespeare.
        "shakespeare-char": dict(
            vocab_size=65, d_model=384, num_heads=6, ffn_dim=1536, num_layers=6, max_position_embeddings=256,
            dropout=0.2, attention_dropout=0.2, norm_position="pre",
        ),
        "tiny": dict(
            vocab_size=99, d_model=32, num_heads=4, ffn_dim=64, num_layers=2, max_position_embeddings=64,
            dropout=0.0, attention_dropout=0.0,
        ),
    }  # fmt: skip

    vocab_size: int = 50257  # GPT-2's byte-level BPE
    d_model: int = 768
    num_heads: int = 12
    ffn_dim: int = 3072
    num_layers: int = 12
    max_position_embeddings: int = 1024
    dropout: float | int = 0.1
    attention_dropout: float | int = 0.1
    activation: str = "gelu"
    norm_position: str = "pre"
    position_embedding: str = "learned"
    scale_embedding: bool = False
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        validate_common_fields(self, ("num_layers",))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VanillaGPTConfig":
        """`gpt1`, `gpt2` (GPT-2 small), `shakespeare-char` (nanoGPT) or `tiny` (tests), with any field overridden."""
        return config_from_preset(cls, name, overrides)


__all__ = ["VanillaGPTConfig"]
