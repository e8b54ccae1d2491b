"""Configuration of the encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

Defaults are the paper's base model (Table 3, row "base"); `from_preset("big")` gives the big one.
"""

from transformers import PreTrainedConfig

from .configuration_vanilla_common import config_from_preset, validate_common_fields


class VanillaTransformerConfig(PreTrainedConfig):
    r"""
    vocab_size: shared source+target vocabulary (paper §5.1: 37000 BPE tokens for WMT14 en-de).
    d_model: model width (paper: 512 base, 1024 big).
    num_heads: attention heads h (8 / 16); d_k = d_v = d_model / h.
    ffn_dim: inner width d_ff of the position-wise feed-forward network (2048 / 4096).
    num_encoder_layers, num_decoder_layers: N (6 each).
    dropout: P_drop on embeddings+positions and every sub-layer output (0.1 base, 0.3 big, §5.4).
    attention_dropout: dropout on the attention weights (the paper has none).
    activation: "relu" (paper, Eq. 2), "gelu" or "swiglu".
    norm_position: "post" (paper: LayerNorm(x + Sublayer(x))) or "pre" (LayerNorm inside the residual branch).
    position_embedding: "sinusoidal" (paper §3.5) or "learned" (the paper's Table 3 row (E)).
    scale_embedding: multiply token embeddings by sqrt(d_model) (§3.4).
    tie_word_embeddings: one matrix for source embedding, target embedding and output projection (§3.4).
    label_smoothing: epsilon_ls of the training loss (0.1, §5.4).
    """

    model_type = "vanilla-transformer"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "num_heads",
        "intermediate_size": "ffn_dim",
        "num_hidden_layers": "num_decoder_layers",
        "encoder_layers": "num_encoder_layers",
        "decoder_layers": "num_decoder_layers",
    }

    PRESETS = {
        "base": dict(d_model=512, num_heads=8, ffn_dim=2048, num_encoder_layers=6, num_decoder_layers=6, dropout=0.1),
        "big": dict(d_model=1024, num_heads=16, ffn_dim=4096, num_encoder_layers=6, num_decoder_layers=6, dropout=0.3),
        "small": dict(d_model=256, num_heads=4, ffn_dim=1024, num_encoder_layers=3, num_decoder_layers=3, dropout=0.1),
        "tiny": dict(
            vocab_size=99,
            d_model=32,
            num_heads=4,
            ffn_dim=64,
            num_encoder_layers=2,
            num_decoder_layers=2,
            dropout=0.0,
            max_position_embeddings=64,
        ),
    }

    vocab_size: int = 37000
    d_model: int = 512
    num_heads: int = 8
    ffn_dim: int = 2048
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dropout: float | int = 0.1
    attention_dropout: float | int = 0.0
    activation: str = "relu"
    norm_position: str = "post"
    position_embedding: str = "sinusoidal"
    max_position_embeddings: int = 1024
    scale_embedding: bool = True
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    label_smoothing: float | int = 0.1
    tie_word_embeddings: bool = True
    use_cache: bool = True
    is_encoder_decoder: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    decoder_start_token_id: int | None = 1

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        validate_common_fields(self, ("num_encoder_layers", "num_decoder_layers"))
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"{type(self).__name__}: label_smoothing must be in [0, 1), got {self.label_smoothing!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VanillaTransformerConfig":
        """`base`, `big` (paper Table 3), `small` (a 2-CPU-core budget) or `tiny` (tests), with any field overridden."""
        return config_from_preset(cls, name, overrides)


__all__ = ["VanillaTransformerConfig"]
