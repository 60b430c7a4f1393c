"""roi_align3d / roi_pool3d against float64 references (tests/reference_roi3d.py)."""
import pytest
import torch

from deepem.ops import roi_align3d, roi_pool3d, roi_pool3d_with_argmax
from reference_roi3d import (
    random_rois,
    roi_align3d_grid_sample,
    roi_align3d_loops,
    roi_pool3d_reference,
)

OPS = torch.ops.deepem
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


def make_case(seed, dtype=torch.float64, batch=2, channels=3, size=(6, 7, 8), num=9, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, *size, generator=gen, dtype=torch.float64).to(dtype)
    rois = random_rois(gen, num, batch, size, scale=scale, dtype=dtype)
    return x, rois


ALIGN_CASES = [
    # seed, output_size, spatial_scale, sampling_ratio, aligned, size
    (0, (2, 3, 2), 1.0, -1, False, (6, 7, 8)),
    (1, (3, 3, 3), 1.0, 2, True, (6, 7, 8)),
    (2, (2, 2, 4), 0.5, 0, True, (5, 9, 6)),
    (3, (1, 2, 3), 0.25, 1, False, (4, 4, 4)),
    (4, (4, 3, 2), 1.0, 3, True, (1, 5, 7)),
    (5, (2, 2, 2), 2.0, -1, True, (8, 3, 5)),
    (6, (3, 1, 2), 1.0, -1, True, (7, 6, 5)),
    (7, (2, 3, 3), 0.5, 2, False, (9, 8, 7)),
]


