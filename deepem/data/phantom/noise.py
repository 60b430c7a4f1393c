"""Low-dose CT noise: correlated, with the mid-frequency texture of filtered back-projection
(a ramp rolled off by the reconstruction kernel), not white."""
import numpy as np
from scipy import ndimage


def ct_noise(rng, shape, spacing_zyx, sigma_hu, grain_mm=0.6, ramp_mm=2.0, z_corr=0.35):
    """float32 noise of standard deviation `sigma_hu`: white noise low-passed in plane at
    `grain_mm` (the kernel's roll-off), with the low frequencies taken out at `ramp_mm` (the
    ramp filter's dip), and slightly correlated across slices (z_corr, in slices)."""
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    n = rng.standard_normal(size=shape, dtype=np.float32)
    g = grain_mm / sp[1]
    ndimage.gaussian_filter(n, (z_corr, g, g), output=n, truncate=3.0)
    r = ramp_mm / sp[1]
    low = ndimage.gaussian_filter(n, (0, r, r), truncate=2.5)
    n -= 0.7 * low
    sample = n.reshape(-1)[:: max(1, n.size // 200_000)]
    n *= np.float32(sigma_hu / max(float(sample.std()), 1e-6))
    return n
