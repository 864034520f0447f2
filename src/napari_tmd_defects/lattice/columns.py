"""Atomic columns found locally in the image: peaks of a lightly smoothed copy.

No lattice is assumed here: every column is a local maximum of the image smoothed over
about a column's width, with a sub-pixel position from a quadratic fit of its 3 x 3
neighbourhood (all columns at once, no per-column optimisation). Large, finely sampled
frames are first block-averaged to about :data:`WORK_PX_PER_A` px per lattice constant,
which keeps the cost proportional to the number of columns, not of pixels.

Which peaks are real columns, and of which sublattice, is decided later by the lattice
graph (:mod:`.graph`): a peak that fits no local honeycomb is dropped there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from ..geometry import block_mean, dilate_disk, flat_pixels, is_exact_counts
from ..parallel import filter_rows

__all__ = ["Columns", "WorkImage", "background_rows", "find_columns", "local_background", "work_image"]

#: Sampling of the working image, px per lattice constant (finer frames are block-averaged).
WORK_PX_PER_A = 16.0
#: Gaussian smoothing of the working image, in lattice constants (about a column's width).
SMOOTH_A = 0.09
#: Two peaks closer than this (lattice constants) are one column (nearest columns: 0.577 a).
MIN_SEPARATION_A = 0.3
#: Peaks lower than this fraction of the bright columns' height are not kept.
MIN_RELATIVE_HEIGHT = 0.06
#: ... nor those lower than this many standard deviations of the smoothed noise.
MIN_NOISE_SIGMAS = 2.5


def local_background(smooth: np.ndarray, a_px: float) -> np.ndarray:
    """Hollow-site level of a smoothed image: minimum over 1.5 a, smoothed over a (px grid).

    The same background is used to measure column heights and to normalise the
    classifier's crops; it also removes slowly varying contamination.
    """
    return _background(smooth, a_px)


#: :func:`background_rows`: excluded pixels (vacuum) are grown by this many lattice constants.
EXCLUDE_GROW_A = 1.0


def _background(smooth: np.ndarray, a_px: float, subtract: bool = False, exclude: np.ndarray | None = None
                ) -> np.ndarray:
    """:func:`local_background`, or with ``subtract`` that background taken off ``smooth`` in
    place, a band of rows at a time (no full-size background array); returns ``smooth`` then.
    ``exclude``: as in :func:`background_rows`."""
    rows = background_rows(smooth, a_px, exclude=exclude)
    out = smooth if subtract else np.empty(smooth.shape, np.float32)
    for r0 in range(0, smooth.shape[0], 256):
        r1 = min(smooth.shape[0], r0 + 256)
        if subtract:
            out[r0:r1] -= rows(r0, r1)
        else:
            out[r0:r1] = rows(r0, r1)
    return out


def background_rows(smooth: np.ndarray, a_px: float, keep: bool = False, exclude: np.ndarray | None = None
                    ) -> Callable[[int, int], np.ndarray]:
    """``rows(r0, r1)``: rows ``r0:r1`` (float32) of :func:`local_background` of ``smooth``,
    each band interpolated on request from the coarse background (no full-size array);
    ``keep``: each band is computed once and kept (costs a full-size array). ``exclude``
    (bool, ``smooth``'s shape): pixels that are not film (vacuum, padding) and do not set
    the background: near them it is the film's own hollow level, not the darker vacuum."""
    h, w = smooth.shape
    # the hollow-site level on a grid with >= 6 px per lattice constant: its minimum over
    # 1.5 a, smoothed over a
    f = max(1, min(int(a_px // 6), h, w))
    coarse = block_mean(smooth, f)
    hc, wc = coarse.shape
    win = max(3, int(math.ceil(1.5 * a_px / f)) | 1)
    if exclude is not None:
        out = block_mean(np.asarray(exclude, np.float32), f) > 0.5
        # grown by a lattice constant: a vacuum mask stops short of the film's edge
        out = dilate_disk(out, math.ceil(EXCLUDE_GROW_A * a_px / f))
        if out.any() and not out.all():
            coarse = np.array(coarse, copy=True)  # f == 1: not the caller's image
            coarse[out] = np.inf
    bg = ndi.minimum_filter(coarse, size=win, mode="nearest")
    if exclude is not None and not np.isfinite(bg).all():
        # windows of vacuum only: the nearest film's level
        bad = ~np.isfinite(bg)
        near = ndi.distance_transform_edt(bad, return_distances=False, return_indices=True)
        bg = bg[tuple(near)]
    bg = np.asarray(ndi.gaussian_filter(bg, a_px / f, mode="nearest"), float)
    del coarse
    if f == 1 and bg.shape == smooth.shape:
        full = bg.astype(np.float32)
        return lambda r0, r1: full[r0:r1]

    # ... and back to full resolution, bilinear on the grid (coarse pixel k covers
    # [k f, (k+1) f): centre k f + (f - 1) / 2), along x then along y, in float64
    def axis(n_px: int, n: int):
        c = np.clip((np.arange(n_px) - (f - 1) / 2.0) / f, 0, n - 1)
        i0 = np.minimum(np.floor(c).astype(np.int64), max(n - 2, 0))
        return i0, np.minimum(i0 + 1, n - 1), c - i0

    y0, y1, ty = axis(h, hc)
    x0, x1, tx = axis(w, wc)
    cache: dict[tuple[int, int], np.ndarray] = {}

    def rows(r0: int, r1: int) -> np.ndarray:
        if (r0, r1) in cache:
            return cache[(r0, r1)]
        lo, hi = int(y0[r0]), int(y1[r1 - 1]) + 1  # the grid rows this band needs
        across = bg[lo:hi, x0] * (1.0 - tx) + bg[lo:hi, x1] * tx
        out = np.empty((r1 - r0, w), np.float32)
        # rows between the same two grid rows at once (no gathered copies of them)
        starts = np.flatnonzero(np.diff(y0[r0:r1], prepend=-1)) + r0
        ends = np.append(starts[1:], r1)
        tmp = np.empty((2, int((ends - starts).max()), w))
        for g0, g1 in zip(starts, ends):
            t = ty[g0:g1, None]
            lower, upper = tmp[0, : g1 - g0], tmp[1, : g1 - g0]
            np.multiply(across[y0[g0] - lo], 1.0 - t, out=lower)
            np.multiply(across[y1[g0] - lo], t, out=upper)
            np.add(lower, upper, out=out[g0 - r0:g1 - r0], casting="same_kind")
        if keep:
            cache[(r0, r1)] = out
        return out

    return rows


@dataclass
class WorkImage:
    """The image at working sampling, smoothed, with its local background removed.

    ``factor``: block size (px of the input per working px); ``a_work``: lattice
    constant in working px; ``signal``: smoothed image minus the hollow-site background
    (grey levels of the input); ``noise``: standard deviation of the noise in ``signal``.
    """

    signal: np.ndarray
    factor: int
    a_work: float
    noise: float

    def to_work(self, xy: np.ndarray) -> np.ndarray:
        """Input-image px (x, y) -> working px."""
        return (np.asarray(xy, float) - (self.factor - 1) / 2.0) / self.factor

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        """Working px (x, y) -> input-image px."""
        return np.asarray(xy, float) * self.factor + (self.factor - 1) / 2.0

    def sample(self, xy: np.ndarray) -> np.ndarray:
        """Bilinear value of ``signal`` at input-image points ``(N, 2)`` (x, y)."""
        p = self.to_work(np.asarray(xy, float).reshape(-1, 2))
        if len(p) == 0:
            return np.zeros(0, np.float32)
        return ndi.map_coordinates(self.signal, [p[:, 1], p[:, 0]], order=1, mode="nearest")


def _flat_regions(img: np.ndarray, min_area: float) -> np.ndarray | None:
    """Interior pixels ``(rows - 2, cols - 2)`` of flat regions (each pixel equal to its four
    neighbours) of at least ``min_area`` px: zero padding, a filled border, clipped vacuum;
    None where there are none (a clipped column top or hollow is far smaller)."""
    eq = flat_pixels(img, 1, img.shape[0] - 1)[:, 1:-1]
    if eq.sum() < min_area:
        return None
    labels, _ = ndi.label(eq)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    big = np.flatnonzero(sizes >= min_area)
    return np.isin(labels, big) if len(big) else None


def _noise_std(img: np.ndarray, min_flat_area: float | None = None) -> float:
    """Robust std of pixel noise: MAD of the difference to the 4-neighbour mean; with
    ``min_flat_area`` (px), over the pixels outside flat regions at least that large
    (:func:`_flat_regions`: padding or a filled border holds no noise to measure)."""
    if min(img.shape) < 3:
        return 0.0
    h, w = img.shape
    # the differences in bands of rows (no full-size temporaries), the medians in place
    d = np.empty((h - 2, w - 2), (img[:1, :1] - 0.25 * img[:1, :1]).dtype)
    band = max(1, (1 << 20) // w)
    for r0 in range(1, h - 1, band):
        r1 = min(h - 1, r0 + band)
        d[r0 - 1 : r1 - 1] = img[r0:r1, 1:-1] - 0.25 * (img[r0 - 1 : r1 - 1, 1:-1] + img[r0 + 1 : r1 + 1, 1:-1]
                                                        + img[r0:r1, :-2] + img[r0:r1, 2:])
    flat = _flat_regions(img, min_flat_area) if min_flat_area is not None else None
    if flat is not None and not flat.all():
        d = d[~flat]
    d -= np.median(d, overwrite_input=True)
    np.abs(d, out=d)
    mad = float(np.median(d, overwrite_input=True))
    return 1.4826 * mad / math.sqrt(1.25)


def work_image(image: np.ndarray, a_px: float, exclude: np.ndarray | None = None) -> WorkImage:
    """Block-average to ~:data:`WORK_PX_PER_A` px per a, smooth, remove the background.

    Parameters
    ----------
    image : (rows, cols) array
        Grey levels, finite.
    a_px : float
        Lattice constant in px of ``image``.
    exclude : (rows, cols) bool array, optional
        Pixels that are not film (vacuum): left out of the background, so that columns
        next to a hole are measured against the film's hollows, not the darker vacuum.
    """
    img = np.asarray(image)
    if not is_exact_counts(img):  # 8/16-bit counts are summed as float32 without a whole copy
        img = img.astype(np.float32, copy=False)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    if not (math.isfinite(a_px) and a_px > 0):
        raise ValueError(f"a_px must be a positive number of px, got {a_px!r}")
    f = max(1, int(a_px // WORK_PX_PER_A))
    # f == 1: the float32 image itself, read only
    small = block_mean(img, f, dtype=np.float32)
    a_w = a_px / f
    sigma = max(0.6, SMOOTH_A * a_w)
    # white noise of std s becomes s / (2 sqrt(pi) sigma) after the Gaussian (measured
    # first: the block-averaged copy is let go as soon as it is smoothed)
    noise = _noise_std(small, min_flat_area=a_w * a_w) / (2.0 * math.sqrt(math.pi) * sigma)
    signal = filter_rows(lambda b: ndi.gaussian_filter(b, sigma, mode="nearest"), small, int(4.0 * sigma + 0.5))
    del small
    ex = None if exclude is None else block_mean(np.asarray(exclude, np.float32), f) > 0.5
    _background(signal, a_w, subtract=True, exclude=ex)  # in place: the smoothed copy becomes the signal
    return WorkImage(signal=signal, factor=f, a_work=float(a_w), noise=float(noise))


@dataclass
class Columns:
    """Intensity peaks that may be atomic columns (input-image px, x = column).

    ``xy`` (N, 2) sub-pixel positions; ``height`` (N,) smoothed intensity above the
    hollow-site background, grey levels of the input.
    """

    xy: np.ndarray
    height: np.ndarray

    def __len__(self) -> int:
        return int(len(self.xy))


def find_columns(work: WorkImage, *, min_relative_height: float = MIN_RELATIVE_HEIGHT,
                 min_noise_sigmas: float = MIN_NOISE_SIGMAS) -> Columns:
    """Local maxima of the working image that stand out of the noise.

    A peak is kept when it is the highest point within :data:`MIN_SEPARATION_A` a and
    higher than both ``min_relative_height`` times the 95th percentile of peak heights
    and ``min_noise_sigmas`` times the smoothed noise. Sub-pixel positions come from a
    quadratic through the 3 x 3 neighbourhood (vectorised over all peaks).
    """
    s = work.signal
    h, w = s.shape
    r = max(1, int(round(MIN_SEPARATION_A * work.a_work)))
    # the highest point of the disc of radius r (edges: nearest): first the 3 x 3 maxima
    # (the disc holds the 3 x 3 square), then the rest of the disc at those points only
    peaks = np.zeros((h, w), bool)
    if h > 2 and w > 2:
        inner = s[1:-1, 1:-1]
        pk = inner > 0
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    pk &= inner >= s[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx]
        peaks[1:-1, 1:-1] = pk
    rows, cols = np.nonzero(peaks)
    top = s[rows, cols]
    keep = np.ones(len(rows), bool)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if max(abs(dy), abs(dx)) > 1 and dx * dx + dy * dy <= r * r:
                keep &= s[np.clip(rows + dy, 0, h - 1), np.clip(cols + dx, 0, w - 1)] <= top
    rows, cols = rows[keep], cols[keep]
    if len(rows) == 0:
        return Columns(np.zeros((0, 2)), np.zeros(0))
    val = s[rows, cols]
    thr = max(min_relative_height * float(np.percentile(val, 95)), min_noise_sigmas * work.noise)
    keep = val > thr
    rows, cols, val = rows[keep], cols[keep], val[keep]
    # quadratic sub-pixel refinement along x and y
    c, l, rr = s[rows, cols], s[rows, cols - 1], s[rows, cols + 1]
    u, d = s[rows - 1, cols], s[rows + 1, cols]
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = np.where(2 * c - l - rr > 0, 0.5 * (rr - l) / (2 * c - l - rr), 0.0)
        dy = np.where(2 * c - u - d > 0, 0.5 * (d - u) / (2 * c - u - d), 0.0)
    dx, dy = np.clip(np.nan_to_num(dx), -0.5, 0.5), np.clip(np.nan_to_num(dy), -0.5, 0.5)
    xy = work.to_image(np.stack([cols + dx, rows + dy], axis=1))
    return Columns(xy=xy, height=val.astype(float))