@pytest.mark.parametrize("seed,out,scale,sr,aligned,size", ALIGN_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_align_matches_grid_sample_reference(seed, out, scale, sr, aligned, size, dtype):
    x, rois = make_case(seed, dtype, size=size, scale=scale)
    got = roi_align3d(x, rois, out, scale, sr, aligned)
    ref = roi_align3d_grid_sample(x, rois, out, scale, sr, aligned)
    assert got.dtype == dtype and got.shape == ref.shape
    torch.testing.assert_close(got.double(), ref, **TOL[dtype])


def random_config(seed):
    gen = torch.Generator().manual_seed(1000 + seed)
    ri = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
    size = (ri(1, 9), ri(1, 9), ri(1, 9))
    out = (ri(1, 4), ri(1, 4), ri(1, 4))
    scale = [1.0, 0.5, 0.25, 2.0][ri(0, 3)]
    return size, out, scale, ri(-1, 3), bool(ri(0, 1)), ri(1, 3), ri(1, 3), ri(0, 12)


@pytest.mark.parametrize("seed", range(25))
def test_align_and_pool_random_configs(seed):
    size, out, scale, sr, aligned, batch, channels, num = random_config(seed)
    x, rois = make_case(seed, size=size, scale=scale, batch=batch, channels=channels, num=num)
    xd, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = roi_align3d(xd, rois, out, scale, sr, aligned)
    ref = roi_align3d_grid_sample(xr, rois, out, scale, sr, aligned)
    torch.testing.assert_close(got, ref, **TOL[torch.float64])
    g = torch.randn(got.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    got.backward(g)
    if rois.shape[0]:
        ref.backward(g)
        torch.testing.assert_close(xd.grad, xr.grad, **TOL[torch.float64])
    got, arg = roi_pool3d_with_argmax(x, rois, out, scale)
    ref, ref_arg = roi_pool3d_reference(x, rois, out, scale)
    assert torch.equal(got, ref) and torch.equal(arg, ref_arg)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sr", [-1, 2])
def test_grid_sample_reference_matches_loops(aligned, sr):
    # The two references are independent constructions; they must agree.
    x, rois = make_case(11 + sr, size=(4, 5, 3), num=4, channels=2)
    rois[0, 1:] = torch.tensor([-2.0, -1.5, -3.0, 1.0, 6.5, 4.2])  # across the borders
    ref = roi_align3d_grid_sample(x, rois, (2, 2, 2), 1.0, sr, aligned)
    loops = roi_align3d_loops(x, rois, (2, 2, 2), 1.0, sr, aligned)
    torch.testing.assert_close(ref, loops, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(roi_align3d(x, rois, 2, 1.0, sr, aligned), loops, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed,out,scale,sr,aligned,size", ALIGN_CASES[:5])
def test_align_backward_matches_reference_autograd(seed, out, scale, sr, aligned, size):
    x, rois = make_case(seed, size=size, scale=scale)
    g = torch.randn(rois.shape[0], x.shape[1], *out, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed))
    xr = x.clone().requires_grad_()
    roi_align3d_grid_sample(xr, rois, out, scale, sr, aligned).backward(g)
    xd = x.clone().requires_grad_()
    roi_align3d(xd, rois, out, scale, sr, aligned).backward(g)
    torch.testing.assert_close(xd.grad, xr.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed,out,scale,sr,aligned,size", ALIGN_CASES)
def test_align_emulated_cuda_grid(seed, out, scale, sr, aligned, size):
    # The CUDA kernels' per-thread functions over their launch grids (forward and backward).
    x, rois = make_case(seed, size=size, scale=scale)
    g = torch.randn(rois.shape[0], x.shape[1], *out, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed))
    out_e, grad_e = OPS._roi_align3d_emulated(x, rois, list(out), scale, sr, aligned, g)
    torch.testing.assert_close(out_e, roi_align3d_grid_sample(x, rois, out, scale, sr, aligned),
                               rtol=1e-10, atol=1e-12)
    grad = OPS._roi_align3d_backward(g, rois, list(x.shape), scale, sr, aligned)
    torch.testing.assert_close(grad_e, grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pool_matches_reference(seed, dtype):
    scale = [1.0, 0.5, 0.25][seed % 3]
    out = [(2, 2, 2), (3, 2, 4), (1, 3, 2)][seed % 3]
    x, rois = make_case(seed, dtype, size=(7, 6, 9), scale=scale, num=12)
    got, arg = roi_pool3d_with_argmax(x, rois, out, scale)
    ref, ref_arg = roi_pool3d_reference(x, rois, out, scale)
    torch.testing.assert_close(got, ref.to(dtype), rtol=0, atol=0)
    torch.testing.assert_close(arg, ref_arg, rtol=0, atol=0)
    # The CUDA forward kernel's per-thread function over its launch grid.
    emu, emu_arg = OPS._roi_pool3d_emulated(x, rois, list(out), scale)
    assert torch.equal(emu, got) and torch.equal(emu_arg, arg)


def test_pool_ties_and_nan_voxels():
    x = torch.zeros(1, 1, 2, 2, 2, dtype=torch.float64)  # all tied: first voxel wins
    rois = torch.tensor([[0, 0, 0, 0, 2, 2, 2.0]], dtype=torch.float64)
    out, arg = roi_pool3d_with_argmax(x, rois, 1)
    assert out.item() == 0 and arg.item() == 0
    x.view(-1)[5] = float("nan")
    x.view(-1)[6] = 3.0
    out, arg = roi_pool3d_with_argmax(x, rois, 1)
    assert out.isnan().all() and arg.item() == 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_pool_roi_edges_round_half_away_from_zero(dtype, scale, device):
    # Roi edges exactly halfway between voxels round half away from zero (torchvision's
    # round), not half to even: z 2.5..4.5 -> [3, 5), y 3.5..5.5 -> [4, 6), x 0.5..6.5 -> [1, 7).
    ramp = torch.arange(512, dtype=dtype, device=device).reshape(1, 1, 8, 8, 8)
    rois = torch.tensor([[0, 2.5, 3.5, 0.5, 4.5, 5.5, 6.5]], dtype=dtype, device=device)
    rois[:, 1:] /= scale
    for x, corner in [(ramp, (4, 5, 6)), (-ramp, (3, 4, 1))]:  # the max is the last / first voxel
        out, arg = roi_pool3d_with_argmax(x, rois, 1, scale)
        assert arg.item() == (corner[0] * 8 + corner[1]) * 8 + corner[2]
        for size in [(1, 1, 1), (2, 2, 3)]:
            got = roi_pool3d_with_argmax(x, rois, size, scale)
            want = roi_pool3d_reference(x, rois, size, scale)
            assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
            if device.type == "cpu":
                emu = OPS._roi_pool3d_emulated(x, rois, list(size), scale)
                assert torch.equal(emu[0], want[0]) and torch.equal(emu[1], want[1])


def test_gradcheck_align():
    x, rois = make_case(21, size=(4, 5, 4), num=4, channels=2)
    x.requires_grad_()
    for sr, aligned in [(-1, False), (2, True)]:
        assert torch.autograd.gradcheck(lambda t: roi_align3d(t, rois, (2, 2, 3), 1.0, sr, aligned), (x,))


def test_gradcheck_pool():
    x, rois = make_case(22, size=(4, 5, 4), num=4, channels=2)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: roi_pool3d(t, rois, (2, 2, 2), 1.0), (x,))


def test_pool_backward_adds_at_argmax():
    x, rois = make_case(23, size=(5, 5, 5), num=6)
    g = torch.randn(6, x.shape[1], 2, 2, 2, dtype=torch.float64)
    xr = x.clone().requires_grad_()
    roi_pool3d(xr, rois, 2).backward(g)
    _, arg = roi_pool3d_reference(x, rois, (2, 2, 2))
    expect = torch.zeros_like(x)
    for k in range(6):
        b = int(rois[k, 0])
        for c in range(x.shape[1]):
            a = arg[k, c].flatten()
            keep = a >= 0
            expect[b, c].view(-1).index_add_(0, a[keep], g[k, c].flatten()[keep])
    torch.testing.assert_close(xr.grad, expect, rtol=1e-12, atol=1e-12)


def test_opcheck():
    x, rois = make_case(31, size=(4, 5, 6), num=5)
    g = torch.randn(5, x.shape[1], 2, 2, 2, dtype=torch.float64)
    x.requires_grad_()
    for args in [(x, rois, [2, 2, 2], 1.0, -1, False), (x, rois, [2, 2, 2], 0.5, 2, True)]:
        torch.library.opcheck(OPS.roi_align3d, args)
    torch.library.opcheck(OPS.roi_pool3d, (x, rois, [2, 2, 2], 1.0))
    xd = x.detach()
    torch.library.opcheck(OPS._roi_align3d_backward, (g, rois, list(x.shape), 1.0, 2, True))
    _, arg = OPS.roi_pool3d(xd, rois, [2, 2, 2], 1.0)
    torch.library.opcheck(OPS._roi_pool3d_backward, (g, rois, arg, list(x.shape)))
    torch.library.opcheck(OPS._roi_align3d_emulated, (xd, rois, [2, 2, 2], 1.0, -1, True, g))
    torch.library.opcheck(OPS._roi_pool3d_emulated, (xd, rois, [2, 2, 2], 1.0))


def test_torch_compile_forward_and_backward():
    x, rois = make_case(32, torch.float32, size=(4, 5, 6), num=5)

    def f(t):
        return roi_align3d(t, rois, 2, 1.0, 2, True).sum() + roi_pool3d(t, rois, 2).square().sum()

    xe = x.clone().requires_grad_()
    f(xe).backward()
    xc = x.clone().requires_grad_()
    torch.compile(f, backend="aot_eager", fullgraph=True)(xc).backward()
    torch.testing.assert_close(xc.grad, xe.grad)


def test_empty_rois():
    x = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    rois = torch.zeros(0, 7)
    out = roi_align3d(x, rois, 2)
    assert out.shape == (0, 3, 2, 2, 2)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    out, arg = roi_pool3d_with_argmax(x, rois, (1, 2, 3))
    assert out.shape == arg.shape == (0, 3, 1, 2, 3)


def test_roi_outside_volume():
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 10, 10, 10, 14, 14, 14.0], [0, -9, 0, 0, -3, 4, 4]], dtype=torch.float64)
    for aligned in (False, True):
        out = roi_align3d(x, rois, 2, 1.0, -1, aligned)
        assert torch.equal(out, torch.zeros_like(out))
        out.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))
    out, arg = roi_pool3d_with_argmax(x, rois, 2)
    assert torch.equal(out, torch.zeros_like(out)) and (arg == -1).all()


