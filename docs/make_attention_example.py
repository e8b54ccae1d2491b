"""Train a tiny encoder-decoder to reverse word order, then draw its attention maps (docs/attention_example.png)."""

import random
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration
from hf_vanilla_transformer.visualize import attention_maps

WORDS = "the a cat dog sat ran on in mat park big small red blue saw bird tree house".split()
vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
tok = PreTrainedTokenizerFast(
    tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
)

torch.manual_seed(0)
random.seed(0)
config = VanillaTransformerConfig.from_preset(
    "tiny", vocab_size=len(vocab), d_model=64, ffn_dim=128, label_smoothing=0.0
)
model = VanillaTransformerForConditionalGeneration(config)
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)


def batch(n=64):
    src, tgt = [], []
    for _ in range(n):
        words = random.choices(WORDS, k=random.randint(4, 8))
        src.append(" ".join(words))
        tgt.append(" ".join(reversed(words)))
    s = tok(src, padding=True, return_tensors="pt")
    t = tok(tgt, padding=True, return_tensors="pt")
    labels = t.input_ids.masked_fill(t.attention_mask == 0, -100)
    return s.input_ids, s.attention_mask, labels


t0 = time.time()
model.train()
for step in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1500):
    ids, mask, labels = batch()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 200 == 0:
        print(step, round(loss.item(), 3), round(time.time() - t0, 1), flush=True)
model.eval()
text = "the big cat sat on a red mat"
out = model.generate(**tok(text, return_tensors="pt"), num_beams=1, max_new_tokens=12)
print("reversed:", tok.decode(out[0], skip_special_tokens=True))
fig = attention_maps(model, tok, text, " ".join(reversed(text.split())), layers=[1])
fig.savefig(Path(__file__).resolve().parent / "attention_example.png", dpi=72)
