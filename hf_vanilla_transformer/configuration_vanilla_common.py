"""Validation and presets shared by both configurations (encoder-decoder and GPT).

Kept free of torch so that configs load fast; shipped to the Hub beside each configuration file.
"""

ACTIVATIONS = ("relu", "gelu", "swiglu")
NORM_POSITIONS = ("post", "pre")
POSITION_EMBEDDINGS = ("sinusoidal", "learned")


def _fail(config, message):
    raise ValueError(f"{type(config).__name__}: {message}")


def validate_common_fields(config, layer_fields):
    """Raise a `ValueError` naming the field and value of the first impossible setting."""
    for name in ("vocab_size", "d_model", "num_heads", "ffn_dim", "max_position_embeddings", *layer_fields):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            _fail(config, f"{name} must be a positive integer, got {value!r}")
    if config.d_model % config.num_heads != 0:
        _fail(
            config,
            f"d_model={config.d_model} must be divisible by num_heads={config.num_heads} "
            f"(each head gets d_model / num_heads dimensions, paper §3.2.2)",
        )
    if config.position_embedding == "sinusoidal" and config.d_model % 2 != 0:
        _fail(config, f"d_model={config.d_model} must be even for sinusoidal positions (sin/cos pairs, paper §3.5)")
    for name in ("dropout", "attention_dropout"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            _fail(config, f"{name} must be a number in [0, 1), got {value!r}")
    for name, allowed in (
        ("activation", ACTIVATIONS),
        ("norm_position", NORM_POSITIONS),
        ("position_embedding", POSITION_EMBEDDINGS),
    ):
        value = getattr(config, name)
        if value not in allowed:
            _fail(config, f"unknown {name}={value!r}; expected one of {', '.join(allowed)}")
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not 0 <= value < config.vocab_size:
            _fail(config, f"{name}={value} is outside the vocabulary (vocab_size={config.vocab_size})")


def config_from_preset(cls, name, overrides):
    """`cls.PRESETS[name]` updated with `overrides`, as an instance of `cls`."""
    if name not in cls.PRESETS:
        raise ValueError(f"{cls.__name__}: unknown preset {name!r}; expected one of {', '.join(cls.PRESETS)}")
    return cls(**{**cls.PRESETS[name], **overrides})
