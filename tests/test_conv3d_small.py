"""torch.ops.deepem._conv3d_small and _conv3d_small_weight_grad (the narrow detector's CPU
training convolution) against float64 references through torch's own convolution: random sizes
with every x tail (1..17 voxels past a 16-voxel block), every output-channel blocking (1..8),
borders of one voxel, empty inputs, NaN and infinity, non-contiguous inputs, bad arguments."""
import pytest
import torch
import torch.nn.functional as F

from deepem.ops import conv3d_small as small


def reference(x, w, b, grad_out):
    """Output and weight gradient in float64 by autograd through F.conv3d(padding=1)."""
    w64 = w.double().requires_grad_(True)
    out = F.conv3d(x.double(), w64, None if b is None else b.double(), padding=1)
    (out * grad_out.double()).sum().backward()
    return out.detach(), w64.grad


SIZES = [  # batch, in, out, (D, H, W)
    (1, 1, 1, (1, 1, 1)), (2, 1, 6, (5, 7, 9)), (1, 6, 6, (3, 4, 8)), (2, 3, 5, (4, 17, 23)),
    (1, 8, 8, (6, 6, 16)), (1, 7, 4, (3, 5, 31)), (2, 2, 7, (2, 3, 17)), (1, 5, 3, (1, 9, 15)),
    (3, 4, 2, (7, 2, 33)), (1, 6, 8, (4, 4, 40)), (2, 8, 6, (5, 3, 7)), (1, 1, 5, (9, 1, 2)),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch,c_in,c_out,size", SIZES)
def test_forward_and_weight_grad_equal_float64_reference(batch, c_in, c_out, size, bias):
    gen = torch.Generator().manual_seed(batch * 1000 + c_in * 100 + c_out * 10 + size[2])
    x = torch.randn(batch, c_in, *size, generator=gen)
    w = torch.randn(c_out, c_in, 3, 3, 3, generator=gen)
    b = torch.randn(c_out, generator=gen) if bias else None
    g = torch.randn(batch, c_out, *size, generator=gen)
    want, want_w = reference(x, w, b, g)
    out = small.conv3d_small(x, w, b)
    grad_w = small.conv3d_small_weight_grad(x, g)
    assert out.dtype == grad_w.dtype == torch.float32
    assert out.shape == want.shape and grad_w.shape == want_w.shape
    # float32 sums of up to 27 * 8 products (output) and of every voxel's (weight gradient)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    torch.testing.assert_close(grad_w.double(), want_w, rtol=1e-5, atol=1e-5 * float(want_w.abs().max()))


def test_detector_sizes_equal_float64_reference():
    """The quarter-width Res18's full-resolution layer at the demo's crop, all threads."""
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(8, 6, 32, 32, 32, generator=gen), torch.randn(6, 6, 3, 3, 3, generator=gen), torch.randn(6)
    g = torch.randn(8, 6, 32, 32, 32, generator=gen)
    want, want_w = reference(x, w, b, g)
    torch.testing.assert_close(small.conv3d_small(x, w, b).double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    got_w = small.conv3d_small_weight_grad(x, g).double()
    torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-5 * float(want_w.abs().max()))


# Large planes run in strips of rows (a few at these widths: 4, 4, 3 / 7, 7, 2 / 4, 4, 1), each
# strip its own ring of planes; batch items and strips go to the threads in pairs.
STRIPS = [(1, 8, 6, (3, 11, 500)), (1, 1, 6, (4, 16, 3000)), (2, 6, 5, (4, 9, 700))]


@pytest.mark.parametrize("batch,c_in,c_out,size", STRIPS)
def test_large_planes_in_strips_equal_float64_reference(batch, c_in, c_out, size):
    gen = torch.Generator().manual_seed(size[2])
    x, w, b = torch.randn(batch, c_in, *size, generator=gen), torch.randn(c_out, c_in, 3, 3, 3, generator=gen), None
    want = F.conv3d(x.double(), w.double(), padding=1)
    torch.testing.assert_close(small.conv3d_small(x, w).double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("size", [(5, 7, 9), (3, 9, 700)])
def test_relu_equals_float64_reference(size):
    """relu(conv + bias) in one pass (the detector's preBlock); NaN stays NaN as in torch's relu."""
    gen = torch.Generator().manual_seed(5)
    x, w, b = torch.randn(2, 6, *size, generator=gen), torch.randn(5, 6, 3, 3, 3, generator=gen), torch.randn(5)
    x[1, 2, 1, 1, 3] = float("nan")
    want = F.conv3d(x.double(), w.double(), b.double(), padding=1).relu()
    got = small.conv3d_small(x, w, b, relu=True).double()
    assert torch.equal(got.isnan(), want.isnan()) and int(got.isnan().sum()) == 5 * 27
    ok = ~want.isnan()
    torch.testing.assert_close(got[ok], want[ok], rtol=1e-5, atol=1e-5 * float(want[ok].abs().max()))
    assert float(got[ok].min()) == 0.0


def test_forward_is_the_same_bits_at_any_thread_count():
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(3, 5, 6, 7, 19, generator=gen), torch.randn(7, 5, 3, 3, 3, generator=gen)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(small.conv3d_small(x, w))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_and_infinity_reach_exactly_the_neighbourhood_torch_gives(value):
    gen = torch.Generator().manual_seed(2)
    x, w = torch.randn(1, 2, 5, 6, 19, generator=gen), torch.rand(3, 2, 3, 3, 3, generator=gen) + 0.1
    x[0, 1, 2, 0, 17] = value  # at a border in y and inside the last x block
    g = torch.randn(1, 3, 5, 6, 19, generator=gen)
    want = F.conv3d(x.double(), w.double(), padding=1)
    out = small.conv3d_small(x, w)
    assert torch.equal(out.isnan(), want.isnan()) and torch.equal(out.isinf(), want.isinf())
    finite = want.isfinite()
    torch.testing.assert_close(out.double()[finite], want[finite], rtol=1e-5, atol=1e-5)
    want_w = torch.ops.aten.convolution_backward(g.double(), x.double(), w.double(), None, [1] * 3, [1] * 3,
                                                 [1] * 3, False, [0] * 3, 1, [False, True, False])[1]
    got_w = small.conv3d_small_weight_grad(x, g)
    assert torch.equal(got_w.isfinite(), want_w.isfinite())


def test_empty_inputs_give_empty_or_zero_outputs():
    w, b = torch.randn(4, 3, 3, 3, 3), torch.randn(4)
    assert small.conv3d_small(torch.randn(0, 3, 4, 4, 4), w, b).shape == (0, 4, 4, 4, 4)
    assert small.conv3d_small(torch.randn(2, 3, 0, 4, 4), w).shape == (2, 4, 0, 4, 4)
    assert torch.equal(small.conv3d_small_weight_grad(torch.randn(0, 3, 4, 4, 4), torch.randn(0, 4, 4, 4, 4)),
                       torch.zeros(4, 3, 3, 3, 3))
    no_inputs = small.conv3d_small(torch.randn(2, 0, 3, 3, 3), torch.randn(4, 0, 3, 3, 3), b)
    assert torch.equal(no_inputs, b.view(1, 4, 1, 1, 1).expand(2, 4, 3, 3, 3))


def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 9, 3, 5, 4, generator=gen).transpose(2, 4)[:, ::3]  # [2, 3, 4, 5, 3], strided
    w = torch.randn(4, 3, 3, 3, 3, generator=gen).transpose(3, 4)
    g = torch.randn(2, 4, 3, 5, 4, generator=gen).transpose(2, 4)
    want, want_w = reference(x, w, None, g)
    torch.testing.assert_close(small.conv3d_small(x, w).double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(small.conv3d_small_weight_grad(x, g).double(), want_w, rtol=1e-5, atol=1e-4)


def test_bad_arguments_are_named():
    x, w = torch.randn(1, 2, 4, 4, 4), torch.randn(3, 2, 3, 3, 3)
    with pytest.raises(RuntimeError, match="_conv3d_small: argument 'input' must be float32"):
        small.conv3d_small(x.double(), w)
    with pytest.raises(RuntimeError, match=r"argument 'input' must have shape \[B, C, D, H, W\]"):
        small.conv3d_small(x[0], w)
    with pytest.raises(RuntimeError, match=r"argument 'weight' must have shape \[O, 2, 3, 3, 3\]"):
        small.conv3d_small(x, torch.randn(3, 2, 5, 5, 5))
    with pytest.raises(RuntimeError, match=r"argument 'bias' must have shape \[3\]"):
        small.conv3d_small(x, w, torch.randn(4))
    with pytest.raises(RuntimeError, match="_conv3d_small_weight_grad: argument 'grad_output' must have the batch"):
        small.conv3d_small_weight_grad(x, torch.randn(1, 3, 4, 4, 5))


def test_opcheck():
    gen = torch.Generator().manual_seed(4)
    x, w, b = torch.randn(2, 3, 4, 5, 9, generator=gen), torch.randn(4, 3, 3, 3, 3, generator=gen), torch.randn(4)
    torch.library.opcheck(torch.ops.deepem._conv3d_small.default, (x, w, b))
    torch.library.opcheck(torch.ops.deepem._conv3d_small.default, (x, w, b, True))
    torch.library.opcheck(torch.ops.deepem._conv3d_small_weight_grad.default, (x, torch.randn(2, 4, 4, 5, 9)))


def test_applies_to_narrow_float32_ncdhw_cpu_tensors_only():
    x, w = torch.randn(1, 6, 8, 8, 8), torch.randn(6, 6, 3, 3, 3)
    assert small.applies(x, w)
    assert not small.applies(x.double(), w.double())
    assert not small.applies(torch.randn(1, 9, 8, 8, 8), torch.randn(6, 9, 3, 3, 3))  # oneDNN's blocking wins
    assert not small.applies(x, torch.randn(6, 6, 1, 1, 1))
    assert not small.applies(x.contiguous(memory_format=torch.channels_last_3d), w)
    # a channels_last_3d weight (a run that chose that layout) keeps oneDNN's convolution
    assert not small.applies(x, w.contiguous(memory_format=torch.channels_last_3d))
    one = torch.randn(2, 1, 8, 8, 8)  # one channel has a single layout: served
    assert small.applies(one.contiguous(memory_format=torch.channels_last_3d), torch.randn(6, 1, 3, 3, 3))
