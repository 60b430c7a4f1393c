"""Float64 numpy references of the E-step (deepem-method.md §3), written from the formula
with plain loops over scans and labels, independent of the kernels' code."""
import numpy as np
from scipy.special import logsumexp

LOG_SQRT_2_OVER_PI = 0.5 * np.log(2.0 / np.pi)


def log_sigmoid(x):
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, -np.log1p(np.exp(-np.abs(x))), x - np.log1p(np.exp(-np.abs(x))))


def log_weights(logit, z, z_m, lobe_term, mu, sigma, z_window):
    """Unnormalised log posterior of one label over proposals (arrays), -inf = probability 0."""
    dz = np.abs(np.asarray(z, np.float64) - float(z_m))
    t = np.maximum(dz - mu, 0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        w = log_sigmoid(logit) + LOG_SQRT_2_OVER_PI - np.log(sigma) - t * t / (2 * sigma * sigma) + lobe_term
    w = np.where(dz <= z_window, w, -np.inf)
    return np.where(np.isfinite(w), w, -np.inf)


def em_posterior_ref(proposals, num_proposals, weak_z, weak_lobe, num_weak, lobe_log_probs,
                     mu, sigma, z_window):
    """Returns (log_posterior [B, M, P] float64, has_candidate [B, M] bool)."""
    proposals = np.asarray(proposals, np.float64)
    B, P, _ = proposals.shape
    M = weak_z.shape[1]
    out = np.full((B, M, P), -np.inf)
    has = np.zeros((B, M), bool)
    for b in range(B):
        n = int(num_proposals[b])
        for m in range(int(num_weak[b])):
            lobe = 0.0
            if lobe_log_probs is not None:
                lobe = np.asarray(lobe_log_probs, np.float64)[b, :n, int(weak_lobe[b, m])]
            w = log_weights(proposals[b, :n, 0], proposals[b, :n, 1], weak_z[b, m], lobe,
                            mu, sigma, z_window)
            ok = np.isfinite(w)
            if ok.any():
                out[b, m, :n] = np.where(ok, w - logsumexp(w[ok]), -np.inf)
                has[b, m] = True
    return out, has


def posterior_direct(logit, z, z_m, lobe_prob, mu, sigma, z_window):
    """The paper's formula in linear space for one label (moderate values only)."""
    logit = np.asarray(logit, np.float64)
    dz = np.abs(np.asarray(z, np.float64) - z_m)
    t = np.maximum(dz - mu, 0.0)
    half_gauss = 2.0 / np.sqrt(2 * np.pi * sigma**2) * np.exp(-t**2 / (2 * sigma**2))
    w = 1.0 / (1.0 + np.exp(-logit)) * half_gauss * lobe_prob * (dz <= z_window)
    return w / w.sum()


def em_map_ref(log_posterior):
    lp = np.asarray(log_posterior, np.float64)
    B, M, P = lp.shape
    out = np.full((B, M), -1, np.int64)
    for b in range(B):
        for m in range(M):
            row = np.where(np.isnan(lp[b, m]), -np.inf, lp[b, m])
            if P and row.max() > -np.inf:
                out[b, m] = int(np.argmax(row))  # first maximum: lower index on ties
    return out


# ---- the counter-based generator of csrc/common/estep.h, in numpy uint64 arithmetic

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MASK = (1 << 64) - 1


def _mix64(x):
    x = np.asarray(x, np.uint64)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x


def _u64(v):
    return np.uint64(int(v) & _MASK)


def _add(a, b):
    with np.errstate(over="ignore"):
        return np.asarray(a, np.uint64) + np.asarray(b, np.uint64)


def label_stream(seed, offset, b, m):
    h = _mix64(_add(_u64(seed), _GOLDEN))
    h = _mix64(_add(_add(h, _u64(2 * int(_GOLDEN))), _u64(offset)))
    h = _mix64(_add(_add(h, _u64(3 * int(_GOLDEN))), _u64(b)))
    return _mix64(_add(_add(h, _u64(4 * int(_GOLDEN))), _u64(m)))


def uniforms(stream, P):
    p = np.arange(P, dtype=np.uint64)
    words = _mix64(_add(_add(stream, _u64(5 * int(_GOLDEN))), p))
    return (((words >> np.uint64(12)) << np.uint64(1)) | np.uint64(1)).astype(np.float64) * 2.0**-53


def em_sample_ref(log_posterior, k, seed, offset):
    """Gumbel top-k with the same counter-based uniforms and numpy's log: equal to the kernels
    except for keys within ~1e-15 of each other (never in practice)."""
    lp = np.asarray(log_posterior, np.float64)
    B, M, P = lp.shape
    out = np.full((B, M, k), -1, np.int64)
    for b in range(B):
        for m in range(M):
            u = uniforms(label_stream(seed, offset, b, m), P)
            keys = lp[b, m] - np.log(-np.log(u))
            ok = lp[b, m] > -np.inf
            idx = np.nonzero(ok)[0]
            order = idx[np.lexsort((idx, -keys[idx]))][:k]
            out[b, m, : len(order)] = order
    return out
