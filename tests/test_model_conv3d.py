"""deepem.model.conv3d: the CPU backward computed as forward convolutions gives nn.Conv3d's
gradients (float64 reference by autograd through torch's own convolution), takes the plain
path wherever it should, and leaves parameters and checkpoints as nn.Conv3d's."""
import pytest
import torch
import torch.nn.functional as F

from deepem.model import Res18
from deepem.model.batch_norm import BatchNorm3d
from deepem.model.conv3d import Conv3d, _ConvGradAsForward
from deepem.model.pool import MaxPool3d2x


def reference_grads(x, weight, bias, padding, grad_out):
    """Gradients of sum(conv3d(x) * grad_out) by autograd in float64 through F.conv3d."""
    x64 = x.detach().double().requires_grad_(x.requires_grad)
    w64 = weight.detach().double().requires_grad_(True)
    b64 = bias.detach().double().requires_grad_(True)
    (F.conv3d(x64, w64, b64, padding=padding) * grad_out.double()).sum().backward()
    return x64.grad, w64.grad, b64.grad


CASES = [  # batch, in, out, kernel, padding, spatial size (D, H, W)
    (1, 1, 1, 3, 1, (1, 1, 1)),
    (1, 1, 6, 3, 1, (8, 8, 8)),
    (2, 6, 6, 3, 1, (5, 7, 9)),
    (3, 5, 7, 3, 1, (4, 1, 6)),
    (2, 4, 3, 3, 0, (5, 6, 7)),
    (2, 3, 4, 1, 0, (3, 4, 5)),
    (1, 8, 8, 3, 1, (16, 16, 16)),
    (4, 2, 3, 5, 2, (6, 5, 4)),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch,c_in,c_out,k,p,size", CASES)
def test_gradients_equal_torch_convolution(batch, c_in, c_out, k, p, size, dtype):
    gen = torch.Generator().manual_seed(batch * 100 + c_in * 10 + c_out + k)
    conv = Conv3d(c_in, c_out, k, padding=p).to(dtype)
    x = torch.randn(batch, c_in, *size, generator=gen, dtype=dtype, requires_grad=True)
    out = conv(x)
    assert out.grad_fn is not None and "ConvGradAsForward" in type(out.grad_fn).__name__
    grad_out = torch.randn(out.shape, generator=gen, dtype=dtype)
    out.backward(grad_out)
    want = reference_grads(x, conv.weight, conv.bias, p, grad_out)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    for got, ref in zip((x.grad, conv.weight.grad, conv.bias.grad), want):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), ref, **tol)


def test_input_without_grad_gives_weight_grads_only():
    torch.manual_seed(0)
    conv = Conv3d(1, 6, 3, padding=1)
    x = torch.randn(2, 1, 8, 8, 8)  # the network's input: no gradient wanted
    grad_out = torch.randn(2, 6, 8, 8, 8)
    conv(x).backward(grad_out)
    _, w_ref, b_ref = reference_grads(x, conv.weight, conv.bias, 1, grad_out)
    assert x.grad is None
    torch.testing.assert_close(conv.weight.grad.double(), w_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv.bias.grad.double(), b_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding", [0, 1])
def test_gradcheck_float64(padding):
    torch.manual_seed(0)
    x = torch.randn(2, 2, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _ConvGradAsForward.apply(x, w, b, padding), (x, w, b))


@pytest.mark.parametrize("context", ["no_grad", "autocast", "frozen_weight", "off"])
def test_plain_path_where_the_fast_one_does_not_apply(context):
    torch.manual_seed(0)
    conv = Conv3d(3, 4, 3, padding=1, cpu_kernels=context != "off")
    plain = torch.nn.Conv3d(3, 4, 3, padding=1)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(1, 3, 6, 6, 6, requires_grad=True)
    if context == "frozen_weight":
        conv.requires_grad_(False)
        plain.requires_grad_(False)
    if context == "no_grad":
        with torch.no_grad():
            out, want = conv(x), plain(x)
    elif context == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, want = conv(x), plain(x)
    else:
        out, want = conv(x), plain(x)
    assert out.grad_fn is None or "ConvGradAsForward" not in type(out.grad_fn).__name__
    assert torch.equal(out, want)


def test_checkpoints_are_nn_conv3d_checkpoints():
    fast, native = Res18(width=0.25), Res18(width=0.25, cpu_kernels=False)
    assert list(fast.state_dict()) == list(native.state_dict())
    native.load_state_dict(fast.state_dict())
    assert all(isinstance(m, torch.nn.Conv3d) for m in fast.modules() if isinstance(m, Conv3d))


def test_res18_training_gradients_equal_onednn_backward():
    torch.manual_seed(0)
    fast, native = Res18(width=0.25, dropout=0.0), Res18(width=0.25, dropout=0.0, cpu_kernels=False)
    native.load_state_dict(fast.state_dict())
    x, coord = torch.rand(2, 1, 32, 32, 32), torch.rand(2, 3, 8, 8, 8)
    target = torch.randn(2, 8, 8, 8, 3, 5)
    for net in (fast, native):
        (net(x, coord) * target).sum().backward()
    # atol against the largest gradient: a conv bias before batch norm has a zero gradient, which
    # both backward passes give as rounding noise
    scale = max(float(p.grad.abs().max()) for p in native.parameters())
    for (name, a), b in zip(fast.named_parameters(), native.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("form", ["channels_last", "compile"])
def test_channels_last_and_torch_compile_give_onednn_gradients(form):
    """run.channels_last feeds the convolutions channels_last_3d tensors (compared with oneDNN's
    backward in the same layout: the layout alone moves gradients by ~1% here, in both);
    torch.compile traces the autograd.Function whole (fullgraph). The convolutions only: batch
    norm and pooling keep torch's kernels on both sides (where a channels_last run still hands
    deepem's batch norm an NCDHW tensor, its rounding alone moves this tiny network's
    gradients past 1e-3 on one thread)."""
    torch.manual_seed(0)
    fast, native = Res18(width=0.125, dropout=0.0), Res18(width=0.125, dropout=0.0, cpu_kernels=False)
    for m in fast.modules():
        if isinstance(m, (BatchNorm3d, MaxPool3d2x)):
            m.cpu_kernels = False
    native.load_state_dict(fast.state_dict())
    x, coord = torch.rand(2, 1, 32, 32, 32), torch.rand(2, 3, 8, 8, 8)
    target = torch.randn(2, 8, 8, 8, 3, 5)
    if form == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last_3d)
        fast, native = (net.to(memory_format=torch.channels_last_3d) for net in (fast, native))
        run = fast
    else:
        run = torch.compile(fast, backend="aot_eager", fullgraph=True)
    (run(x, coord) * target).sum().backward()
    (native(x, coord) * target).sum().backward()
    scale = max(float(p.grad.abs().max()) for p in native.parameters())
    for (name, a), b in zip(fast.named_parameters(), native.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("env,want", [(None, True), ("1", True), ("0", False)])
def test_environment_switches_the_cpu_kernels(monkeypatch, env, want):
    if env is None:
        monkeypatch.delenv("DEEPEM_CPU_KERNELS", raising=False)
    else:
        monkeypatch.setenv("DEEPEM_CPU_KERNELS", env)
    net = Res18(width=0.25)
    switched = [m.cpu_kernels for m in net.modules() if hasattr(m, "cpu_kernels")]
    assert len(switched) > 40 and all(s == want for s in switched)
    assert all(m.cpu_kernels for m in Res18(width=0.25, cpu_kernels=True).modules() if hasattr(m, "cpu_kernels"))
