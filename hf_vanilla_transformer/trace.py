"""See inside: follow one small batch through the real model and print every step's name, shape and size.

    python -m hf_vanilla_transformer.trace --preset base                 # the paper's base model, B=2, T=6
    python -m hf_vanilla_transformer.trace --preset gpt2 --all_layers    # GPT-2 small, every layer in full
    python -m hf_vanilla_transformer.trace --model path/to/saved_model   # a folder from `save_pretrained`

Nothing here re-implements the model: its own `forward` runs once, and what each step produces is observed as
it happens, with
    - forward hooks on the modules (embeddings, q_proj/k_proj/v_proj/o_proj, LayerNorms, fc1/fc2, layers, lm_head),
    - the attention weights the model returns for `output_attentions=True` (the eager kernel of
      `vanilla_layers.eager_attention_forward` runs for them),
    - a `TorchFunctionMode` that, while an attention module runs, sees the kernel's softmax (its input are the
      scores Q K^T / sqrt(d_k) + mask) and the matmul that follows it (the weighted sum of the values).
The per-head views (B, H, T, d_k) are the hooked projection outputs reshaped exactly as `VanillaAttention` does.

Shape letters as in `vanilla_layers.py`: B batch, T query length, S key/value length, H heads, d_k = d_model / H.
"""

import argparse
import re
from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


class TraceRecord(NamedTuple):
    """One observed step: `name` is the module path plus a step key, e.g. `model.encoder.layers.0.self_attn.queries`."""

    name: str
    step: str  # what it is, in the paper's words
    shape: tuple[int, ...]
    params: int | None  # parameters of the module that produced it (None for views and kernel steps)


def _record(name: str, step: str, shape, params: int | None = None) -> TraceRecord:
    return TraceRecord(name, step, tuple(shape), params)  # a plain tuple, also for a torch.Size


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class _KernelSpy(TorchFunctionMode):
    """Records the softmax of the attention kernel and the matmul after it, while an attention module runs."""

    def __init__(self):
        super().__init__()
        self.active: list[dict] = []  # a stack: one dict of observations per running attention module

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.active:
            seen = self.active[-1]
            if func is F.softmax or func is torch.softmax:
                seen.setdefault("scores", tuple(args[0].shape))  # the softmax input: Q K^T / sqrt(d_k) + mask
            elif func is torch.matmul and "scores" in seen:
                seen.setdefault("weighted_sum", tuple(out.shape))  # weights @ V
        return out


