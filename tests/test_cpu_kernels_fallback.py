"""The CPU training ops (and the convolution with its ReLU, used in detection) on a CPU without AVX2 + FMA: torch's kernels through the same ops
(forced with DEEPEM_NO_AVX2 in a fresh process, since the check is made once), against the
float64 references and torch's pooling, with and without the batch norm's ReLU."""
import os
import subprocess
import sys

SCRIPT = r'''
import torch, torch.nn.functional as F
import deepem.ops.conv3d_small as small, deepem.ops.batch_norm3d as bn, deepem.model.pool  # registers the ops
g = torch.Generator().manual_seed(0)
x, w, b = torch.randn(2, 3, 5, 6, 19, generator=g), torch.randn(4, 3, 3, 3, 3, generator=g), torch.randn(4, generator=g)
go = torch.randn(2, 4, 5, 6, 19, generator=g)
w64 = w.double().requires_grad_(True)
ref = F.conv3d(x.double(), w64, b.double(), padding=1)
(ref * go.double()).sum().backward()
torch.testing.assert_close(small.conv3d_small(x, w, b).double(), ref.detach(), rtol=1e-5, atol=1e-4)
torch.testing.assert_close(small.conv3d_small_weight_grad(x, go).double(), w64.grad, rtol=1e-5, atol=1e-3)
torch.testing.assert_close(small.conv3d_small(x, w, b, relu=True).double(), ref.detach().relu(), rtol=1e-5, atol=1e-4)
assert not small.avx2_kernels()
for relu in (False, True):
    x64 = x.double().requires_grad_(True)
    y = F.batch_norm(x64, None, None, None, None, True, 0.0, 1e-5)
    y = F.relu(y) if relu else y
    (y * x.double().flip(4)).sum().backward()
    out, mean, invstd, var = bn.batch_norm3d_train(x, None, None, 1e-5, relu)
    torch.testing.assert_close(out.double(), y.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(var.double(), x.double().var((0, 2, 3, 4)), rtol=1e-4, atol=1e-6)
    gx = bn.batch_norm3d_train_backward(x.flip(4), x, None, mean, invstd, out if relu else None, (True, False, False))[0]
    torch.testing.assert_close(gx.double(), x64.grad, rtol=1e-4, atol=1e-4)
xp = torch.randn(2, 3, 4, 6, 18, generator=g)
o, i = torch.ops.deepem._max_pool3d_2x(xp)
want, want_i = F.max_pool3d(xp, 2, 2, return_indices=True)
assert torch.equal(o, want) and torch.equal(i, want_i)
print("fallback ok")
'''


def test_ops_without_avx2_use_torchs_kernels_with_the_same_results():
    env = dict(os.environ, DEEPEM_NO_AVX2="1")
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "fallback ok" in run.stdout, run.stdout + run.stderr
