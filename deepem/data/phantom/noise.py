"""Low-dose CT noise: correlated, with the mid-frequency texture of filtered back-projection
(a ramp rolled off by the reconstruction kernel), not white."""
import numpy as np
from scipy import ndimage


def _gauss_taps(sigma_px, radius):
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-(x**2) / (2 * max(sigma_px, 1e-3) ** 2))
    return w / w.sum()


def ct_noise(rng, shape, spacing_zyx, sigma_hu, grain_mm=0.6, ramp_mm=2.0, z_corr=0.35):
    """float32 noise of standard deviation `sigma_hu`: white noise low-passed in plane at
    `grain_mm` (the kernel's roll-off), with the low frequencies taken out at `ramp_mm` (the
    ramp filter's dip: a box of that half-width, twice), slightly correlated across slices
    (z_corr, in slices). Short kernels throughout: a 512 x 512 x 300 volume takes seconds."""
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    n = rng.standard_normal(size=shape, dtype=np.float32)
    ndimage.correlate1d(n, _gauss_taps(z_corr, 1), axis=0, output=n, mode="nearest")
    g = grain_mm / sp[1]
    taps = _gauss_taps(g, max(1, int(np.ceil(2.5 * g))))
    for axis in (1, 2):
        ndimage.correlate1d(n, taps, axis=axis, output=n, mode="nearest")
    w = 2 * int(round(ramp_mm / sp[1])) + 1
    low = ndimage.uniform_filter1d(n, w, axis=1, mode="nearest")
    for axis in (2, 1, 2):
        ndimage.uniform_filter1d(low, w, axis=axis, output=low, mode="nearest")
    low *= np.float32(0.7)
    n -= low
    del low
    sample = n.reshape(-1)[:: max(1, n.size // 200_000)]
    n *= np.float32(sigma_hu / max(float(sample.std()), 1e-6))
    return n