def test_zero_size_rois():
    x, _ = make_case(41, size=(5, 5, 5))
    rois = torch.tensor([[0, 2, 2, 2, 2, 2, 2.0], [1, 1.5, 3, 0, 1.5, 3, 4]], dtype=torch.float64)
    # aligned=True: no samples, 0; aligned=False: the legacy one-voxel minimum.
    assert torch.equal(roi_align3d(x, rois, 2, 1.0, -1, True), torch.zeros(2, 3, 2, 2, 2, dtype=torch.float64))
    legacy = roi_align3d(x, rois, 2, 1.0, -1, False)
    torch.testing.assert_close(legacy, roi_align3d_grid_sample(x, rois, (2, 2, 2), 1.0, -1, False))
    assert legacy.abs().sum() > 0
    out, arg = roi_pool3d_with_argmax(x, rois, 1)
    ref, ref_arg = roi_pool3d_reference(x, rois, (1, 1, 1))
    assert torch.equal(out, ref) and torch.equal(arg, ref_arg) and (arg >= 0).all()


def test_nan_coordinates_give_nan_and_no_gradient():
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0, 0, 0, 3, 3, 3], [0, 0, float("nan"), 0, 3, 3, 3],
                         [0, 0, 0, 0, float("inf"), 3, 3]], dtype=torch.float64)
    out = roi_align3d(x, rois, 2, 1.0, -1, True)
    assert out[1:].isnan().all() and not out[0].isnan().any()
    out[0].sum().backward(retain_graph=True)
    grad0 = x.grad.clone()
    x.grad = None
    out.nan_to_num(0.0).sum().backward()  # the NaN rois add nothing
    assert torch.equal(x.grad, grad0)
    pooled, arg = roi_pool3d_with_argmax(x, rois, 2)
    assert pooled[1:].isnan().all() and (arg[1:] == -1).all() and (arg[0] >= 0).all()


