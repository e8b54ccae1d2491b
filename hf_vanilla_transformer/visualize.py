"""Who attends to whom: heat maps of the attention weights softmax(Q K^T / sqrt(d_k)) (§3.2.1, Eq. 1).

    python -m hf_vanilla_transformer.visualize MODEL "a source sentence" --target "its translation" --out maps.png
    python -m hf_vanilla_transformer.visualize MODEL "a GPT prompt" --layers 0 1 --heads 0 --out maps.png

MODEL is a folder saved with `save_pretrained` that holds the model and its tokenizer. The weights are the ones the
model returns for `output_attentions=True`, one map per layer and head, rows = queries, columns = keys:
    encoder-decoder: "encoder" self-attention (source x source), "decoder" masked self-attention (target x target,
                     nothing above the diagonal) and "cross" encoder-decoder attention (target x source, §3.2.3);
    GPT:             "self", masked self-attention (tokens x tokens).

matplotlib is optional (`pip install hf_vanilla_transformer[viz]`); figures are drawn with the Agg backend
without touching pyplot's global state.
"""

import argparse
from typing import NamedTuple

import torch

TITLES = {
    "encoder": "encoder self-attention",
    "decoder": "decoder masked self-attention",
    "cross": "encoder-decoder (cross) attention",
    "self": "masked self-attention",
}


class AttentionMaps(NamedTuple):
    weights: torch.Tensor  # (L, H, T_query, T_key) for one sequence
    query_tokens: list[str]
    key_tokens: list[str]


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "Attention maps need matplotlib, an optional extra: pip install hf_vanilla_transformer[viz]"
        ) from error
    return Figure, FigureCanvasAgg


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


@torch.no_grad()
def attention_weights(model, tokenizer, text: str, target_text: str | None = None) -> dict[str, AttentionMaps]:
    """The attention weights of one forward pass over `text`, by kind ("encoder", "decoder", "cross" or "self").

    Encoder-decoder: the decoder reads the start token followed by `target_text` (teacher forcing); without a
    target it reads what the model itself generates greedily (up to 32 tokens).
    """
    model.eval()
    tokens = tokenizer.convert_ids_to_tokens
    source = torch.tensor([_ids(tokenizer, text)], device=model.device)  # (1, S)
    if not model.config.is_encoder_decoder:
        out = model(input_ids=source, output_attentions=True, use_cache=False)
        return {"self": AttentionMaps(torch.stack(out.attentions)[:, 0], tokens(source[0]), tokens(source[0]))}

    start = model.config.decoder_start_token_id
    if target_text is not None:
        target = torch.tensor([[start, *_ids(tokenizer, target_text)]], device=model.device)  # (1, T)
    else:
        target = model.generate(source, num_beams=1, do_sample=False, max_new_tokens=32)  # starts with `start`
    out = model(input_ids=source, decoder_input_ids=target, output_attentions=True, use_cache=False)
    src, tgt = tokens(source[0]), tokens(target[0])
    return {
        "encoder": AttentionMaps(torch.stack(out.encoder_attentions)[:, 0], src, src),  # (L, H, S, S)
        "decoder": AttentionMaps(torch.stack(out.decoder_attentions)[:, 0], tgt, tgt),  # (L, H, T, T)
        "cross": AttentionMaps(torch.stack(out.cross_attentions)[:, 0], tgt, src),  # (L, H, T, S)
    }


def _draw_grid(subfig, maps: AttentionMaps, layers: list[int], heads: list[int], title: str):
    """One layer x head grid of heat maps; token labels on the left column and the bottom row."""
    axes = subfig.subplots(len(layers), len(heads), squeeze=False)
    image = None
    for row, layer in enumerate(layers):
        for col, head in enumerate(heads):
            ax = axes[row][col]
            image = ax.imshow(maps.weights[layer, head].float().cpu().numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
            ax.set_xticks(range(len(maps.key_tokens)))
            ax.set_yticks(range(len(maps.query_tokens)))
            ax.set_xticklabels(maps.key_tokens if row == len(layers) - 1 else [], rotation=90, fontsize=7)
            ax.set_yticklabels(maps.query_tokens if col == 0 else [], fontsize=7)
    subfig.suptitle(f"{title} (rows: queries, columns: keys)", fontsize=10)
    subfig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight")


def attention_maps(model, tokenizer, text: str, target_text: str | None = None, layers=None, heads=None, kind=None):
    """A matplotlib `Figure` of the attention weights over `text`: for each kind, a grid of layers x heads.

    `layers`, `heads`: indices to show (default: all). `kind`: one of "encoder", "decoder", "cross" (encoder-decoder)
    or "self" (GPT), or a list of them; default all kinds of the model. See `attention_weights` for `target_text`.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    all_maps = attention_weights(model, tokenizer, text, target_text)
    kinds = list(all_maps) if kind is None else [kind] if isinstance(kind, str) else list(kind)
    unknown = [k for k in kinds if k not in all_maps]
    if unknown:
        raise ValueError(f"unknown kind {unknown}; this model has {', '.join(all_maps)}")
    num_layers, num_heads = all_maps[kinds[0]].weights.shape[:2]
    layers = list(range(num_layers)) if layers is None else list(layers)
    heads = list(range(num_heads)) if heads is None else list(heads)

    longest = max(max(len(all_maps[k].query_tokens), len(all_maps[k].key_tokens)) for k in kinds)
    cell = max(1.6, 0.22 * longest)  # inches per map, so that token labels stay readable
    fig = Figure(figsize=(cell * len(heads) + 1.5, (cell * len(layers) + 0.8) * len(kinds)), layout="constrained")
    FigureCanvasAgg(fig)
    subfigs = fig.subfigures(len(kinds), 1, squeeze=False)[:, 0]
    for subfig, name in zip(subfigs, kinds):
        _draw_grid(subfig, all_maps[name], layers, heads, TITLES[name])
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description="Heat maps of a saved model's attention weights.")
    parser.add_argument("model", help="folder with the saved model and its tokenizer")
    parser.add_argument("text", help="source text (encoder-decoder) or prompt (GPT)")
    parser.add_argument("--target", help="target text for the decoder (default: the model's greedy output)")
    parser.add_argument("--out", default="attention_maps.png", help="image file to write")
    parser.add_argument("--layers", type=int, nargs="+", help="layer indices (default: all)")
    parser.add_argument("--heads", type=int, nargs="+", help="head indices (default: all)")
    parser.add_argument("--kind", nargs="+", choices=tuple(TITLES), help="which attention (default: all)")
    parser.add_argument("--tokenizer", help="tokenizer folder, if not saved with the model")
    parser.add_argument("--dpi", type=int, default=100)
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from .trace import load_pretrained

    model = load_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    fig = attention_maps(model, tokenizer, args.text, args.target, args.layers, args.heads, args.kind)
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
