"""Estimate an image's shot (Poisson) and read (Gaussian) noise in the simulator's units.

Shot noise makes the pixel variance grow linearly with the local mean:
``var = g * mean + c``, with ``g`` grey levels per electron count and ``c`` the
signal-independent variance. Residuals from a light smoothing give the variance, binned by
the smoothed mean; a robust line fit gives ``g`` and ``c``. Assuming grey level 0 means
zero counts (true for the simulator, approximately for raw frames), this gives

* ``poisson_lambda``: counts at the brightest column peak, ``peak / g``;
* ``gaussian_mu``: read-noise std in grey levels on the scale where that peak is 255,
  ``sqrt(c) * 255 / peak`` — the units of :class:`~.simulation.Noise`.

When the slope ``g`` is not measurably above zero (read noise, smoothing or a very high
dose hide the shot noise), the frame is *not Poisson-limited*: ``poisson_limited`` is
False and ``poisson_lambda`` is the finite lower bound ``peak / (g + 2 σ_g)`` (σ_g: the
fit's standard error), capped at :data:`MAX_POISSON_LAMBDA`. λ is never infinite, so
it survives JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["NoiseEstimate", "estimate_noise"]


@dataclass(frozen=True)
class NoiseEstimate:
    """Noise of an image in the units of :class:`~.simulation.Noise`.

    Attributes
    ----------
    poisson_lambda : float
        Electron counts at the brightest column peak; always finite. When
        ``poisson_limited`` is False, a lower bound (the shot noise is not measurable).
    gaussian_mu : float
        Std of signal-independent noise, grey levels with the peak at 255.
    gain : float
        Grey levels per count in the image's own units.
    peak : float
        Brightest-column level in the image's own units.
    snr : float
        Peak over the total noise std at the peak.
    poisson_limited : bool
        Whether shot noise was measured (the variance grows with the signal); False: the
        frame is not Poisson-limited and λ is only a lower bound.
    """

    poisson_lambda: float
    gaussian_mu: float
    gain: float
    peak: float
    snr: float
    poisson_limited: bool = True

    def describe(self) -> str:
        if self.poisson_limited:
            lam = f"λ ≈ {self.poisson_lambda:.1f} counts at the brightest column"
        else:
            lam = (f"not Poisson-limited (no measurable shot noise; λ ≥ {self.poisson_lambda:.3g} counts "
                   "at the brightest column)")
        return f"{lam}, read noise μ ≈ {self.gaussian_mu:.1f} (peak = 255), SNR ≈ {self.snr:.1f}"


def _quadratic_kernel(half: int = 2) -> np.ndarray:
    """Centre row of the local least-squares quadratic fit (2-D Savitzky-Golay) as a kernel."""
    d = np.arange(-half, half + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    dx, dy = dx.ravel().astype(float), dy.ravel().astype(float)
    a = np.stack([np.ones_like(dx), dx, dy, dx * dx, dx * dy, dy * dy], axis=1)
    hat = a @ np.linalg.pinv(a)
    return hat[len(dx) // 2].reshape(2 * half + 1, 2 * half + 1)


#: Larger images are estimated on their central square of this size (px): plenty of pixels.
NOISE_CROP_PX = 1024
#: Largest λ reported (counts): a frame without measurable shot noise gets at most this bound.
MAX_POISSON_LAMBDA = 1e6


def estimate_noise(image: np.ndarray, a_px: float | None = None, bins: int = 16) -> NoiseEstimate:
    """Estimate Poisson and Gaussian noise levels of a 2-D image (see module docstring).

    Parameters
    ----------
    image : (rows, cols) array
    a_px : float, optional
        Lattice constant in px (default: from :func:`geometry.estimate_lattice`); used to
        locate the columns whose peak height sets the scale.
    bins : int
        Number of intensity bins for the variance-mean fit.

    Raises
    ------
    ValueError
        For a non-2-D, non-finite or constant image.
    """
    img = np.asarray(image)
    if img.ndim != 2 or min(img.shape) < 16:
        raise ValueError(f"image must be 2-D and at least 16 x 16 px, got shape {img.shape}")
    if (img.dtype.kind == "f" and not np.isfinite(img).all()) or np.ptp(img) == 0:
        raise ValueError("image must be finite and not constant")
    h, w = img.shape
    if max(h, w) > NOISE_CROP_PX:
        y0, x0 = max(0, (h - NOISE_CROP_PX) // 2), max(0, (w - NOISE_CROP_PX) // 2)
        img = img[y0:y0 + NOISE_CROP_PX, x0:x0 + NOISE_CROP_PX]
        if np.ptp(img) == 0:
            raise ValueError("image must not be constant")
    img = img.astype(float)  # float64 copy of the (cropped) image only
    # local quadratic fit: removes the column profiles (up to cubic terms), keeps the noise
    k = _quadratic_kernel(2)
    m = ndi.convolve(img, k, mode="reflect")
    r = img - m
    factor = float(1.0 - k[2, 2])  # residual variance of unit white noise
    lo, hi = np.percentile(img, [0.5, 99.5])
    clipped = _near_extremes(img)
    valid = ~clipped if (~clipped).mean() > 0.5 else np.ones_like(clipped)
    mv, rv = m[valid], r[valid]
    edges = np.quantile(mv, np.linspace(0.02, 0.98, bins + 1))
    # bin k holds edges[k] <= m < edges[k + 1] (the first such bin where edges repeat)
    k = np.searchsorted(edges, mv, side="right") - 1
    inside = (k >= 0) & (k < bins)
    k, mv, rv = k[inside], mv[inside], rv[inside]
    n_bin = np.bincount(k, minlength=bins)
    used = n_bin >= 50
    with np.errstate(invalid="ignore", divide="ignore"):
        xs = np.bincount(k, weights=mv, minlength=bins) / n_bin
        r_mean = np.bincount(k, weights=rv, minlength=bins) / n_bin
        ys = np.bincount(k, weights=(rv - r_mean[k]) ** 2, minlength=bins) / n_bin / factor
    xs, ys, ws = xs[used], ys[used], n_bin[used]
    if len(xs) < 4:
        raise ValueError("image too small or too flat to estimate its noise")
    (g, c), cov = np.polyfit(xs, ys, 1, w=np.sqrt(ws), cov=True)
    sigma_g = float(np.sqrt(max(cov[0, 0], 0.0))) if np.isfinite(cov[0, 0]) else 0.0
    g = max(float(g), 0.0)
    c = max(float(c), 0.0)
    peak = _column_peak(img, m, a_px)
    peak = max(peak, 1e-12)
    # shot noise is measured when the slope stands clear of its own error and of round-off
    tiny = 1e-9 * max(abs(hi), 1.0)
    limited = g > max(2.0 * sigma_g, tiny)
    bound = g if limited else g + 2.0 * sigma_g
    lam = min(peak / bound, MAX_POISSON_LAMBDA) if bound > tiny else MAX_POISSON_LAMBDA
    mu = float(np.sqrt(c) * 255.0 / peak)
    var = g * peak + c
    snr = peak / float(np.sqrt(var)) if var > 0 else MAX_POISSON_LAMBDA
    return NoiseEstimate(poisson_lambda=float(lam), gaussian_mu=mu, gain=g, peak=peak,
                         snr=float(min(snr, MAX_POISSON_LAMBDA)), poisson_limited=bool(limited))


def _near_extremes(img: np.ndarray) -> np.ndarray:
    """Pixels within one (3 x 3) of the image's minimum or maximum value (clipped pixels):
    ``maximum_filter(extreme, size=3)``, painted directly when such pixels are few."""
    ext = (img <= img.min()) | (img >= img.max())
    ey, ex = np.nonzero(ext)
    if len(ey) > 0.01 * ext.size:
        return ndi.maximum_filter(ext, size=3)
    h, w = ext.shape
    out = np.zeros_like(ext)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out[np.clip(ey + dy, 0, h - 1), np.clip(ex + dx, 0, w - 1)] = True
    return out


def _column_peak(img: np.ndarray, local_mean: np.ndarray, a_px: float | None) -> float:
    """Median height of the brighter half of the columns (located on a smoother copy)."""
    if a_px is None:
        from .geometry import estimate_lattice

        lat = estimate_lattice(img)
        a_px = lat.a_px if lat is not None and lat.strength >= 4.5 else None
    if a_px is None:
        return float(np.percentile(local_mean, 99.5))
    from skimage.feature import peak_local_max

    smooth = ndi.gaussian_filter(img, 0.12 * a_px)
    pk = peak_local_max(smooth, min_distance=max(1, int(0.3 * a_px)), exclude_border=int(0.3 * a_px))
    if len(pk) < 4:
        return float(np.percentile(local_mean, 99.5))
    vals = np.sort(local_mean[pk[:, 0], pk[:, 1]])
    return float(np.median(vals[len(vals) // 2 :]))