class _Tracer:
    """Installs the hooks, collects `TraceRecord`s in the order the model runs, removes the hooks on exit."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.records: list[TraceRecord] = []
        self.handles = []
        self.spy = _KernelSpy()
        # The first name of every parameter tensor: tied weights are listed once, under their first owner.
        self.owners = {id(p): name for name, p in model.named_parameters()}

    def add(self, name, step, shape, params=None):
        self.records.append(_record(name, step, shape, params))

    def hook(self, module, fn, pre=False):
        register = module.register_forward_pre_hook if pre else module.register_forward_hook
        self.handles.append(register(fn, with_kwargs=True))

    def output(self, module, name, step):
        """Record the module's output (the first element when it returns a tuple)."""
        owner = self.owners.get(id(getattr(module, "weight", None)))
        if owner is not None and owner != f"{name}.weight":
            step += f" = {owner.removeprefix('model.').removesuffix('.weight')}"  # tied: one matrix, §3.4

        def fn(mod, args, kwargs, out):
            out = out[0] if isinstance(out, tuple) else out
            self.add(name, step, out.shape, _params(mod))

        self.hook(module, fn)

    def install(self):
        names = {module: name for name, module in self.model.named_modules()}
        for module, name in names.items():
            kind = type(module).__name__
            if kind == "VanillaEmbeddings":
                self.install_embeddings(module, name)
            elif kind == "VanillaAttention":
                self.install_attention(module, name)
            elif kind == "VanillaFeedForward":
                self.output(module.fc1, f"{name}.fc1", "FFN inner x W_1 + b_1 (then ReLU/GELU), §3.3")
                self.output(module, name, "FFN(x) = act(x W_1 + b_1) W_2 + b_2, Eq. 2")
            elif kind == "VanillaLayer":
                self.install_layer(module, name)
            elif isinstance(module, nn.LayerNorm) and name.endswith("final_norm"):
                self.output(module, name, "final LayerNorm of the stack (pre-LN)")
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        if head is not None:
            self.output(head, names[head], "logits (§3.4)")

    def install_embeddings(self, module, name):
        def token_ids(mod, args, kwargs):
            ids = args[0] if args else kwargs.get("input_ids")
            if ids is not None:
                self.add(f"{name}.input_ids", "token ids", ids.shape)

        positions = "sinusoidal positions (§3.5)" if module.sinusoidal else "learned positions"
        self.hook(module, token_ids, pre=True)
        self.output(module.embed_tokens, f"{name}.embed_tokens", "token embedding (§3.4)")
        scale = " x sqrt(d_model)" if module.embed_scale != 1.0 else ""
        self.output(module, name, f"embedding{scale} + {positions}")

    def install_attention(self, module, name):
        # Steps seen by the projection hooks while the module runs; emitted with the kernel's steps when it returns.
        inputs: list[TraceRecord] = []  # Q, K, V and their per-head views
        outputs: list[TraceRecord] = []  # concatenated heads and W^O
        letters = {"q_proj": ("queries", "Q"), "k_proj": ("keys", "K"), "v_proj": ("values", "V")}

        def projection(key):
            word, letter = letters[key]

            def fn(mod, args, kwargs, out):
                B, T, _ = out.shape
                heads = out.view(B, T, -1, module.head_dim).transpose(1, 2)  # (B, H, T, d_k), as VanillaAttention
                inputs.append(_record(f"{name}.{key}", f"{letter} = x W^{letter}, all heads", out.shape, _params(mod)))
                inputs.append(_record(f"{name}.{word}", f"{word} per head", heads.shape, None))

            return fn

        def concat(mod, args, kwargs):
            outputs.append(_record(f"{name}.concat", "Concat(head_1..head_h)", args[0].shape, None))

        def o_proj(mod, args, kwargs, out):
            outputs.append(_record(f"{name}.o_proj", "output projection x W^O", out.shape, _params(mod)))

        def start(mod, args, kwargs):
            inputs.clear()
            outputs.clear()
            self.spy.active.append({})

        def finish(mod, args, kwargs, out):
            attn_output, attn_weights = out
            seen = self.spy.active.pop()
            self.records.extend(inputs)
            if "scores" in seen:
                self.add(f"{name}.scores", "scores Q K^T / sqrt(d_k) (+ mask), Eq. 1", seen["scores"])
            if attn_weights is not None:  # returned for output_attentions=True
                self.add(f"{name}.weights", "weights = softmax(scores)", attn_weights.shape)
            if "weighted_sum" in seen:
                self.add(f"{name}.weighted_sum", "head_i = weights V", seen["weighted_sum"])
            self.records.extend(outputs)
            self.add(name, "multi-head attention output, §3.2.2", attn_output.shape, _params(mod))

        self.hook(module, start, pre=True)
        for key in letters:
            self.hook(getattr(module, key), projection(key))
        self.hook(module.o_proj, concat, pre=True)
        self.hook(module.o_proj, o_proj)
        self.hook(module, finish)

    def install_layer(self, module, name):
        for norm in ("self_attn_layer_norm", "cross_attn_layer_norm", "final_layer_norm"):
            if hasattr(module, norm):
                step = "LayerNorm (pre-LN: input of the sub-layer)" if module.pre_norm else "residual + LayerNorm, §5.4"
                self.output(getattr(module, norm), f"{name}.{norm}", step)
        self.output(module, name, "layer output")

    def __enter__(self):
        self.install()
        self.spy.__enter__()
        return self

    def __exit__(self, *exc):
        self.spy.__exit__(*exc)
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def trace_model(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    decoder_input_ids: torch.Tensor | None = None,
) -> list[TraceRecord]:
    """Run `model` once on the batch and return every observed step, in the order the model computed it.

    Encoder-decoder models get `decoder_input_ids` (default: the source ids, for a batch of the same shape).
    The model is put in eval mode; hooks are removed afterwards.
    """
    model.eval()
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True, use_cache=False)
    if model.config.is_encoder_decoder:
        kwargs["decoder_input_ids"] = input_ids if decoder_input_ids is None else decoder_input_ids
    with _Tracer(model) as tracer:
        model(**kwargs)
    return tracer.records


def parameter_table(model: nn.Module) -> list[tuple[str, int]]:
    """Parameters by part (embeddings, each layer, final norms, output projection, rest), each tensor counted once.

    A tied output projection counts 0 (it is the embedding matrix). The counts add up to `model.num_parameters()`.
    """
    seen: set[int] = set()

    def new_params(module: nn.Module) -> int:
        fresh = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        return sum(p.numel() for p in fresh)

    parts = [
        (name, module)
        for name, module in model.named_modules()
        if type(module).__name__ in ("VanillaEmbeddings", "VanillaLayer") or name.endswith("final_norm")
    ]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        parts.append(([n for n, m in model.named_modules() if m is head][0], head))
    table = [(name, new_params(module)) for name, module in parts]
    table.append(("(other)", new_params(model)))
    return table


