"""`_can_compile_fullgraph = True` is a promise: a training step (forward, loss, backward) of both models compiles
as one graph, and gives the eager step's loss and gradients. The `aot_eager` backend traces forward and backward
exactly as inductor would receive them, without inductor's code generation (seconds, not minutes, on CPU)."""

import pytest
import torch

from tests.test_precision import tiny


@pytest.mark.parametrize("kind", ["gpt", "encoder-decoder"])
def test_training_step_compiles_to_one_graph_with_eager_results(kind):
    torch._dynamo.reset()
    model = tiny(kind, "cpu").train()  # dropout 0, SDPA
    ids = torch.randint(3, 99, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = dict(input_ids=ids, labels=ids)

    eager_loss = model(**batch).loss
    eager_loss.backward()
    eager_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    loss = compiled(**batch).loss
    loss.backward()
    torch.testing.assert_close(loss, eager_loss)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, msg=name)


@pytest.mark.parametrize("kind", ["gpt", "encoder-decoder"])
def test_decoding_step_with_few_rows_compiles_to_one_graph(kind):
    """A decoding step's 2 rows take `vanilla_layers.linear`'s few-rows path, which must trace as one graph too."""
    torch._dynamo.reset()
    model = tiny(kind, "cpu").eval()
    ids = torch.randint(3, 99, (2, 1), generator=torch.Generator().manual_seed(0))
    inputs = dict(input_ids=ids) if kind == "gpt" else dict(input_ids=ids.repeat(1, 5), decoder_input_ids=ids)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs).logits, model(**inputs).logits)
