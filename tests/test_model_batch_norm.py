"""deepem.model.batch_norm and its kernels (torch.ops.deepem._batch_norm3d_train*): outputs,
gradients and running statistics equal nn.BatchNorm3d's in float64, also with a mean far from
zero; the plain path wherever the fast one does not apply; the same checkpoints."""
import pytest
import torch
import torch.nn.functional as F

from deepem.model.batch_norm import MIN_VALUES, BatchNorm3d
from deepem.ops import batch_norm3d as kernels


def reference(x, weight, bias, grad_out, eps=1e-5, relu=False):
    """Output, (grad_x, grad_weight, grad_bias) and the unbiased variance in float64."""
    x64 = x.double().requires_grad_(True)
    w64 = weight.double().requires_grad_(True)
    b64 = bias.double().requires_grad_(True)
    rm, rv = torch.zeros(x.shape[1], dtype=torch.float64), torch.ones(x.shape[1], dtype=torch.float64)
    out = F.batch_norm(x64, rm, rv, w64, b64, True, 1.0, eps)
    out = F.relu(out) if relu else out
    (out * grad_out.double()).sum().backward()
    return out.detach(), (x64.grad, w64.grad, b64.grad), rv


SHAPES = [(2, 3, 4, 5, 6), (1, 1, 1, 1, 3), (3, 5, 7, 1, 9), (8, 6, 16, 16, 16), (2, 8, 3, 3, 37)]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("offset", [0.0, 300.0])  # a mean far from zero must not cancel the variance
@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_equal_float64_batch_norm(shape, offset, relu):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen) * 2 + offset
    c = shape[1]
    weight, bias = torch.randn(c, generator=gen), torch.randn(c, generator=gen)
    grad_out = torch.randn(shape, generator=gen)
    want, want_grads, want_var = reference(x, weight, bias, grad_out, relu=relu)
    out, mean, invstd, var = kernels.batch_norm3d_train(x, weight, bias, 1e-5, relu)
    if relu:  # the ReLU's mask is the kernel's own output: compare where the reference agrees on it
        assert (out >= 0).all()
        assert ((out > 0) == (want > 0)).float().mean() > 0.999
        grad_out = grad_out * ((out > 0) == (want > 0))
        want, want_grads, want_var = reference(x, weight, bias, grad_out, relu=relu)
    grads = kernels.batch_norm3d_train_backward(grad_out, x, weight, mean, invstd, out if relu else None)
    # float32 rounding of x itself: 300 +- 2 carries ~1e-5 of its spread
    tol = 1e-5 if offset == 0 else 1e-4
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol * float(want.abs().max()))
    torch.testing.assert_close(mean.double(), x.double().mean((0, 2, 3, 4)), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var.double(), want_var, rtol=tol, atol=0)
    for got, ref in zip(grads, want_grads):
        torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol * float(ref.abs().max()))


def test_backward_output_mask():
    x, w = torch.randn(2, 3, 4, 4, 4), torch.randn(3)
    _, mean, invstd, _ = kernels.batch_norm3d_train(x, w, None, 1e-5)
    gx, gw, gb = kernels.batch_norm3d_train_backward(torch.randn_like(x), x, w, mean, invstd, None, (True, False, False))
    assert gx.shape == x.shape and gw is None and gb is None


def test_bad_arguments_are_named():
    x = torch.randn(2, 3, 4, 4, 4)
    with pytest.raises(RuntimeError, match="_batch_norm3d_train: argument 'input' must be a float32 CPU tensor"):
        kernels.batch_norm3d_train(x.double(), None, None, 1e-5)
    with pytest.raises(RuntimeError, match=r"argument 'weight' must have shape \[3\]"):
        kernels.batch_norm3d_train(x, torch.ones(4), None, 1e-5)
    with pytest.raises(RuntimeError, match="argument 'input' is empty"):
        kernels.batch_norm3d_train(x[:0], None, None, 1e-5)
    with pytest.raises(RuntimeError, match="argument 'eps' must be > 0"):
        kernels.batch_norm3d_train(x, None, None, 0.0)


def test_opcheck():
    x, w, b = torch.randn(2, 3, 4, 5, 6), torch.randn(3), torch.randn(3)
    torch.library.opcheck(torch.ops.deepem._batch_norm3d_train.default, (x, w, b, 1e-5, True))
    out, mean, invstd, _ = kernels.batch_norm3d_train(x, w, b, 1e-5, True)
    torch.library.opcheck(torch.ops.deepem._batch_norm3d_train_backward.default,
                          (torch.randn_like(x), x, w, mean, invstd, out, [True, True, True]))


@pytest.mark.parametrize("relu", [False, True])
def test_module_trains_like_nn_batch_norm(relu):
    """Three training steps and an eval pass: outputs, gradients, running statistics and the
    batch count equal nn.BatchNorm3d's (+ nn.ReLU) (momentum 0.1); the state_dict keys are the same."""
    torch.manual_seed(0)
    ours, bn = BatchNorm3d(6, relu=relu), torch.nn.BatchNorm3d(6)
    plain = torch.nn.Sequential(bn, torch.nn.ReLU()) if relu else bn
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-1, 1)
    bn.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(bn.state_dict())
    for step in range(3):
        x = torch.randn(2, 6, 16, 16, 16) * (step + 1) + step
        assert x.numel() >= MIN_VALUES
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        out_a, out_b = ours(xa), plain(xb)
        assert "BatchNormTrain" in type(out_a.grad_fn).__name__
        g = torch.randn_like(x)
        out_a.backward(g)
        out_b.backward(g)
        torch.testing.assert_close(out_a, out_b, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)
        for a, b in ((ours.weight.grad, bn.weight.grad), (ours.bias.grad, bn.bias.grad)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ours.running_mean, bn.running_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.running_var, bn.running_var, rtol=1e-5, atol=1e-5)
    assert int(ours.num_batches_tracked) == int(bn.num_batches_tracked) == 3
    ours.eval()
    plain.eval()
    x = torch.randn(1, 6, 8, 8, 8)
    torch.testing.assert_close(ours(x), plain(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["eval", "small", "double", "channels_last", "autocast", "off", "no_momentum"])
def test_plain_path_where_the_fast_one_does_not_apply(case):
    torch.manual_seed(0)
    bn = BatchNorm3d(4, cpu_kernels=case != "off", momentum=None if case == "no_momentum" else 0.1, relu=True)
    x = torch.randn(2, 4, 3, 3, 3) if case == "small" else torch.randn(2, 4, 16, 16, 16)
    if case == "eval":
        bn.eval()
    if case == "double":
        bn, x = bn.double(), x.double()
    if case == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = bn(x)
    else:
        out = bn(x)
    assert "BatchNormTrain" not in type(out.grad_fn).__name__
    assert (out >= 0).all()  # the ReLU on the plain path too
