"""Mixed precision and attention kernels: what a GPU run relies on (bf16 autocast, bf16 weights, flash SDPA).

Each test runs on the CPU (torch has bf16 autocast and a flash SDPA kernel there too) and again on CUDA when
there is one; the CUDA cases skip cleanly on a CPU-only machine. On CUDA the flash test is strict: that kernel
takes no mask, so it fails if an unpadded causal batch makes the model build one.
"""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from tests import test_encoder_decoder, test_gpt

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]
KINDS = ["gpt", "encoder-decoder"]


def tiny(kind: str, device: str, attention: str = "sdpa"):
    model = (test_gpt.tiny_model if kind == "gpt" else test_encoder_decoder.tiny_model)(dropout=0.0)
    model.config._attn_implementation = attention
    return model.to(device)


def padded_batch(device: str) -> dict:
    ids = torch.randint(3, 99, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0  # one padded row
    labels = ids.masked_fill(mask == 0, -100)
    return {k: v.to(device) for k, v in dict(input_ids=ids, attention_mask=mask, labels=labels).items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_training_step_matches_float32(kind, attention, device):
    model = tiny(kind, device, attention).train()
    batch = padded_batch(device)
    reference = model(**batch).loss
    reference.backward()
    reference_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    with torch.autocast(device, dtype=torch.bfloat16):
        output = model(**batch)
    output.loss.backward()
    assert output.logits.dtype == torch.bfloat16  # the matrix products did run in bf16
    assert output.loss.dtype == torch.float32  # the loss is taken in float32 (`token_loss` upcasts the logits)
    torch.testing.assert_close(output.loss, reference, rtol=1e-2, atol=1e-2)
    # Relative error of each gradient; scale floored at 1e-3 of the total norm, because some gradients are zero up
    # to rounding (a key bias shifts all scores of a query equally, which softmax ignores). bf16 keeps 8 bits of
    # mantissa and flips a few ReLUs: measured ≤ 5%; a gradient cut or computed wrongly is off by ~100%.
    total = torch.stack([grad.norm() for grad in reference_grads.values()]).norm()
    for name, grad in reference_grads.items():
        bf16_grad = model.get_parameter(name).grad
        assert torch.isfinite(bf16_grad).all(), name
        error = (bf16_grad - grad).norm() / torch.clamp(grad.norm(), min=1e-3 * total)
        assert error < 0.1, (name, error.item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_bf16_weights_forward_and_generate(kind, device):
    model = tiny(kind, device).eval()
    batch = padded_batch(device)
    with torch.no_grad():
        reference = model(**batch).loss
        model.to(torch.bfloat16)
        output = model(**batch)
        assert output.logits.dtype == torch.bfloat16
        torch.testing.assert_close(output.loss, reference, rtol=2e-2, atol=2e-2)
        prompt = batch["input_ids"][:, :4] if kind == "gpt" else batch["input_ids"]
        mask = None if kind == "gpt" else batch["attention_mask"]
        generated = model.generate(prompt, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, num_beams=2)
    start = prompt.shape[1] if kind == "gpt" else 1  # the prompt, or the decoder start token
    assert generated.shape == (2, start + 6)


@pytest.mark.parametrize("device", DEVICES)
def test_gpt_runs_on_the_flash_kernel_alone(device):
    """An unpadded causal batch must reach SDPA without a mask (`is_causal`): the flash kernel accepts nothing
    else on CUDA. Its output equals the math kernel's (float32 on CPU, bf16 on CUDA: flash needs half precision)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = tiny("gpt", device).eval().to(dtype)
    ids = torch.randint(3, 99, (2, 16), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            flash = model(ids).logits
        with sdpa_kernel([SDPBackend.MATH]):
            math = model(ids).logits
    tolerance = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flash, math, **tolerance)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (inductor's GPU code generation)")
@pytest.mark.parametrize("kind", KINDS)
def test_compiled_bf16_training_step_on_gpu(kind):
    """The GPU path of `tests/test_compile.py`: inductor, bf16 autocast, one graph, the eager step's loss."""
    torch._dynamo.reset()
    model = tiny(kind, "cuda").train()
    ids = torch.randint(3, 99, (4, 32), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model(input_ids=ids, labels=ids).loss
        compiled = torch.compile(model, fullgraph=True)(input_ids=ids, labels=ids).loss
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-2, atol=1e-2)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_gpu_benchmark_runs_at_toy_sizes_on_cpu():
    """`bench/gpu.py` is for a GPU machine, which CI never has: its code path (bf16 steps, compiled with
    `fullgraph=True`, taking turns with HF's models, the kernel report) runs here at toy sizes."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    command = [sys.executable, "bench/gpu.py", "--device", "cpu", "--small", "--compile_backend", "aot_eager"]
    result = subprocess.run(
        [*command, "--steps", "2", "--warmup", "1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    for name in ("GPT gpt2 step, fp32 eager", "GPT gpt2 step, bf16 compiled", "enc-dec base step, bf16 compiled"):
        assert any(line.startswith(name) and "ratio" in line for line in lines), (name, result.stdout)
    assert any("(ours, bf16 forward)" in line and "flash kernel alone" in line for line in lines), result.stdout