_LAYER = re.compile(r"\.layers\.(\d+)(\.|$)")


def format_trace(records: Iterable[TraceRecord], all_layers: bool = False) -> str:
    """A table of the records; without `all_layers`, layers after the first of each stack show only their output."""
    lines = [f"{'module':<46} {'step':<56} {'shape':<16} {'params':>11}"]
    for r in records:
        match = _LAYER.search(r.name)
        if not all_layers and match and int(match.group(1)) > 0 and match.group(2):
            continue  # inside a later layer: same shapes as layer 0
        params = "" if r.params is None else f"{r.params:,}"
        lines.append(f"{r.name:<46} {r.step:<56} {str(r.shape):<16} {params:>11}")
    return "\n".join(lines)


def format_parameters(model: nn.Module) -> str:
    table = parameter_table(model)
    lines = [f"{'part':<44} {'params':>14}"]
    lines += [f"{name:<44} {count:>14,}" for name, count in table if count or name != "(other)"]
    total = sum(count for _, count in table)
    lines.append(f"{'total (each tensor once)':<44} {total:>14,}")
    lines.append(f"{'model.num_parameters()':<44} {model.num_parameters():>14,}")
    return "\n".join(lines)


def build_preset(preset: str, arch: str | None = None, **overrides) -> nn.Module:
    """A randomly initialised model of a preset: the Transformer's (base, big, small, tiny) or GPT's (gpt1, gpt2, ...)."""
    from .configuration_vanilla_gpt import VanillaGPTConfig
    from .configuration_vanilla_transformer import VanillaTransformerConfig
    from .modeling_vanilla_gpt import VanillaGPTForCausalLM
    from .modeling_vanilla_transformer import VanillaTransformerForConditionalGeneration

    if arch is None:  # "tiny" exists for both; the Transformer wins unless asked otherwise
        arch = "transformer" if preset in VanillaTransformerConfig.PRESETS else "gpt"
    config_class, model_class = (
        (VanillaGPTConfig, VanillaGPTForCausalLM)
        if arch == "gpt"
        else (VanillaTransformerConfig, VanillaTransformerForConditionalGeneration)
    )
    fields = {**config_class.PRESETS[preset], **overrides}
    vocab_size = fields.get("vocab_size", config_class.vocab_size)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
        value = fields.get(key, getattr(config_class, key, None))
        if isinstance(value, int) and value >= vocab_size:
            overrides[key] = None  # a smaller vocabulary loses the special tokens beyond it (GPT-2's 50256)
    return model_class(config_class.from_preset(preset, **overrides))


def load_pretrained(path: str) -> nn.Module:
    """A saved encoder-decoder or GPT folder, with the Auto classes this package registers."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    import hf_vanilla_transformer  # noqa: F401  (registers the Auto classes)

    config = AutoConfig.from_pretrained(path)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    return auto.from_pretrained(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="base", help="base, big, small, tiny (Transformer); gpt1, gpt2, ... (GPT)")
    source.add_argument("--model", help="a saved model folder instead of a preset")
    parser.add_argument("--arch", choices=("transformer", "gpt"), help="which family `--preset` names (for `tiny`)")
    parser.add_argument("--batch_size", type=int, default=2)  # B
    parser.add_argument("--seq_len", type=int, default=6)  # T (and S for the source)
    parser.add_argument("--vocab_size", type=int, help="override the preset's vocabulary (smaller: faster)")
    parser.add_argument("--all_layers", action="store_true", help="every layer in full, not only the first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    if args.model:
        model = load_pretrained(args.model)
    else:
        overrides = {"vocab_size": args.vocab_size} if args.vocab_size else {}
        model = build_preset(args.preset, args.arch, **overrides)
    config = model.config
    # Ids from 3 up: 0-2 are pad, bos and eos in the presets; any valid id would do.
    input_ids = torch.randint(min(3, config.vocab_size - 1), config.vocab_size, (args.batch_size, args.seq_len))
    records = trace_model(model, input_ids)

    print(
        f"{type(model).__name__}: d_model={config.d_model}, heads={config.num_heads} of d_k="
        f"{config.d_model // config.num_heads}, d_ff={config.ffn_dim}, vocab={config.vocab_size}, "
        f"norm={config.norm_position}-LN, batch B={args.batch_size}, length T={args.seq_len}"
    )
    print(format_trace(records, args.all_layers))
    if not args.all_layers:
        print("(later layers: same steps and shapes as layer 0; --all_layers shows them)")
    print()
    print(format_parameters(model))


if __name__ == "__main__":
    main()