def test_list_of_rois():
    x, _ = make_case(51, batch=3)
    per_scan = [torch.tensor([[0, 0, 0, 3, 4, 5.0]], dtype=torch.float64),
                torch.zeros(0, 6, dtype=torch.float64),
                torch.tensor([[1, 1, 1, 5, 6, 7.0], [0, 2, 1, 2, 5, 3]], dtype=torch.float64)]
    flat = torch.tensor([[0, 0, 0, 0, 3, 4, 5], [2, 1, 1, 1, 5, 6, 7], [2, 0, 2, 1, 2, 5, 3.0]],
                        dtype=torch.float64)
    assert torch.equal(roi_align3d(x, per_scan, 2), roi_align3d(x, flat, 2))
    assert torch.equal(roi_pool3d(x, per_scan, 2), roi_pool3d(x, flat, 2))
    with pytest.raises(ValueError, match=r"rois\[0\]"):
        roi_align3d(x, [torch.zeros(2, 7)], 2)


def test_batch_index_is_checked_as_the_kernels_read_it():
    # 2.9999999999 is < 3 in float64 but rounds to 3.0 in the float32 the kernels compute in.
    x = torch.zeros(3, 2, 6, 6, 6)
    rois = torch.tensor([[2.9999999999, 0, 0, 0, 4, 4, 4]], dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"rois.*row 0.*batch index.*\[0, 3\)"):
        roi_align3d(x, rois, 2)
    with pytest.raises(RuntimeError, match=r"rois.*row 0.*batch index"):
        roi_pool3d(x, rois, 2)
    assert roi_align3d(x.double(), rois, 2).shape == (1, 2, 2, 2, 2)  # exact in float64: scan 2


