"""The Transformer's building blocks, written once and shared by the encoder, the decoder and the GPT variant.

Paper: Vaswani et al., "Attention Is All You Need" (2017). Section numbers below refer to it.

Shape letters used in comments:
    B  batch size
    T  query length (target tokens, or the GPT's tokens)
    S  key/value length (source tokens for cross-attention, past+current tokens with a cache)
    H  number of heads h
    d_k  per-head width, d_model / h (the paper's d_k = d_v)
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel


def sinusoidal_positions(position_ids: torch.Tensor, d_model: int) -> torch.Tensor:
    """Positional encoding, §3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(same).

    Computed on the fly from `position_ids` (any shape, e.g. (B, T)) in float32, so there is no table to
    size, save or re-create after loading, and any length works (the paper's reason to prefer it).
    """
    exponent = torch.arange(0, d_model, 2, device=position_ids.device, dtype=torch.float32) / d_model  # (d_model/2,)
    angles = position_ids.float()[..., None] / (10000.0**exponent)  # (..., d_model/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # interleaved sin, cos: (..., d_model)


def apply_dropout(hidden_states: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout (§5.4, P_drop): zero each element with probability p, scale the rest by 1 / (1 - p).

    No op at all when p = 0 or in eval mode (a small model's step is mostly such calls). On CPU the keep-mask is
    drawn as uniform >= p: `rand_like` draws twice as fast there as the `bernoulli_` behind `F.dropout`, and the
    step of a dropout-0.1 model is measurably faster for it (bench/README.md); elsewhere `F.dropout`'s fused
    kernel. Same distribution either way.
    """
    if not training or p == 0:
        return hidden_states
    if hidden_states.device.type != "cpu":
        return F.dropout(hidden_states, p=p)
    keep = (torch.rand_like(hidden_states) >= p).to(hidden_states.dtype).mul_(1.0 / (1.0 - p))  # 0 or 1/(1-p)
    return hidden_states * keep


# A decoding step has few rows, (B·beams, 1, d): up to this many, `linear` takes its few-rows path on CPU.
FEW_ROWS = 8


def linear(module: nn.Module, input: torch.Tensor) -> torch.Tensor:
    """`module(input)` for the model's linear maps, with a faster CPU path for the 1-8 rows of a decoding step.

    torch's CPU x W^T (MKL) reads W far below memory bandwidth when x has 1-8 rows: a 384 x 1536 weight takes
    240-360 µs here, against 95-180 µs for the same product written (W x^T)^T, the weight as the left operand
    (one row is doubled first: a single column takes the slow path again). Decoding reads every weight once per
    step, so this is most of a step: greedy and beam decoding of 1-8 rows get 1.2-2.3x faster (bench/README.md,
    `python bench/few_rows.py`). Same result up to rounding. Only a plain `nn.Linear` without hooks takes the
    path: a LoRA-wrapped, quantised, parametrised or hooked map (accelerate's offloading replaces `forward`) is
    called as it is, and so is everything on GPU, in other dtypes or with more rows. Measured on an AMD EPYC
    with torch's MKL; `FEW_ROWS = 0` turns the path off.
    """
    rows = input.numel() // input.shape[-1]
    if (
        type(module) is not nn.Linear
        or not 0 < rows <= FEW_ROWS
        or input.device.type != "cpu"
        or input.dtype != torch.float32
        or module._forward_hooks
        or module._forward_pre_hooks
        or "forward" in module.__dict__
    ):
        return module(input)
    x = input.reshape(rows, module.in_features)
    x = (x.expand(2, -1) if rows == 1 else x).contiguous()  # (max(rows, 2), d_in)
    if module.bias is None:
        out = torch.mm(module.weight, x.t())
    else:
        out = torch.addmm(module.bias.unsqueeze(1), module.weight, x.t())  # W x^T + b: (d_out, max(rows, 2))
    return out[:, :rows].t().contiguous().view(*input.shape[:-1], module.out_features)  # (..., d_out)


class VanillaEmbeddings(nn.Module):
    """Token embedding times sqrt(d_model) (§3.4) plus positions (§3.5), then dropout (§5.4, residual dropout)."""

    def __init__(self, config):
        super().__init__()
        self.d_model = config.d_model
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.max_positions = config.max_position_embeddings
        self.sinusoidal = config.position_embedding == "sinusoidal"
        # DEVIATION (option): learned positions, which the paper found "nearly identical" (Table 3, row E); GPT's default.
        self.embed_positions = None if self.sinusoidal else nn.Embedding(config.max_position_embeddings, config.d_model)
        self.dropout = config.dropout

    def forward(self, input_ids=None, inputs_embeds=None, position_ids=None) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, d_model)
        if self.sinusoidal:
            positions = sinusoidal_positions(position_ids, self.d_model).to(inputs_embeds.dtype)  # (B|1, T, d_model)
        else:
            # A clear error instead of an index error deep in torch; not while compiling, where reading a value
            # would break the graph (`_can_compile_fullgraph`).
            if (
                not torch.compiler.is_compiling()
                and position_ids.numel()
                and int(position_ids.max()) >= self.max_positions
            ):
                raise ValueError(
                    f"Input length {int(position_ids.max()) + 1} exceeds max_position_embeddings="
                    f"{self.max_positions} of the learned position table; shorten the input or use a model "
                    f"with more positions."
                )
            positions = self.embed_positions(position_ids.clamp(min=0))  # (B|1, T, d_model)
        if self.embed_scale != 1.0:
            inputs_embeds = inputs_embeds * self.embed_scale
        hidden_states = inputs_embeds + positions
        return apply_dropout(hidden_states, self.dropout, self.training)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention, §3.2.1, Eq. 1: softmax(Q K^T / sqrt(d_k)) V.

    query (B, H, T, d_k), key/value (B, H, S, d_k), additive mask broadcastable to (B, H, T, S).
    Returns the output as (B, T, H, d_k), the layout of every kernel in `ALL_ATTENTION_FUNCTIONS`, and the weights.
    """
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, T, S)
    if attention_mask is None and getattr(module, "is_causal", False) and query.shape[2] > 1:
        # A mask built for SDPA may be None, meaning "is_causal": honour it here too (T new queries end at S).
        q_len, kv_len = query.shape[2], key.shape[2]
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # (B, H, T, S)
    weights = F.dropout(weights, p=dropout, training=module.training)  # attention dropout: an option, not §5.4
    output = torch.matmul(weights, value)  # (B, H, T, d_k)
    return output.transpose(1, 2).contiguous(), weights  # (B, T, H, d_k)


class VanillaAttention(nn.Module):
    """Multi-head attention, §3.2.2: Concat(head_1, ..., head_h) W^O with head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    One module for self-attention (`key_value_states=None`) and encoder-decoder attention (§3.2.3), where the
    queries come from the decoder and keys/values from the encoder output, computed once per generation.
    """

    def __init__(self, config, layer_idx: int | None = None, is_causal: bool = False, is_cross_attention: bool = False):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_causal = is_causal
        self.is_cross_attention = is_cross_attention
        self.head_dim = config.d_model // config.num_heads  # d_k = d_v = d_model / h
        self.scaling = self.head_dim**-0.5  # 1 / sqrt(d_k)
        self.attention_dropout = config.attention_dropout
        self.q_proj = nn.Linear(config.d_model, config.d_model)
        self.k_proj = nn.Linear(config.d_model, config.d_model)
        self.v_proj = nn.Linear(config.d_model, config.d_model)
        self.o_proj = nn.Linear(config.d_model, config.d_model)  # W^O

    def _project(self, proj: nn.Linear, states: torch.Tensor) -> torch.Tensor:
        return linear(proj, states).view(*states.shape[:-1], -1, self.head_dim).transpose(1, 2)  # (B, H, len, d_k)

    def _keys_values(self, hidden_states, key_value_states, past_key_values: Cache | None):
        if not self.is_cross_attention:
            key, value = self._project(self.k_proj, hidden_states), self._project(self.v_proj, hidden_states)
            if past_key_values is None:
                return key, value
            cache = past_key_values
            if isinstance(cache, EncoderDecoderCache):
                cache = cache.self_attention_cache
            return cache.update(key, value, self.layer_idx)  # (B, H, S_past + T, d_k)
        # Encoder-decoder attention: the encoder output does not change while decoding, so K/V are cached once.
        if isinstance(past_key_values, EncoderDecoderCache) and past_key_values.is_updated.get(self.layer_idx):
            layer = past_key_values.cross_attention_cache.layers[self.layer_idx]
            return layer.keys, layer.values  # (B, H, S, d_k)
        key, value = self._project(self.k_proj, key_value_states), self._project(self.v_proj, key_value_states)
        if isinstance(past_key_values, EncoderDecoderCache):
            key, value = past_key_values.cross_attention_cache.update(key, value, self.layer_idx)
            past_key_values.is_updated[self.layer_idx] = True
        return key, value

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]  # (B, T)
        query = self._project(self.q_proj, hidden_states)  # (B, H, T, d_k)
        key, value = self._keys_values(hidden_states, key_value_states, past_key_values)  # (B, H, S, d_k)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        if kwargs.get("output_attentions"):
            attention_interface = eager_attention_forward  # only the eager kernel materialises the weights
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )  # (B, T, H, d_k)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()  # concat heads: (B, T, d_model)
        return linear(self.o_proj, attn_output), attn_weights


class VanillaFeedForward(nn.Module):
    """Position-wise feed-forward network, §3.3, Eq. 2: FFN(x) = max(0, x W_1 + b_1) W_2 + b_2."""

    def __init__(self, config):
        super().__init__()
        self.activation = config.activation
        self.fc1 = nn.Linear(config.d_model, config.ffn_dim)  # W_1: d_model -> d_ff
        self.fc2 = nn.Linear(config.ffn_dim, config.d_model)  # W_2: d_ff -> d_model
        if self.activation == "swiglu":
            # DEVIATION (option): SwiGLU (Shazeer 2020), FFN(x) = (Swish(x W_g) * x W_1) W_2, an extra d_model x d_ff gate.
            self.gate_proj = nn.Linear(config.d_model, config.ffn_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        up = linear(self.fc1, hidden_states)  # (B, T, d_ff)
        if self.activation == "relu":
            up = F.relu(up)
        elif self.activation == "gelu":
            up = F.gelu(up)
        else:
            up = F.silu(linear(self.gate_proj, hidden_states)) * up
        return linear(self.fc2, up)  # (B, T, d_model)


class VanillaLayer(GradientCheckpointingLayer):
    """One block of the stack: encoder layer (§3.1: self-attention, FFN), decoder layer (masked self-attention,
    encoder-decoder attention, FFN) or GPT block (masked self-attention, FFN).

    Each sub-layer is wrapped as in §3.1 and §5.4: post-LN (paper) LayerNorm(x + Dropout(Sublayer(x))),
    or pre-LN (GPT-2; DEVIATION as an option) x + Dropout(Sublayer(LayerNorm(x))).
    """

    def __init__(
        self, config, layer_idx: int | None = None, is_causal: bool = False, has_cross_attention: bool = False
    ):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.dropout = config.dropout
        eps = config.layer_norm_eps
        self.self_attn = VanillaAttention(config, layer_idx, is_causal=is_causal)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model, eps=eps)
        self.cross_attn = None
        if has_cross_attention:
            self.cross_attn = VanillaAttention(config, layer_idx, is_cross_attention=True)
            self.cross_attn_layer_norm = nn.LayerNorm(config.d_model, eps=eps)
        self.mlp = VanillaFeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.d_model, eps=eps)

    def _residual(self, residual: torch.Tensor, sublayer_output: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        hidden_states = residual + apply_dropout(sublayer_output, self.dropout, self.training)
        return hidden_states if self.pre_norm else norm(hidden_states)

    def _norm_in(self, hidden_states: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        return norm(hidden_states) if self.pre_norm else hidden_states

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        # Self Attention (masked in the decoder and GPT)
        residual = hidden_states
        hidden_states = self._norm_in(hidden_states, self.self_attn_layer_norm)
        hidden_states, _ = self.self_attn(
            hidden_states, attention_mask=attention_mask, past_key_values=past_key_values, **kwargs
        )
        hidden_states = self._residual(residual, hidden_states, self.self_attn_layer_norm)

        # Cross-Attention Block (decoder only): queries from the decoder, keys and values from the encoder
        if self.cross_attn is not None:
            residual = hidden_states
            hidden_states = self._norm_in(hidden_states, self.cross_attn_layer_norm)
            hidden_states, _ = self.cross_attn(
                hidden_states,
                key_value_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask,
                past_key_values=past_key_values,
                **kwargs,
            )
            hidden_states = self._residual(residual, hidden_states, self.cross_attn_layer_norm)

        # Fully Connected
        residual = hidden_states
        hidden_states = self.mlp(self._norm_in(hidden_states, self.final_layer_norm))
        return self._residual(residual, hidden_states, self.final_layer_norm)


class VanillaPreTrainedModel(PreTrainedModel):
    """What both models (encoder-decoder and GPT) support, declared once; transformers reads these attributes."""

    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["VanillaLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def get_input_embeddings(self):
        # A stack (encoder, decoder, GPT model) owns `embeddings`; a model with a head asks its `model`.
        if hasattr(self, "embeddings"):
            return self.embeddings.embed_tokens
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        if hasattr(self, "embeddings"):
            self.embeddings.embed_tokens = value
        else:
            self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return getattr(self, "lm_head", None)

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings


def advertise_auto_classes(config, auto_map: dict) -> None:
    """Only the class being saved gets an `auto_map` entry; list every head so that each Auto class finds remote
    code in a saved folder."""
    config.auto_map = {**(getattr(config, "auto_map", None) or {}), **auto_map}


def positions_after_cache(inputs: torch.Tensor, past_key_values: Cache | None) -> torch.Tensor:
    """Positions of the new tokens in `inputs` (ids (B, T) or embeddings (B, T, d_model)), on their device: those
    already in the cache come first. Returns (1, T)."""
    past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
    return torch.arange(past_length, past_length + inputs.shape[1], device=inputs.device).unsqueeze(0)


class _TokenCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy against (1 - ε) one-hot + ε uniform (§5.4 label smoothing; ε = 0 is plain).

    Forward keeps only log_softmax (N, V), as torch does. Backward writes the gradient, softmax - target
    distribution, into one new (N, V) buffer, where torch's `cross_entropy` builds NLL's scattered one-hot (plus,
    with ε > 0, the sum with the smoothing term's) before log_softmax's own backward. Measured at 2048 x 37000:
    peak memory above the logits two logits-sized tensors against torch's three, and faster
    (bench/README.md, `bench/token_loss.py`).
    """

    @staticmethod
    def forward(ctx, logits, labels, epsilon):
        log_probs = torch.log_softmax(logits, dim=-1)  # (N, V)
        valid = labels != -100  # (N,)
        target = labels.masked_fill(~valid, 0).unsqueeze(1)  # (N, 1), ignored rows point at class 0
        nll = -log_probs.gather(1, target).squeeze(1)  # -log p(label): (N,)
        # The smoothed target puts ε / V on every class: its cross-entropy term is -ε * mean(log_probs).
        per_token = nll if epsilon == 0 else (1.0 - epsilon) * nll - epsilon * log_probs.mean(dim=-1)
        ctx.save_for_backward(log_probs, target, valid)
        ctx.epsilon = epsilon
        return per_token * valid  # ignored tokens: 0

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_per_token):
        log_probs, target, valid = ctx.saved_tensors
        epsilon = ctx.epsilon
        grad = log_probs.exp()  # softmax: the one (N, V) allocation
        if epsilon:
            grad.sub_(epsilon / log_probs.shape[-1])
        grad.scatter_add_(1, target, torch.full_like(target, epsilon - 1.0, dtype=grad.dtype))  # - (1 - ε) one-hot
        grad.mul_((grad_per_token * valid).unsqueeze(1))
        return grad, None, None


def token_loss(logits, labels, label_smoothing=0.0, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy over the tokens whose label is not -100, optionally label-smoothed (§5.4).

    Summed and divided by `num_items_in_batch` when the Trainer passes it (the count over all gradient
    accumulation steps and processes), so accumulated gradients equal one large batch; else the mean.
    The smoothed target distribution is never materialised, and backward allocates one logits-sized buffer.
    """
    labels = labels.to(logits.device).reshape(-1)
    per_token = _TokenCrossEntropy.apply(
        logits.float().reshape(-1, logits.shape[-1]), labels, float(label_smoothing)
    )  # (N,)
    if num_items_in_batch is None:
        return per_token.sum() / (labels != -100).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(per_token.device)
    return per_token.sum() / num_items_in_batch
