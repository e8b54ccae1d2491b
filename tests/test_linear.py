"""`vanilla_layers.linear`: the linear maps' few-rows CPU path for decoding steps gives `nn.Linear`'s results
and gradients, is really taken, and steps aside for anything that is not a plain, unhooked `nn.Linear`."""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from hf_vanilla_transformer.vanilla_layers import FEW_ROWS, linear


class ProductShapes(TorchDispatchMode):
    """Records the output shape of every matrix product dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.addmm, torch.ops.aten.mm):
            self.shapes.append(tuple(out.shape))
        return out


def layer(bias=True, d_in=24, d_out=40):
    torch.manual_seed(0)
    return nn.Linear(d_in, d_out, bias=bias)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 24), (1, 1, 24), (2, 1, 24), (3, 24), (4, 1, 24), (5, 1, 24), (2, 8, 24)])
def test_equals_nn_linear_with_gradients(shape, bias):
    module = layer(bias)
    x = torch.randn(shape, requires_grad=True)
    expected = module(x)
    (expected * torch.arange(expected.numel()).view_as(expected)).sum().backward()
    grads = [x.grad.clone(), *(p.grad.clone() for p in module.parameters())]
    x.grad = None
    module.zero_grad()

    out = linear(module, x)
    assert out.shape == expected.shape and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    (out * torch.arange(out.numel()).view_as(out)).sum().backward()
    for got, want in zip([x.grad, *(p.grad for p in module.parameters())], grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_non_contiguous_rows():
    module = layer()
    x = torch.randn(4, 3, 24)[:, -1:, :]  # the last position of each row, as generation slices it
    torch.testing.assert_close(linear(module, x), module(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rows", [1, 2, FEW_ROWS])
def test_few_rows_take_the_weight_as_left_operand(rows):
    module = layer(d_out=40)
    with torch.no_grad(), ProductShapes() as products:
        linear(module, torch.randn(rows, 1, 24))
    assert products.shapes == [(40, max(rows, 2))]  # W x^T, not x W^T, which would be (rows, 40)


def test_more_rows_and_other_dtypes_use_nn_linear():
    module = layer(d_out=40)
    with torch.no_grad(), ProductShapes() as products:
        linear(module, torch.randn(FEW_ROWS + 1, 24))
    assert products.shapes == [(FEW_ROWS + 1, 40)]
    double = layer().double()
    x = torch.randn(2, 24, dtype=torch.float64)
    torch.testing.assert_close(linear(double, x), double(x))


def test_wrapped_or_hooked_maps_are_called_as_they_are():
    """A LoRA adapter, a quantised layer or accelerate's offloading changes what the map computes; the fast path
    must not bypass them."""
    x = torch.randn(2, 1, 24)

    class Scaled(nn.Linear):  # stands for a subclass such as a LoRA or quantised layer
        def forward(self, input):
            return 2 * super().forward(input)

    subclass = Scaled(24, 40)
    torch.testing.assert_close(linear(subclass, x), 2 * nn.functional.linear(x, subclass.weight, subclass.bias))

    hooked = layer()
    hooked.register_forward_hook(lambda module, args, output: output + 1)
    torch.testing.assert_close(linear(hooked, x), nn.functional.linear(x, hooked.weight, hooked.bias) + 1)

    pre_hooked = layer()
    pre_hooked.register_forward_pre_hook(lambda module, args: (args[0] * 0,))
    torch.testing.assert_close(linear(pre_hooked, x), pre_hooked.bias.expand(2, 1, 40))

    replaced = layer()
    original = replaced.forward
    replaced.forward = lambda input: original(input) - 3  # what accelerate's hooks do to `forward`
    torch.testing.assert_close(linear(replaced, x), nn.functional.linear(x, replaced.weight, replaced.bias) - 3)


def test_few_rows_zero_turns_the_path_off(monkeypatch):
    from hf_vanilla_transformer import vanilla_layers

    monkeypatch.setattr(vanilla_layers, "FEW_ROWS", 0)
    with torch.no_grad(), ProductShapes() as products:
        vanilla_layers.linear(layer(d_out=40), torch.randn(2, 1, 24))
    assert products.shapes == [(2, 40)]