def test_channels_last_and_rois_dtype():
    x, rois = make_case(52, torch.float32, channels=4)
    cl = x.to(memory_format=torch.channels_last_3d)
    assert torch.equal(roi_align3d(cl, rois, 2, 1.0, 2, True), roi_align3d(x, rois, 2, 1.0, 2, True))
    assert torch.equal(roi_pool3d(cl, rois, 2), roi_pool3d(x, rois, 2))
    # float64 rois with a float32 input are converted, as are the computations in float32.
    assert torch.equal(roi_align3d(x, rois.double(), 2), roi_align3d(x, rois, 2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_compute_in_float32(dtype):
    x, rois = make_case(53, torch.float32)
    xh = x.to(dtype).requires_grad_()
    out = roi_align3d(xh, rois, 2, 1.0, 2, True)
    assert out.dtype == dtype
    torch.testing.assert_close(out, roi_align3d(xh.detach().float(), rois, 2, 1.0, 2, True).to(dtype))
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    out.backward(g)
    assert xh.grad.dtype == dtype
    pooled = roi_pool3d(xh.detach(), rois, 2)
    torch.testing.assert_close(pooled, roi_pool3d(xh.detach().float(), rois, 2).to(dtype))
    # ... and against the float64 references on the rounded inputs (forward and gradient): one
    # rounding to the dtype (2^-11 / 2^-8 relative) plus the float32 arithmetic between them
    tol = dict(rtol={torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[dtype], atol=1e-5)
    xr = xh.detach().double().requires_grad_()
    ref = roi_align3d_grid_sample(xr, rois.double(), (2, 2, 2), 1.0, 2, True)
    ref.backward(g.double())
    torch.testing.assert_close(out.double(), ref.detach(), **tol)
    torch.testing.assert_close(xh.grad.double(), xr.grad, **tol)
    assert xr.grad.abs().sum() > 0 and ref.abs().sum() > 0
    ref_pool, _ = roi_pool3d_reference(xh.detach().float(), rois, (2, 2, 2))  # a max of rounded values: exact
    assert torch.equal(pooled.float(), torch.as_tensor(ref_pool).float())


def test_backward_independent_of_thread_count():
    x, rois = make_case(54, torch.float32, channels=5, num=40)
    g = torch.randn(40, 5, 3, 3, 3)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(OPS._roi_align3d_backward(g, rois, list(x.shape), 1.0, -1, True))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


def test_bad_arguments():
    x = torch.randn(2, 3, 4, 4, 4)
    rois = torch.tensor([[0, 0, 0, 0, 2, 2, 2.0]])
    with pytest.raises(RuntimeError, match=r"rois.*row 1.*batch index.*\[0, 2\)"):
        roi_align3d(x, torch.tensor([[0, 0, 0, 0, 2, 2, 2.0], [2, 0, 0, 0, 2, 2, 2]]), 2)
    with pytest.raises(RuntimeError, match=r"rois.*batch index"):
        roi_pool3d(x, torch.tensor([[-1, 0, 0, 0, 2, 2, 2.0]]), 2)
    with pytest.raises(RuntimeError, match=r"rois.*batch index"):
        roi_align3d(x, torch.tensor([[float("nan"), 0, 0, 0, 2, 2, 2.0]]), 2)
    with pytest.raises(RuntimeError, match=r"'rois' must have shape \[N, 7\]"):
        roi_align3d(x, torch.zeros(1, 6), 2)
    with pytest.raises(RuntimeError, match=r"'rois' must be float16"):
        roi_align3d(x, rois.long(), 2)
    with pytest.raises(RuntimeError, match=r"'input' must have shape \[N, C, D, H, W\]"):
        roi_align3d(x[0], rois, 2)
    with pytest.raises(RuntimeError, match=r"'input' must be float16"):
        roi_pool3d(x.long(), rois, 2)
    with pytest.raises(RuntimeError, match=r"'output_size' must be three positive"):
        roi_align3d(x, rois, (2, 0, 2))
    with pytest.raises(RuntimeError, match=r"'spatial_scale' must be a positive"):
        roi_align3d(x, rois, 2, 0.0)
    with pytest.raises(RuntimeError, match=r"'grad_output' must have shape"):
        OPS._roi_align3d_backward(torch.zeros(2, 3, 2, 2, 2), rois, list(x.shape), 1.0, -1, False)
    with pytest.raises(RuntimeError, match=r"'argmax' has entries outside"):
        OPS._roi_pool3d_backward(torch.zeros(1, 3, 1, 1, 1), rois,
                                 torch.full((1, 3, 1, 1, 1), 64), list(x.shape))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bad_device_cuda():
    x = torch.randn(1, 1, 4, 4, 4, device="cuda")
    with pytest.raises(RuntimeError, match=r"'rois' is on cpu"):
        roi_align3d(x, torch.tensor([[0, 0, 0, 0, 2, 2, 2.0]]), 2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("seed,out,scale,sr,aligned,size", ALIGN_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_matches_cpu(seed, out, scale, sr, aligned, size, dtype):
    x, rois = make_case(seed, dtype, size=size, scale=scale, num=30)
    g = torch.randn(30, x.shape[1], *out, dtype=dtype)
    xc, rc, gc = x.cuda(), rois.cuda(), g.cuda()
    tol = TOL[dtype]
    torch.testing.assert_close(roi_align3d(xc, rc, out, scale, sr, aligned).cpu(),
                               roi_align3d(x, rois, out, scale, sr, aligned), **tol)
    torch.testing.assert_close(OPS._roi_align3d_backward(gc, rc, list(x.shape), scale, sr, aligned).cpu(),
                               OPS._roi_align3d_backward(g, rois, list(x.shape), scale, sr, aligned), **tol)
    p, a = roi_pool3d_with_argmax(xc, rc, out, scale)
    pr, ar = roi_pool3d_with_argmax(x, rois, out, scale)
    assert torch.equal(p.cpu(), pr) and torch.equal(a.cpu(), ar)
    torch.testing.assert_close(OPS._roi_pool3d_backward(gc, rc, a, list(x.shape)).cpu(),
                               OPS._roi_pool3d_backward(g, rois, ar, list(x.shape)), **tol)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_gradcheck_half_and_opcheck():
    x, rois = make_case(61, size=(4, 5, 4), num=4, channels=2)
    xc, rc = x.cuda().requires_grad_(), rois.cuda()
    assert torch.autograd.gradcheck(lambda t: roi_align3d(t, rc, 2, 1.0, -1, True), (xc,))
    assert torch.autograd.gradcheck(lambda t: roi_pool3d(t, rc, 2), (xc,))
    torch.library.opcheck(OPS.roi_align3d, (xc, rc, [2, 2, 2], 1.0, 2, False))
    torch.library.opcheck(OPS.roi_pool3d, (xc, rc, [2, 2, 2], 1.0))
    for dtype in (torch.float16, torch.bfloat16):
        xh = x.to(dtype)
        torch.testing.assert_close(roi_align3d(xh.cuda(), rc, 2).cpu(), roi_align3d(xh, rois, 2))
        xg = xh.cuda().requires_grad_()
        roi_align3d(xg, rc, 2).float().sum().backward()
        xcpu = xh.clone().requires_grad_()
        roi_align3d(xcpu, rois, 2).float().sum().backward()
        torch.testing.assert_close(xg.grad.cpu(), xcpu.grad)


def test_deterministic_mode(device):
    # CPU backward passes are deterministic; the CUDA ones (atomics) say they are not.
    x, rois = make_case(62, size=(4, 4, 4), num=3)
    x, rois = x.to(device).requires_grad_(), rois.to(device)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for fn in (lambda: roi_align3d(x, rois, 2), lambda: roi_pool3d(x, rois, 2)):
            out = fn()
            if device.type == "cpu":
                out.sum().backward()
            else:
                with pytest.raises(RuntimeError, match="_roi_(align|pool)3d_backward"):
                    out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(before)
