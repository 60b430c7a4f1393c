"""deepem.model.pool and torch.ops.deepem._max_pool3d_2x: the same values and indices as torch's
max_pool3d (ties, NaN, -inf, every x tail past an 8-output block), the same gradients, the plain
path where the kernel does not apply, named errors."""
import pytest
import torch
import torch.nn.functional as F

from deepem.model.pool import MaxPool3d2x


def torch_pool(x):
    return F.max_pool3d(x, 2, 2, return_indices=True)


@pytest.mark.parametrize("shape", [(1, 1, 2, 2, 2), (2, 3, 4, 6, 16), (1, 2, 2, 4, 18), (2, 6, 8, 8, 34),
                                   (1, 1, 6, 2, 30), (3, 2, 2, 10, 48)])
def test_values_and_indices_equal_torch(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen)
    out, idx = torch.ops.deepem._max_pool3d_2x(x)
    want, want_idx = torch_pool(x)
    assert torch.equal(out, want) and torch.equal(idx, want_idx)


@pytest.mark.parametrize("fill", ["ties", "relu", "nan", "neg_inf", "mixed"])
def test_ties_nan_and_infinity_pick_torchs_index(fill):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 4, 4, 38, generator=gen)
    if fill == "ties":
        x = torch.randint(0, 3, x.shape, generator=gen).float()
    elif fill == "relu":  # the zeros after a ReLU: whole windows tie
        x = x.clamp(min=0)
    elif fill == "nan":
        x[torch.rand(x.shape, generator=gen) < 0.2] = float("nan")
    elif fill == "neg_inf":
        x[:] = float("-inf")
    else:
        m = torch.rand(x.shape, generator=gen)
        x[m < 0.1] = float("nan")
        x[(m > 0.1) & (m < 0.3)] = float("-inf")
        x[(m > 0.3) & (m < 0.4)] = float("inf")
    out, idx = torch.ops.deepem._max_pool3d_2x(x)
    want, want_idx = torch_pool(x)
    assert torch.equal(out.isnan(), want.isnan())
    assert torch.equal(out.nan_to_num(), want.nan_to_num()) and torch.equal(idx, want_idx)


def test_module_gradients_equal_torch():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 8, 20, generator=gen).clamp(min=0)  # ties included
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = MaxPool3d2x()(a)
    assert "MaxPool2x" in type(out.grad_fn).__name__
    g = torch.randn(out.shape, generator=gen)
    out.backward(g)
    F.max_pool3d(b, 2, 2).backward(g)
    assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("case", ["double", "odd", "channels_last", "off"])
def test_plain_path_where_the_kernel_does_not_apply(case):
    x = torch.randn(2, 3, 4, 4, 5 if case == "odd" else 4, requires_grad=True)
    if case == "double":
        x = x.detach().double().requires_grad_(True)
    if case == "channels_last":
        x = x.detach().contiguous(memory_format=torch.channels_last_3d).requires_grad_(True)
    out = MaxPool3d2x(cpu_kernels=case != "off")(x)
    assert "MaxPool2x" not in type(out.grad_fn).__name__
    assert torch.equal(out, F.max_pool3d(x, 2, 2))


def test_bad_arguments_are_named():
    with pytest.raises(RuntimeError, match="_max_pool3d_2x: argument 'input' must have shape .* even D, H, W"):
        torch.ops.deepem._max_pool3d_2x(torch.randn(1, 1, 2, 2, 3))
    with pytest.raises(RuntimeError, match="must be a float32 CPU tensor"):
        torch.ops.deepem._max_pool3d_2x(torch.randn(1, 1, 2, 2, 2, dtype=torch.float64))


def test_opcheck():
    torch.library.opcheck(torch.ops.deepem._max_pool3d_2x.default, (torch.randn(2, 3, 4, 4, 18),))
