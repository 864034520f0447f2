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

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .geometry import is_exact_counts, window_max

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

    def pixel_std(self, level: float) -> float:
        """Noise std of one pixel whose mean is ``level`` (the image's own grey levels):
        ``sqrt(gain · level + read variance)``."""
        read = self.gaussian_mu * self.peak / 255.0
        return math.sqrt(max(self.gain * float(level), 0.0) + read * read)

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
NOISE_CROP_PX = 512
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
    lo, hi = img.min(), img.max()  # NaN or inf show in these
    if is_exact_counts(img):  # 8/16-bit counts: the levels as a float32 copy would have them
        lo, hi = np.float32(lo), np.float32(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo == hi:
        raise ValueError("image must be finite and not constant")
    h, w = img.shape
    cropped = max(h, w) > NOISE_CROP_PX
    if cropped:
        y0, x0 = max(0, (h - NOISE_CROP_PX) // 2), max(0, (w - NOISE_CROP_PX) // 2)
        img = img[y0:y0 + NOISE_CROP_PX, x0:x0 + NOISE_CROP_PX]
    img = img.astype(float)  # float64 copy of the (cropped) image only
    if cropped:
        lo, hi = img.min(), img.max()
        if lo == hi:
            raise ValueError("image must not be constant")
    # local quadratic fit: removes the column profiles (up to cubic terms), keeps the noise
    k = _quadratic_kernel(2)
    m = ndi.convolve(img, k, mode="reflect")
    r = img - m
    factor = float(1.0 - k[2, 2])  # residual variance of unit white noise
    clipped = _near_extremes(img, lo, hi)
    valid = ~clipped
    if valid.mean() > 0.5 and not valid.all():
        mv, rv = m[valid], r[valid]
    else:
        mv, rv = m.ravel(), r.ravel()
    grid = _Histogram(mv)
    edges = grid.quantiles(np.linspace(0.02, 0.98, bins + 1))
    # bin k holds edges[k] <= m < edges[k + 1] (the first such bin where edges repeat);
    # kk = k + 1: 0 below the first edge, bins + 1 from the last one on (both left out)
    kk = grid.count_le(edges, mv)
    n_all = np.bincount(kk, minlength=bins + 2)
    n_bin = n_all[1:bins + 1]
    used = n_bin >= 50
    with np.errstate(invalid="ignore", divide="ignore"):
        r_mean = np.bincount(kk, weights=rv, minlength=bins + 2) / n_all
        xs = np.bincount(kk, weights=mv, minlength=bins + 2)[1:bins + 1] / n_bin
        ys = np.bincount(kk, weights=(rv - r_mean[kk]) ** 2, minlength=bins + 2)[1:bins + 1] / n_bin / factor
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
    # (relative to the 99.5th percentile, needed only when the slope is that small)
    tiny = 1e-9 * max(abs(float(lo)), abs(float(hi)), 1.0)
    if not g > max(2.0 * sigma_g, tiny):
        tiny = 1e-9 * max(abs(float(np.percentile(img, 99.5))), 1.0)
    limited = g > max(2.0 * sigma_g, tiny)
    bound = g if limited else g + 2.0 * sigma_g
    lam = min(peak / bound, MAX_POISSON_LAMBDA) if bound > tiny else MAX_POISSON_LAMBDA
    mu = float(np.sqrt(c) * 255.0 / peak)
    var = g * peak + c
    snr = peak / float(np.sqrt(var)) if var > 0 else MAX_POISSON_LAMBDA
    return NoiseEstimate(poisson_lambda=float(lam), gaussian_mu=mu, gain=g, peak=peak,
                         snr=float(min(snr, MAX_POISSON_LAMBDA)), poisson_limited=bool(limited))


class _Histogram:
    """Values on a fine grid of equal-width bins (monotone in the value): order statistics
    and bin counts of a large array without sorting or binary-searching all of it. Results
    equal ``np.quantile`` (linear) and ``np.searchsorted(..., side="right")``."""

    #: grid bins: each order statistic sorts only its grid bin's values
    N_GRID = 4096

    def __init__(self, values: np.ndarray):
        self.values = v = values.ravel()
        self.lo, hi = v.min(), v.max()
        scale = self.N_GRID / (hi - self.lo) if hi > self.lo else 0.0
        self.scale = scale if np.isfinite(scale) else 0.0  # one bin: still exact, only slower
        self.cell = self._cell(v)
        self.cum = np.cumsum(np.bincount(self.cell, minlength=self.N_GRID))

    def _cell(self, v: np.ndarray) -> np.ndarray:
        """Grid bin of each value; ``a <= b`` implies ``cell(a) <= cell(b)``."""
        c = ((v - self.lo) * self.scale).astype(np.intp)
        return np.minimum(c, self.N_GRID - 1, out=c)

    def order_stats(self, ranks: np.ndarray) -> np.ndarray:
        """The values at 0-based ``ranks`` of the sorted array."""
        cum = self.cum
        b = np.searchsorted(cum, ranks, side="right")  # grid bin holding each rank
        need = np.zeros(self.N_GRID, bool)
        need[b] = True
        counts = np.diff(cum, prepend=0)
        sel = np.sort(self.values[need[self.cell]])  # the needed grid bins, in value order
        kept = np.where(need, counts, 0)
        return sel[np.cumsum(kept)[b] - kept[b] + ranks - (cum[b] - counts[b])]

    def quantiles(self, q: np.ndarray) -> np.ndarray:
        """``np.quantile(values, q)`` (method "linear"), value for value."""
        n = len(self.values)
        virtual = (n - 1) * np.asarray(q, float)
        prev = np.floor(virtual).astype(np.intp)
        nxt = prev + 1
        above, below = virtual >= n - 1, virtual < 0
        prev[above], nxt[above] = n - 1, n - 1
        prev[below], nxt[below] = 0, 0
        gamma = virtual - prev
        a, b = np.split(self.order_stats(np.concatenate([prev, nxt])), 2)
        diff = b - a
        out = a + diff * gamma
        np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5)
        return out

    def count_le(self, edges: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``np.searchsorted(edges, v, side="right")`` for the values ``v`` (these values)."""
        ce = self._cell(edges)
        # an edge in a lower grid bin is below every value of this one; in a higher one, above
        out = np.searchsorted(ce, np.arange(self.N_GRID), side="left")[self.cell]
        shared = np.zeros(self.N_GRID, bool)
        shared[ce] = True
        at = np.flatnonzero(shared[self.cell])
        out[at] = np.searchsorted(edges, v[at], side="right")
        return out


def _near_extremes(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Pixels within one (3 x 3) of the image's minimum ``lo`` or maximum ``hi`` value
    (clipped pixels): ``maximum_filter(extreme, size=3)``, painted directly when such
    pixels are few."""
    ext = (img <= lo) | (img >= hi)
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
    smooth = _gaussian(img, 0.12 * a_px)
    pk = _local_peaks(smooth, min_distance=max(1, int(0.3 * a_px)), border=int(0.3 * a_px))
    if len(pk) < 4:
        return float(np.percentile(local_mean, 99.5))
    vals = np.sort(local_mean[pk[:, 0], pk[:, 1]])
    return float(np.median(vals[len(vals) // 2 :]))


def _transposed(x: np.ndarray, block: int = 64) -> np.ndarray:
    """``x.T`` as a C-contiguous copy, a band of rows at a time (~10x faster than at once)."""
    out = np.empty(x.shape[::-1], x.dtype)
    for i in range(0, x.shape[0], block):
        out[:, i:i + block] = x[i:i + block].T
    return out


def _gaussian(img: np.ndarray, sigma: float) -> np.ndarray:
    """``ndimage.gaussian_filter(img, sigma)``, value for value: the same 1-D passes, each
    along contiguous rows (ndimage's pass down the columns is ~3x slower)."""
    t = ndi.gaussian_filter1d(_transposed(img), sigma, axis=1)
    return ndi.gaussian_filter1d(_transposed(t), sigma, axis=1)


def _local_peaks(image: np.ndarray, min_distance: int, border: int) -> np.ndarray:
    """``skimage.feature.peak_local_max(image, min_distance, exclude_border=border)``, same
    peaks: pixels that are the largest in their (2 min_distance + 1)² window (edges
    repeated) and above the image's minimum, none within ``border`` px of the edge, and
    of peaks closer than ``min_distance`` (Chebyshev) the brighter (earlier) one. (row, col) rows."""
    lo = image.min()
    if lo == image.max():  # a flat image has no peaks
        return np.zeros((0, 2), np.intp)
    # a window's maximum is the maximum of its 3 x 3 too: test the 3 x 3 maxima only
    h, w = image.shape
    if border > 0:  # the pixels at least `border` px inside, with their 3 x 3 (no padding)
        if h <= 2 * border or w <= 2 * border:
            return np.zeros((0, 2), np.intp)
        part = image[border - 1:h - border + 1, border - 1:w - border + 1]
        c = part[1:-1, 1:-1]
        coords = np.argwhere((c == window_max(part, 3)) & (c > lo)) + border
    else:
        coords = np.argwhere((image == window_max(np.pad(image, 1, mode="edge"), 3)) & (image > lo))
    size = 2 * min_distance + 1
    if len(coords) * size * size > 2 * image.size:  # many (plateaus): the whole window maximum
        pad = np.pad(image, min_distance, mode="edge")
        top = window_max(pad, size)[coords[:, 0], coords[:, 1]]
        coords = coords[image[coords[:, 0], coords[:, 1]] == top]
    elif len(coords):
        d = np.arange(-min_distance, min_distance + 1)
        rows = np.clip(coords[:, 0, None] + d, 0, h - 1)[:, :, None]
        cols = np.clip(coords[:, 1, None] + d, 0, w - 1)[:, None, :]
        top = image[rows, cols].reshape(len(coords), -1).max(axis=1)
        coords = coords[image[coords[:, 0], coords[:, 1]] == top]
    coords = coords[np.argsort(-image[coords[:, 0], coords[:, 1]], kind="stable")]
    if len(coords) < 2:
        return coords
    # only equal neighbours (plateaus) can both be window maxima closer than min_distance
    from scipy.spatial import cKDTree

    pairs = cKDTree(coords).query_pairs(r=min_distance, p=np.inf, output_type="ndarray")
    close = np.abs(coords[pairs[:, 0]] - coords[pairs[:, 1]]).max(axis=1) < min_distance
    pairs = pairs[close]
    if not len(pairs):
        return coords
    near: dict[int, list[int]] = {}
    for i, j in pairs:
        near.setdefault(int(i), []).append(int(j))
        near.setdefault(int(j), []).append(int(i))
    rejected: set[int] = set()
    for i in range(len(coords)):  # in order of brightness: keep a peak, drop its close ones
        if i not in rejected:
            rejected.update(near.get(i, ()))
    return np.delete(coords, sorted(rejected), axis=0)
