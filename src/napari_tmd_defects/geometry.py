"""Lattice maths of the projected 2H-MX2 honeycomb: sites, unit cells, hexagons and boxes.

Coordinates are pixels, ``x`` = column, ``y`` = row (downwards), pixel centres at
integer coordinates; boxes are ``(x_min, y_min, x_max, y_max)`` in the same frame.

Canonical orientation (rotation 0, the paper's): the lattice vector ``a1`` points
along +x, ``a2 = a (1/2, sqrt(3)/2)`` points down-right. Unit cell ``(i, j)`` is the
chalcogen (X) column at ``X = i a1 + j a2`` paired with the metal (M) column up and to
the right of it, ``M = X + (a/2, -a/(2 sqrt 3))``: in the cell's box the X column is in
the left half and the M column in the right half (the 2-channel split of CNN-2).

Hexagon ``(i, j)`` is the ring of six columns around the hollow site
``X + (a/2, a/(2 sqrt 3))``; its upper-left edge is cell ``(i, j)`` and its lower-right
edge is cell ``(i, j+1)``. Each cell therefore belongs to two hexagons.

Box convention (ground truth): a cell box is the bounding box of its two column centres
padded by ``CELL_PAD_X * a`` left/right and ``CELL_PAD_Y * a`` top/bottom; a hexagon box is
the bounding box of its six column centres padded by the same amounts. The paddings are
chosen so that the paper's crop ratios (alpha = 0.65, beta = 0.5; its experimental
W_U/W_H = 0.63, H_U/H_H = 0.5) cast a ground-truth hexagon exactly onto its two
ground-truth cells, and so that cells tile the lattice rows without overlap
(cell height = row spacing = sqrt(3)/2 a).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "window_max",
    "dilate_disk",
    "flat_pixels",
    "bbox_of_points",
    "box_iou",
    "cast_hexagons",
    "cell_box",
    "CELL_PAD_X",
    "CELL_PAD_Y",
    "cells_from_hexagons",
    "CellSet",
    "estimate_lattice",
    "ring_contrast",
    "fit_lattice",
    "hexagon_box",
    "inside_boxes",
    "is_exact_counts",
    "lattice_vectors",
    "LatticeEstimate",
    "match_boxes",
    "refine_columns",
    "rotate_points",
    "rotated_cell_box",
    "RotationFrame",
]

SQRT3 = math.sqrt(3.0)
#: Horizontal padding of cell and hexagon boxes, in units of a (3/14 a).
CELL_PAD_X = 0.15 / 0.7
#: Vertical padding of cell and hexagon boxes, in units of a (a / (2 sqrt 3)).
CELL_PAD_Y = 1.0 / (2.0 * SQRT3)


def lattice_vectors(a_px: float, rotation_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Lattice vectors ``a1, a2`` in px for lattice constant ``a_px`` (px).

    ``rotation_deg`` rotates counter-clockwise as displayed (y points down).
    """
    a1 = np.array([a_px, 0.0])
    a2 = np.array([a_px / 2.0, a_px * SQRT3 / 2.0])
    if rotation_deg:
        a1, a2 = rotate_points(np.stack([a1, a2]), rotation_deg)
    return a1, a2


@dataclass(frozen=True)
class LatticeEstimate:
    """Lattice found in an image by :func:`estimate_lattice`.

    Attributes
    ----------
    a_px : float
        Mean lattice constant, px.
    rotation_deg : float
        Orientation of the lattice modulo 60°, in (-30, 30], counter-clockwise as
        displayed (0 = a1 along x, the canonical orientation).
    a1, a2 : (2,) arrays
        Real-space lattice vectors (px), a2 about 60° clockwise on screen from a1
        (down-right at rotation 0); they absorb linear scan distortion.
    strength : float
        Power at the lattice reflections over the power at the same pattern turned by
        15-45° (between reflections); below ~4.5 there is no reliable lattice (noise gives 1-3.5).
    """

    a_px: float
    rotation_deg: float
    a1: np.ndarray
    a2: np.ndarray
    strength: float


def _refine_peak(power: np.ndarray, ky: float, kx: float, r: int = 2) -> tuple[float, float, float]:
    """Centroid of the power around the (ky, kx) frequency bin (fftshifted coordinates)."""
    n0, n1 = power.shape
    iy, ix = int(round(ky)), int(round(kx))
    ys = np.arange(iy - r, iy + r + 1)
    xs = np.arange(ix - r, ix + r + 1)
    win = power[np.ix_(ys % n0, xs % n1)]
    win = win - win.min()
    tot = win.sum()
    if tot <= 0:
        return float(ky), float(kx), 0.0
    cy = float((win.sum(axis=1) * ys).sum() / tot)
    cx = float((win.sum(axis=0) * xs).sum() / tot)
    return cy, cx, float(power[iy % n0, ix % n1])


#: A ring of reflections counts as present when it has this many times the power of the
#: same ring between reflections.
MIN_RING_CONTRAST = 3.0
#: ... or this many times where it is the first ring of a lattice sqrt(3) larger than a
#: present one, whose first ring is that lattice's second ({110}): where domains turned
#: 10-20° from each other put their reflections on the turned ring, a honeycomb's weaker
#: {100} ring stands out 2-3 times (a multislice frame of three domains: 2.2-2.6) and the
#: {110} ring, read as the first ring of a lattice sqrt(3) too small, wins. Such a first
#: ring must hold at least this share of its second ring's power (the honeycomb's bound
#: before blur; clutter at the ring of a lattice sqrt(3) too large holds ~0.15).
MIN_SUPER_RING_CONTRAST = 2.0
MIN_SUPER_FIRST_RING_SHARE = 0.25
#: A candidate lattice's first ring holds at least this share of its second ring's power
#: (a honeycomb's {100} / {110} structure factors give >= 1/4 before blur, which only
#: raises it), and its second ring at least this contrast: a lattice sqrt(3) too large
#: whose "first ring" is low-frequency clutter (0.07-0.09 of its second ring, the real
#: reflections), or one whose second ring falls where a grain turned 30° has its
#: reflections (contrast < 0.5), is not taken over the real one.
MIN_FIRST_RING_SHARE = 0.15
MIN_SECOND_RING_CONTRAST = 0.5
#: Candidates within this relative distance of the strongest one's spatial frequency, or
#: of sqrt(3) or 3 times it, are read as the same lattice's rings.
RELATED_TOLERANCE = 0.06
#: A candidate counts as a reflection of its ring when its contrast is at least this share
#: of the ring's clearest one (clutter next to a sheared ring stands ~1 % as far out).
RING_MEMBER_SHARE = 0.1
#: Images larger than this (px) are block-averaged before the lattice FFT.
LATTICE_FFT_SIZE = 1024


def estimate_lattice(image: np.ndarray, a_range_px: tuple[float, float] = (6.0, 400.0),
                     a_hint: float | None = None) -> LatticeEstimate | None:
    """Find the hexagonal lattice of an image from its Fourier transform.

    Candidate first-order ({100}, spacing sqrt(3)/2 a) and second-order ({110}, spacing
    a/2) reflections are scored together, so either may be the strongest. Images larger
    than :data:`LATTICE_FFT_SIZE` are block-averaged by an integer factor first (same
    field of view, so the same precision); when that leaves the lattice under 8 px, the
    central :data:`LATTICE_FFT_SIZE` square is used at full sampling instead.

    Parameters
    ----------
    image : (rows, cols) array
    a_range_px : (min, max)
        Range of lattice constants to consider, px.
    a_hint : float, optional
        Expected lattice constant (px), e.g. from a given pixel size: of the candidates
        whose reflections clearly stand out, the one within 20 % of it is taken.

    Returns
    -------
    LatticeEstimate, or None when the image has no periodic structure at all.
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    h, w = img.shape
    f = -(-max(h, w) // LATTICE_FFT_SIZE)  # ceil
    if f < 2:
        return _estimate_lattice(img.astype(float, copy=False), a_range_px, a_hint)
    small = block_mean(img, f, dtype=float)  # float64 sums, no float64 copy of a large image
    est = _estimate_lattice(small, (max(a_range_px[0] / f, 4.0), a_range_px[1] / f),
                            None if a_hint is None else a_hint / f)
    if est is not None and est.a_px >= 8.0:
        return replace(est, a_px=est.a_px * f, a1=est.a1 * f, a2=est.a2 * f)
    y0, x0 = max(0, (h - LATTICE_FFT_SIZE) // 2), max(0, (w - LATTICE_FFT_SIZE) // 2)
    crop = img[y0:y0 + LATTICE_FFT_SIZE, x0:x0 + LATTICE_FFT_SIZE].astype(float, copy=False)
    return _estimate_lattice(crop, a_range_px, a_hint)


#: :func:`ring_contrast` averages the power over an annulus this wide (relative radius)
#: around each ring and compares it with the annuli between these relative distances.
RING_HALF_WIDTH = 0.04
RING_OFF = (0.10, 0.20)


#: :func:`autocorrelation_lattice` takes the peaks of the image's autocorrelation within
#: these factors of the estimate's lattice constant, and needs the three strongest to be
#: about 60° apart (degrees) and of about one length (relative spread), and each to
#: correlate at least this much (correlation coefficient).
AUTOCORR_RANGE = (0.7, 1.3)
AUTOCORR_MAX_ANGLE_ERR = 8.0
AUTOCORR_MAX_SPREAD = 0.08
AUTOCORR_MIN_CORR = 0.1


def _parabolic(a: float, b: float, c: float) -> float:
    """Sub-pixel offset of a peak ``b`` between its neighbours ``a`` and ``c``."""
    den = a - 2.0 * b + c
    return 0.0 if den == 0 else 0.5 * (a - c) / den


def autocorrelation_lattice(image: np.ndarray, est: LatticeEstimate) -> LatticeEstimate | None:
    """The lattice constant of a weak Fourier estimate ``est`` measured again in real space,
    from the image's autocorrelation: ``est`` scaled to the mean length of the three
    strongest autocorrelation peaks near its lattice constant, or None where those peaks
    do not form a hexagonal lattice.

    A frame only a few cells across has reflections a few Fourier pixels from the centre,
    and scan distortion smears them, so their radius can be 10-15 % off; the
    autocorrelation peaks one lattice constant from the origin, where a pixel is a few
    percent of it (178 structure-stress frames of 8-16 cells across: median error 0.8 %,
    largest 5.5 %, where the Fourier estimate's were 1.7 % and 13.7 %;
    ``benchmarks/lattice_small_frames.py``). The estimate's strength is kept: this does not
    make a lattice clearer, only its size better measured.
    """
    from scipy import ndimage as ndi

    a = float(est.a_px)
    h, w = np.shape(image)
    if not (math.isfinite(a) and 4.0 <= a <= 0.5 * min(h, w)):
        return None
    # the central square, up to LATTICE_FFT_SIZE or 8 lattice constants (bounded memory on large frames)
    side = min(h, w, max(LATTICE_FFT_SIZE, int(8 * a)))
    y0, x0 = (h - side) // 2, (w - side) // 2
    img = np.asarray(image)[y0:y0 + side, x0:x0 + side].astype(float)
    img = img - ndi.gaussian_filter(img, a)
    spec = np.fft.rfft2(img, s=(2 * side, 2 * side))
    ac = np.fft.fftshift(np.fft.irfft2(spec.real**2 + spec.imag**2, s=(2 * side, 2 * side)))
    c = side  # the origin's index
    lo, hi = AUTOCORR_RANGE
    # only a window round the origin is read: the ring and the peak filter's reach beyond it
    # (all of it where the window would not fit inside)
    m = int(math.ceil((hi + 0.3) * a)) + 2
    if m < side - 1:
        ac, c = ac[c - m:c + m + 1, c - m:c + m + 1], m
    off = np.arange(len(ac)) - c
    yy, xx = off[:, None], off[None, :]
    ac /= np.maximum((side - np.abs(yy)) * (side - np.abs(xx)), 1)  # per overlapping pixel
    ac /= max(float(ac[c, c]), 1e-300)  # correlation coefficient
    r = np.hypot(yy, xx)
    ring = (r > lo * a) & (r < hi * a) & ((yy > 0) | ((yy == 0) & (xx > 0)))  # one of each +-pair
    ring[[0, -1], :] = ring[:, [0, -1]] = False
    peak = ring & (ac == ndi.maximum_filter(ac, size=max(3, int(0.3 * a))))
    pk = np.argwhere(peak)
    if len(pk) < 3:
        return None
    top = pk[np.argsort(-ac[pk[:, 0], pk[:, 1]])[:3]]
    if ac[top[-1, 0], top[-1, 1]] < AUTOCORR_MIN_CORR:
        return None
    vec = np.array([[x - c + _parabolic(ac[y, x - 1], ac[y, x], ac[y, x + 1]),
                     y - c + _parabolic(ac[y - 1, x], ac[y, x], ac[y + 1, x])] for y, x in top])
    length = np.hypot(vec[:, 0], vec[:, 1])
    ang = np.sort(np.degrees(np.arctan2(vec[:, 1], vec[:, 0])) % 180.0)
    gaps = np.diff(np.r_[ang, ang[0] + 180.0])
    if np.abs(gaps - 60.0).max() > AUTOCORR_MAX_ANGLE_ERR or np.ptp(length) > AUTOCORR_MAX_SPREAD * length.mean():
        return None
    f = float(length.mean()) / a
    return replace(est, a_px=a * f, a1=est.a1 * f, a2=est.a2 * f)


def ring_contrast(image: np.ndarray, a_px: Sequence[float]) -> list[tuple[float, float]]:
    """For each lattice constant of ``a_px`` (px): the power of the image's {100} and {110}
    rings, averaged round the whole ring, over the power of the annuli beside it
    (:data:`RING_OFF`): near 1 without a lattice of that size. Several domains and a
    scan's bending spread a lattice's reflections round its rings, which
    :func:`estimate_lattice` then does not find standing out; the rings still do. One
    power spectrum serves every size; frames larger than :data:`LATTICE_FFT_SIZE` are
    block-averaged first."""
    img = np.asarray(image)
    f = -(-max(img.shape) // LATTICE_FFT_SIZE)
    if f > 1:
        img = block_mean(img, f, dtype=float)
    img = img.astype(float, copy=False)
    h, w = img.shape
    n = int(2 ** math.ceil(math.log2(max(h, w, 64))))
    power = _power_spectrum((img - img.mean()) * np.outer(np.hanning(h), np.hanning(w)), n)
    k = np.arange(n) - n // 2
    r = np.hypot(k[:, None], k[None, :])
    out = []
    for a in a_px:
        pair = []
        for k_ring in (2.0 * f / (SQRT3 * a), 2.0 * f / a):  # cycles / px of the block-averaged frame
            d = np.abs(r / (k_ring * n) - 1.0)
            on, off = power[d < RING_HALF_WIDTH], power[(d > RING_OFF[0]) & (d < RING_OFF[1])]
            pair.append(float(on.mean() / max(off.mean(), 1e-30)) if on.size and off.size else 0.0)
        out.append((pair[0], pair[1]))
    return out


def tile_lattice_constant(image: np.ndarray, min_strength: float, agree: float = 0.05,
                          min_tiles: int = 3, near: float | None = None) -> float | None:
    """The lattice constant (px) that the image's half-size tiles (3 x 3, overlapping) agree
    on: the median of the tiles whose own lattice has at least ``min_strength``, where at
    least ``min_tiles`` of them lie within ``agree`` (relative) of it; else None. With
    ``near`` (px), the tiles are asked about that lattice constant only (each tile's
    estimate hinted by it, those within ``agree`` of it counted).

    Several grains, or one bent by the scan, spread the whole frame's reflections over
    orientations while each tile holds fewer of them; tiles of a few lattice constants can
    take the honeycomb's {110} ring for the first, so this only backs up a whole-frame
    estimate, never replaces it.
    """
    img = np.asarray(image)
    h, w = img.shape
    th, tw = h // 2, w // 2
    if min(th, tw) < 64:
        return None
    a = []
    for y in (0, h // 4, h - th):
        for x in (0, w // 4, w - tw):
            est = estimate_lattice(img[y:y + th, x:x + tw], a_hint=near)
            if est is not None and est.strength >= min_strength:
                a.append(est.a_px)
    if near is not None:
        a = [v for v in a if abs(v / near - 1.0) < agree]
    if len(a) < min_tiles:
        return None
    med = float(np.median(a))
    return med if sum(abs(v / med - 1.0) < agree for v in a) >= min_tiles else None


def _power_spectrum(img: np.ndarray, n: int) -> np.ndarray:
    """``|fftshift(fft2(img, s=(n, n)))|²`` of a real image, from its half spectrum (rfft2)."""
    from scipy import fft as sfft

    # rfft2(img, s=(n, n)) value for value, without transforming the zero-padded rows
    from .parallel import cpu_threads

    workers = cpu_threads()
    half = sfft.fft(sfft.rfft(img, n=n, axis=1, workers=workers), n=n, axis=0, workers=workers)
    half = half.real**2 + half.imag**2
    c = n // 2
    power = np.empty((n, n))
    # shifted (y, x) holds P((y - c) % n, (x - c) % n); P(ky, kx) = P(-ky, -kx) gives the
    # columns the half spectrum leaves out (x in 1 .. c - 1)
    power[:c, c:] = half[c:, :c]
    power[c:, c:] = half[:c, :c]
    power[:c, 0] = half[c:, c]
    power[c:, 0] = half[:c, c]
    power[:c, 1:c] = half[c:0:-1, c - 1:0:-1]
    power[c, 1:c] = half[0, c - 1:0:-1]
    power[c + 1:, 1:c] = half[n - 1:c:-1, c - 1:0:-1]
    return power


def _mean3(x: np.ndarray, axis: int) -> np.ndarray:
    """``ndimage.uniform_filter1d(x, 3, axis)`` (mode 'reflect'), value for value: the same
    running sum along each line (``n >= 3``)."""
    x = np.moveaxis(x, axis, 0)
    out = np.empty_like(x)
    out[0] = (x[0] + x[0]) + x[1]
    np.subtract(x[2], x[0], out=out[1])
    np.subtract(x[3:], x[:-3], out=out[2:-1])
    np.subtract(x[-1], x[-3], out=out[-1])
    if axis == 0:  # row by row: numpy's cumsum down the columns of a C array is ~10x slower
        for i in range(1, len(out)):
            np.add(out[i - 1], out[i], out=out[i])
    else:
        np.cumsum(out, axis=0, out=out)
    out /= 3.0
    return np.moveaxis(out, 0, axis)


def window_max(x: np.ndarray, size: int) -> np.ndarray:
    """Largest value in each ``size`` x ``size`` window of ``x`` (shape ``(rows - size + 1,
    cols - size + 1)``; ``ndimage.maximum_filter`` without the border): along each axis,
    windows of 2, 4, 8 ... then two overlapping ones."""
    for axis in (0, 1):
        x = np.moveaxis(x, axis, 0)
        w = 1
        while 2 * w <= size:
            x = np.maximum(x[:-w], x[w:])
            w *= 2
        if w < size:
            x = np.maximum(x[: len(x) - (size - w)], x[size - w :])
        x = np.moveaxis(x, 0, axis)
    return x


#: Higher rings of a hexagonal reciprocal lattice: (|k| / |k100|, turn in degrees).
HIGHER_RINGS = ((SQRT3, 30.0), (2.0, 0.0), (3.0, 0.0))
#: ... matched within this turn (degrees, modulo 60°).
HIGHER_RING_TURN_TOL = 6.0


def _harmonic_of(c: tuple, o: tuple) -> bool:
    """Whether candidate ``c``'s first ring (its ``(.., k100, theta, ..)``) is one of the
    :data:`HIGHER_RINGS` of candidate ``o``."""
    for m, turn in HIGHER_RINGS:
        if abs(c[1] / (m * o[1]) - 1.0) < RELATED_TOLERANCE:
            d = (c[2] - o[2] - turn) % 60.0
            if min(d, 60.0 - d) < HIGHER_RING_TURN_TOL:
                return True
    return False


def _estimate_lattice(img: np.ndarray, a_range_px: tuple[float, float],
                      a_hint: float | None = None) -> LatticeEstimate | None:
    """:func:`estimate_lattice` on one array, at its own sampling."""
    h, w = img.shape
    if min(h, w) < 16 or not np.isfinite(img).all() or np.ptp(img) == 0:
        return None
    win = np.outer(np.hanning(h), np.hanning(w))
    # zero-pad small images x2 for finer frequency bins (large ones have enough)
    n = int(2 ** math.ceil(math.log2(max(h, w, 128)))) * (2 if max(h, w) <= 512 else 1)
    power = _power_spectrum((img - img.mean()) * win, n)
    c = n // 2
    k1 = (np.arange(n) - c) / n  # cycles per px, y down
    # {100} spatial frequency for a lattice constant a: 2 / (sqrt(3) a)
    kmin = 2.0 / (SQRT3 * min(a_range_px[1], max(h, w) / 2.0))
    kmax = min(2.0 / a_range_px[0], 0.45)
    sm = _mean3(_mean3(power, 0), 1)  # ndimage.uniform_filter(power, 3)
    # local maxima (7 x 7) in the band kmin < |k| < kmax with ky >= 0 (the power is
    # symmetric); the band lies more than 3 px inside rows c-3 .. c+r, columns c-r .. c+r
    r = min(math.ceil(kmax * n) + 4, c - 1)
    kr = np.hypot(k1[c:c + r - 2, None], k1[None, c - r + 3:c + r - 2])
    band = (kr > kmin) & (kr < kmax)
    if not band.any():
        return None
    inner = sm[c:c + r - 2, c - r + 3:c + r - 2]
    py, px = np.nonzero((inner == window_max(sm[c - 3:c + r + 1, c - r:c + r + 1], 7)) & band)
    if py.size == 0:
        return None
    order = np.argsort(inner[py, px])[::-1][:8]
    iys, ixs = py[order] + c, px[order] + c - r + 3

    def ring_powers(rings) -> np.ndarray:
        """Power at the six reflections of each ring ``(radius, angle)`` (largest 3 x 3 mean
        around each reflection)."""
        ys, xs, owner = [], [], []
        for k, (rad, theta) in enumerate(rings):
            for m in range(6):
                t = math.radians(theta + 60.0 * m)
                py, px = c + rad * n * math.sin(t), c + rad * n * math.cos(t)
                iy, ix = int(round(py)), int(round(px))
                if 1 <= iy < n - 1 and 1 <= ix < n - 1:
                    ys.append(iy)
                    xs.append(ix)
                    owner.append(k)
        if not ys:
            return np.zeros(len(rings))
        d = np.arange(-1, 2)
        vals = sm[(np.array(ys)[:, None, None] + d[:, None]), (np.array(xs)[:, None, None] + d)]
        vals = vals.reshape(len(ys), 9).max(axis=1)
        return np.bincount(owner, weights=vals, minlength=len(rings))

    def around(rad: float, theta: float) -> list[tuple[float, float]]:
        """A ring and the same ring turned 15, 30 and 45° (between reflections)."""
        return [(rad, theta + d) for d in (0.0, 15.0, 30.0, 45.0)]

    def contrast(p: np.ndarray) -> float:
        """Power at a ring's reflections over the same ring turned 15-45° away from them."""
        return float(p[0] / max(np.mean(p[1:]), 1e-30))

    # The honeycomb's {100}, {110} and {300} rings make the lattice look sqrt(3) smaller or
    # larger than it is. Every candidate ring is judged by how far its six reflections stand
    # out of the same ring turned 15-45° away (noise and contamination give ~1): of the
    # strongest clear candidate and those sqrt(3) or 3x larger, the largest whose first ring
    # clearly stands out wins (a real lattice has reflections there); without one, the best
    # combined contrast of both rings.
    trials = []
    for iy, ix in zip(iys, ixs):
        pk = float(np.hypot(k1[iy], k1[ix]))
        th = math.degrees(math.atan2(k1[iy], k1[ix]))
        for k100, theta in ((pk, th), (pk / SQRT3, th - 30.0)):
            if kmin <= k100 <= kmax:
                trials.append((k100, theta))
    if not trials:
        return None
    rings = [ring for k100, theta in trials for ring in around(k100, theta) + around(k100 * SQRT3, theta + 30.0)]
    pw = ring_powers(rings).reshape(len(trials), 2, 4)
    cands = []
    for (k100, theta), p in zip(trials, pw):
        r1, r2 = contrast(p[0]), contrast(p[1])
        share = float(p[0][0] / max(p[1][0], 1e-30))
        cands.append((2.0 * math.log(max(r1, 1e-12)) + math.log(max(r2, 1e-12)), k100, theta, r1, r2, share))
    clear = [c for c in cands if c[3] >= MIN_RING_CONTRAST]
    # a lattice sqrt(3) larger than a present one, its first ring standing out less
    supers = [c for c in cands if MIN_SUPER_RING_CONTRAST <= c[3] < MIN_RING_CONTRAST
              and c[5] >= MIN_SUPER_FIRST_RING_SHARE
              and any(abs(c[1] * SQRT3 / o[1] - 1.0) < RELATED_TOLERANCE for o in clear)]
    clear += supers

    def honeycomb(c) -> bool:
        """Both rings of a candidate in a honeycomb's proportion."""
        return c[5] >= MIN_FIRST_RING_SHARE and c[4] >= MIN_SECOND_RING_CONTRAST

    if a_hint is not None:
        # a first-order ring at 2 / (sqrt(3) a): the candidates that fit the expectation ...
        fit = [c for c in clear if abs(2.0 / (SQRT3 * c[1]) / a_hint - 1.0) < 0.2]
        if fit:
            # ... unless one is a higher ring ({110}, {200} or {300}) of a larger lattice whose
            # rings clearly stand out in a honeycomb's proportion: that is the image's lattice
            # (a pixel size given 1.5-2.5x too large would otherwise pick the ring)
            parents = [o for o in clear if not any(o is x for x in supers) and honeycomb(o)
                       and any(_harmonic_of(c, o) for c in fit)]
            clear = parents or fit
    # several grains: clutter below the first ring, or a grain turned 30°, can make a wrong
    # candidate clear; one with both rings in a honeycomb's proportion goes first
    clear = [c for c in clear if honeycomb(c)] or clear
    if clear:
        # the largest lattice among the strongest candidate's own (itself, sqrt(3) and 3x
        # larger: its {110} or {300} ring taken for the first), not any that barely stands out
        # (of that ring's reflections, those standing out at least RING_MEMBER_SHARE as far as
        # its clearest: a scan's drift shears the pattern, one ring's reflections lie a few %
        # apart, and weak clutter just inside the ring is no larger lattice)
        top = max(clear, key=lambda c: c[0])
        ringed = [(next((n for n in (0, 1, 2) if abs(c[1] * SQRT3**n / top[1] - 1.0) < RELATED_TOLERANCE), None), c)
                  for c in clear]
        n_max = max(n for n, _ in ringed if n is not None)
        own = [c for n, c in ringed if n == n_max]
        # a ring that stands out clearly is read by its own candidates (supers only where none does)
        own = [c for c in own if not any(c is o for o in supers)] or own
        own = [c for c in own if c[3] >= RING_MEMBER_SHARE * max(o[3] for o in own)]
        k_min = min(c[1] for c in own)
        best = max((c for c in own if c[1] <= 1.03 * k_min), key=lambda c: c[0])
    else:
        best = max(cands, key=lambda c: c[0])
    k100, theta = best[1], best[2]
    # the pattern's power (both rings) at the lattice and turned 15, 30, 45° away from it
    turns = (0.0, 15.0, 30.0, 45.0)
    pw = ring_powers([(k100, theta + d) for d in turns] + [(k100 * SQRT3, theta + d + 30.0) for d in turns])
    on = pw[:4] + pw[4:]
    # refine three {100} reflections (and use their {110} sums) to get the reciprocal basis;
    # where the first ring barely stands out (a lattice taken sqrt(3) larger than its
    # clearest ring, MIN_SUPER_RING_CONTRAST), three of its {110} reflections instead
    by_110 = any(best is c for c in supers)
    k_ref, t_ref = (k100 * SQRT3, theta + 30.0) if by_110 else (k100, theta)
    g = []
    r_search = max(2, int(round(0.05 * k_ref * n)))
    for m in range(3):
        t = math.radians(t_ref + 60.0 * m)
        iy, ix = int(round(c + k_ref * n * math.sin(t))), int(round(c + k_ref * n * math.cos(t)))
        # the candidate may come from a second-order peak: start at the nearest first-order maximum
        y0, x0 = max(iy - r_search, 0), max(ix - r_search, 0)
        win = sm[y0 : iy + r_search + 1, x0 : ix + r_search + 1]
        if win.size:
            dy, dx = np.unravel_index(int(np.argmax(win)), win.shape)
            iy, ix = y0 + dy, x0 + dx
        py, px, _ = _refine_peak(power, iy, ix)
        g.append(np.array([(px - c) / n, (py - c) / n]))  # (kx, ky) cycles/px
    g1, g2, g3 = g
    # g3 = g2 - g1 for a hexagonal lattice; average the redundant estimate
    b1 = (g1 + (g2 - g3)) / 2.0
    b2 = (g2 + (g1 + g3)) / 2.0
    if by_110:  # b1, b2 are {110} vectors, b1 + b2 and 2 b2 - b1 of the basis sought
        b1, b2 = (2.0 * b1 - b2) / 3.0, (b1 + b2) / 3.0
    bmat = np.stack([b1, b2])  # rows: reciprocal vectors (cycles/px)
    amat = np.linalg.inv(bmat).T  # rows: real-space vectors with a_i . b_j = delta_ij
    v1, v2 = amat[0], amat[1]
    # pick the real-space basis closest to the canonical (a1 along x, a2 down-right)
    cands = [v1, v2, v1 + v2, -v1, -v2, -(v1 + v2)]
    ang = [math.degrees(math.atan2(-v[1], v[0])) for v in cands]  # screen angle, y up
    k = int(np.argmin([abs(((a + 30.0) % 60.0) - 30.0) + (0 if -30 < a <= 30 else 1000) for a in ang]))
    a1 = cands[k]
    rot = ang[k]
    # a2 is a1 turned 60° clockwise on screen (down-right at rotation 0)
    a2 = next((v for v in cands if abs(((math.degrees(math.atan2(-v[1], v[0])) - (rot - 60.0) + 180) % 360) - 180) < 20),
              None)
    if a2 is None:  # the refined reflections are no hexagon (noise): no lattice
        return None
    a_px = float((np.linalg.norm(a1) + np.linalg.norm(a2)) / 2.0)
    # strength: lattice reflections over the same pattern turned away from them
    strength = float(on[0] / max(np.mean(on[1:]), 1e-30))
    return LatticeEstimate(a_px=a_px, rotation_deg=float(rot), a1=np.asarray(a1), a2=np.asarray(a2), strength=strength)


def mx_offset(a_px: float) -> np.ndarray:
    """Vector from the X column to the M column of a cell at rotation 0, in px."""
    return np.array([a_px / 2.0, -a_px / (2.0 * SQRT3)])


def hexagon_center_offset(a_px: float) -> np.ndarray:
    """Vector from cell (i, j)'s X column to the centre of hexagon (i, j) at rotation 0, px."""
    return np.array([a_px / 2.0, a_px / (2.0 * SQRT3)])


def rotate_points(points: np.ndarray, rotation_deg: float, center=(0.0, 0.0)) -> np.ndarray:
    """Rotate ``(..., 2)`` points (x, y) counter-clockwise as displayed about ``center``."""
    p = np.asarray(points, dtype=float)
    if not rotation_deg:
        return p.copy()
    t = math.radians(rotation_deg)
    c, s = math.cos(t), math.sin(t)
    cx, cy = center
    dx, dy = p[..., 0] - cx, p[..., 1] - cy
    # y points down, so a counter-clockwise rotation on screen is clockwise in (x, y)
    return np.stack([cx + c * dx + s * dy, cy - s * dx + c * dy], axis=-1)


@dataclass(frozen=True)
class RotationFrame:
    """An image of ``shape`` turned by ``-rotation_deg`` onto a canvas of ``out_shape``.

    Turning the image content by ``-rotation_deg`` brings a lattice at ``rotation_deg`` to
    the canonical orientation. ``to_canvas`` / ``from_canvas`` map (x, y) px points.
    """

    shape: tuple[int, int]
    rotation_deg: float
    out_shape: tuple[int, int]

    @classmethod
    def for_image(cls, shape: tuple[int, int], rotation_deg: float) -> "RotationFrame":
        h, w = shape
        corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], float)
        r = rotate_points(corners, -rotation_deg, ((w - 1) / 2, (h - 1) / 2))
        ext = r.max(axis=0) - r.min(axis=0)
        out = (int(math.ceil(ext[1])) + 1, int(math.ceil(ext[0])) + 1)
        return cls(tuple(shape), float(rotation_deg), out)

    def _centers(self):
        h, w = self.shape
        ho, wo = self.out_shape
        return np.array([(w - 1) / 2, (h - 1) / 2]), np.array([(wo - 1) / 2, (ho - 1) / 2])

    def to_canvas(self, points: np.ndarray) -> np.ndarray:
        ci, co = self._centers()
        return rotate_points(np.asarray(points, float) - ci, -self.rotation_deg) + co

    def from_canvas(self, points: np.ndarray) -> np.ndarray:
        ci, co = self._centers()
        return rotate_points(np.asarray(points, float) - co, self.rotation_deg) + ci

    def warp(self, image: np.ndarray, fill: float) -> np.ndarray:
        """The image resampled onto the canvas (bilinear, float32), ``fill`` outside it.

        The interpolation runs in double precision whatever the input type: a float32
        image is read as it is and each value rounded to float32 as it is stored (no
        float64 copies of the image or the canvas).
        """
        from scipy import ndimage as ndi

        t = math.radians(self.rotation_deg)
        c, s = math.cos(t), math.sin(t)
        mat = np.array([[c, -s], [s, c]])  # acts on (row, col) of the canvas
        ci, co = self._centers()
        offset = ci[::-1] - mat @ co[::-1]
        img = np.asarray(image)
        if img.dtype not in (np.float32, np.float64):
            img = img.astype(float)
        return ndi.affine_transform(
            img, mat, offset=offset, output_shape=self.out_shape,
            order=1, mode="constant", cval=float(fill), output=np.float32,
        )


def cell_box(x_site: np.ndarray, m_site: np.ndarray, a_px: float) -> np.ndarray:
    """Ground-truth box(es) of cell(s) with X and M columns at ``x_site``, ``m_site`` (px).

    Valid for the canonical orientation; returns ``(N, 4)`` or ``(4,)``.
    """
    x = np.asarray(x_site, dtype=float)
    m = np.asarray(m_site, dtype=float)
    px, py = CELL_PAD_X * a_px, CELL_PAD_Y * a_px
    return np.stack(
        [x[..., 0] - px, m[..., 1] - py, m[..., 0] + px, x[..., 1] + py], axis=-1
    )


def rotated_cell_box(x_site: np.ndarray, m_site: np.ndarray, a_px: float, rotation_deg: float) -> np.ndarray:
    """Axis-aligned box(es) of cell(s) in a lattice rotated by ``rotation_deg``.

    The canonical cell rectangle is built in the lattice frame and its corners rotated
    back; the result is their bounding box (equal to :func:`cell_box` at rotation 0).
    """
    x = np.asarray(x_site, dtype=float).reshape(-1, 2)
    m = np.asarray(m_site, dtype=float).reshape(-1, 2)
    if not rotation_deg:
        return cell_box(x, m, a_px)
    xr = rotate_points(x, -rotation_deg)
    mr = rotate_points(m, -rotation_deg)
    corners = rotate_points(box_corners(cell_box(xr, mr, a_px)), rotation_deg)
    return bbox_of_points(corners)


def hexagon_box(center: np.ndarray, a_px: float) -> np.ndarray:
    """Ground-truth box(es) of hexagon(s) centred at ``center`` (px), canonical orientation."""
    c = np.asarray(center, dtype=float)
    hx = a_px / 2.0 + CELL_PAD_X * a_px
    hy = a_px / SQRT3 + CELL_PAD_Y * a_px
    return np.stack([c[..., 0] - hx, c[..., 1] - hy, c[..., 0] + hx, c[..., 1] + hy], axis=-1)


def cast_hexagons(
    boxes: np.ndarray, alpha: float = 0.65, beta: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Hexagonal-net casting: each hexagon box -> its upper-left and lower-right unit cells.

    For a hexagon box ``(x_min, y_min, x_max, y_max)`` of width W and height H
    the upper-left cell is A(x_min, y_min)-B(x_min + alpha W, y_min + beta H) and
    the lower-right cell is C(x_max - alpha W, y_max - beta H)-D(x_max, y_max)
    (2DIP-Net, Fig. 2b).

    Parameters
    ----------
    boxes : (N, 4) array
        Hexagon boxes in px.
    alpha, beta : float
        Crop ratios W_U/W_H and H_U/H_H, each in (0, 1].

    Returns
    -------
    upper_left, lower_right : (N, 4) arrays
        Cell boxes in px.
    """
    if not (0.0 < alpha <= 1.0 and 0.0 < beta <= 1.0):
        raise ValueError(f"alpha and beta must lie in (0, 1], got alpha={alpha}, beta={beta}")
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    ul = np.stack([b[:, 0], b[:, 1], b[:, 0] + alpha * w, b[:, 1] + beta * h], axis=1)
    lr = np.stack([b[:, 2] - alpha * w, b[:, 3] - beta * h, b[:, 2], b[:, 3]], axis=1)
    return ul, lr


def bbox_of_points(points: np.ndarray) -> np.ndarray:
    """Axis-aligned box ``(x_min, y_min, x_max, y_max)`` of ``(..., K, 2)`` points."""
    p = np.asarray(points, dtype=float)
    return np.concatenate([p.min(axis=-2), p.max(axis=-2)], axis=-1)


#: Input elements whose row sums :func:`block_mean` holds at once (bounds its memory).
_BLOCK_MEAN_BAND_ELEMENTS = 1 << 22


def is_exact_counts(image: np.ndarray) -> bool:
    """True for 8/16-bit integer images: every value is exact in float32, so a stage may
    read them as they are and convert only the band or crop it works on (the same values
    as a float32 copy of the whole image)."""
    return image.dtype.kind in "ui" and image.dtype.itemsize <= 2


def block_mean(image: np.ndarray, f: int, dtype=None) -> np.ndarray:
    """Mean over ``f`` x ``f`` px blocks; rows and columns short of a whole block are dropped.

    Pixel ``(i, j)`` of the result is centred at ``(j f + (f - 1) / 2, i f + (f - 1) / 2)``
    px of the input. ``f <= 1`` returns the image itself (converted to ``dtype`` when given).
    ``dtype`` (e.g. float64) is the type the sums are made in and returned as: no
    converted copy of the whole image is made.
    """
    img = np.asarray(image)
    if f <= 1:
        return img if dtype is None else img.astype(dtype, copy=False)
    hc, wc = max(1, img.shape[0] // f), max(1, img.shape[1] // f)
    img = img[: hc * f, : wc * f]
    if dtype is None:  # as ndarray.mean: floats keep their type, integers give float64
        dtype = img.dtype if img.dtype.kind == "f" else np.float64
    # sums of strided slices (rows, then columns): much faster than a reduction over two
    # interleaved axes; in bands of rows, so the row sums never span the whole image
    out = np.empty((hc, wc), dtype)
    band = max(1, _BLOCK_MEAN_BAND_ELEMENTS // (wc * f))  # output rows per band
    for r0 in range(0, hc, band):
        r1 = min(hc, r0 + band)
        blk = img[r0 * f : r1 * f]
        rows = blk[0::f].astype(dtype)
        for i in range(1, f):
            rows += blk[i::f]
        o = out[r0:r1]
        o[...] = rows[:, 0::f]
        for j in range(1, f):
            o += rows[:, j::f]
    out /= f * f
    return out


def dilate_disk(mask: np.ndarray, radius: float) -> np.ndarray:
    """``mask`` (bool) grown by a disk of ``radius`` px (the pixels within ``radius`` of it),
    worked on its bounding box grown by the radius only: the same as over the whole array."""
    r = int(math.ceil(radius))
    if r < 1 or not mask.any():
        return mask.copy()
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0, r1 = max(rows[0] - r, 0), min(rows[-1] + r + 1, mask.shape[0])
    c0, c1 = max(cols[0] - r, 0), min(cols[-1] + r + 1, mask.shape[1])
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    out = mask.copy()
    out[r0:r1, c0:c1] = ndi.binary_dilation(mask[r0:r1, c0:c1], structure=yy**2 + xx**2 <= radius**2)
    return out


def flat_pixels(image: np.ndarray, r0: int = 0, r1: int | None = None) -> np.ndarray:
    """Rows ``r0:r1`` of the mask of pixels equal to each of their four neighbours (those
    the image has: an edge pixel is compared with the ones inside), reading one row more on
    each side (a band at a time: no full-size temporaries)."""
    h = image.shape[0]
    r1 = h if r1 is None else r1
    s0, s1 = max(r0 - 1, 0), min(r1 + 1, h)
    c = image[s0:s1]
    eq = np.ones(c.shape, bool)
    eq[1:] &= c[1:] == c[:-1]
    eq[:-1] &= c[:-1] == c[1:]
    eq[:, 1:] &= c[:, 1:] == c[:, :-1]
    eq[:, :-1] &= c[:, :-1] == c[:, 1:]
    return eq[r0 - s0 : r0 - s0 + (r1 - r0)]


def nearest_pixel(points: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of the pixels nearest to ``(N, 2)`` (x, y) points, clipped to ``shape``."""
    p = np.asarray(points, float).reshape(-1, 2)
    rows = np.clip(np.rint(p[:, 1]).astype(int), 0, shape[0] - 1)
    cols = np.clip(np.rint(p[:, 0]).astype(int), 0, shape[1] - 1)
    return rows, cols


def inside_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of boxes lying entirely inside an image of ``shape`` (rows, cols)."""
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    h, w = shape
    return (b[:, 0] >= -0.5) & (b[:, 1] >= -0.5) & (b[:, 2] <= w - 0.5) & (b[:, 3] <= h - 0.5)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """The four corners ``(N, 4, 2)`` of ``(N, 4)`` boxes."""
    b = np.asarray(boxes, dtype=float)
    x0, y0, x1, y1 = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack(
        [np.stack([x0, y0], -1), np.stack([x1, y0], -1), np.stack([x1, y1], -1), np.stack([x0, y1], -1)],
        axis=-2,
    )


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of boxes ``a`` (N, 4) and ``b`` (M, 4) -> (N, M)."""
    a = np.asarray(a, dtype=float).reshape(-1, 4)
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_boxes(
    pred: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5, scores: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """One-to-one matching of predicted to ground-truth boxes at IoU > ``iou_threshold``.

    Pairs are taken greedily by decreasing IoU (ties: higher score first). Only boxes
    whose centres are within one box size of each other are compared, so large sets
    are cheap.

    Returns
    -------
    dict
        ``pred_match`` (N,) index of the matched truth box or -1; ``truth_match`` (M,)
        index of the matched prediction or -1; ``iou`` (N,) IoU of each prediction with
        its best truth box; ``duplicate`` (N,) True for an unmatched prediction whose
        best truth box (IoU > threshold) was matched by another prediction.
    """
    from scipy.spatial import cKDTree

    p = np.asarray(pred, dtype=float).reshape(-1, 4)
    t = np.asarray(truth, dtype=float).reshape(-1, 4)
    n, m = len(p), len(t)
    out = {
        "pred_match": np.full(n, -1, dtype=np.int64),
        "truth_match": np.full(m, -1, dtype=np.int64),
        "iou": np.zeros(n),
        "duplicate": np.zeros(n, dtype=bool),
    }
    if n == 0 or m == 0:
        return out
    pc = (p[:, :2] + p[:, 2:]) / 2
    tc = (t[:, :2] + t[:, 2:]) / 2
    r = float(max(np.max(p[:, 2:] - p[:, :2]), np.max(t[:, 2:] - t[:, :2]), 1e-9))
    pairs = cKDTree(pc).query_ball_tree(cKDTree(tc), r)
    pi = np.fromiter((i for i, js in enumerate(pairs) for _ in js), dtype=np.int64)
    ti = np.fromiter((j for js in pairs for j in js), dtype=np.int64)
    if len(pi) == 0:
        return out
    lt = np.maximum(p[pi, :2], t[ti, :2])
    rb = np.minimum(p[pi, 2:], t[ti, 2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=1)
    area_p = np.prod(p[pi, 2:] - p[pi, :2], axis=1)
    area_t = np.prod(t[ti, 2:] - t[ti, :2], axis=1)
    iou = inter / np.maximum(area_p + area_t - inter, 1e-12)
    np.maximum.at(out["iou"], pi, iou)
    sc = np.zeros(n) if scores is None else np.asarray(scores, dtype=float)
    order = np.lexsort((-sc[pi], -iou))
    best_truth = np.full(n, -1, dtype=np.int64)
    for k in order:
        if iou[k] <= iou_threshold:
            break
        i, j = pi[k], ti[k]
        if best_truth[i] < 0:
            best_truth[i] = j
        if out["pred_match"][i] < 0 and out["truth_match"][j] < 0:
            out["pred_match"][i] = j
            out["truth_match"][j] = i
    out["duplicate"] = (out["pred_match"] < 0) & (best_truth >= 0)
    return out



# --------------------------------------------------------------------------- lattice fit
def _lattice_from_angle(a: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """a1 at angle ``theta`` (radians, in the y-down (x, y) frame), a2 60 degrees further."""
    a1 = a * np.array([math.cos(theta), math.sin(theta)])
    a2 = a * np.array([math.cos(theta + math.pi / 3), math.sin(theta + math.pi / 3)])
    return a1, a2


def _local_mean(points: np.ndarray, values: np.ndarray, at: np.ndarray, sigma: float,
                prior_weight: float = 0.5, exclude_self: bool = False) -> np.ndarray:
    """Gaussian-weighted mean of ``values`` (N, d) at ``points`` (N, 2), evaluated at
    ``at`` (M, 2) within 2 sigma; shrunk towards 0 by ``prior_weight``."""
    from scipy.spatial import cKDTree

    vals = np.asarray(values, dtype=float).reshape(len(points), -1)
    out = np.zeros((len(at), vals.shape[1]))
    if len(points) == 0 or len(at) == 0:
        return out
    sdm = cKDTree(np.asarray(at, float)).sparse_distance_matrix(
        cKDTree(np.asarray(points, float)), 2.0 * sigma, output_type="coo_matrix")
    r, c, d = sdm.row, sdm.col, sdm.data
    if exclude_self:
        keep = r != c
        r, c, d = r[keep], c[keep], d[keep]
    # sparse_distance_matrix drops exact zero distances: add the self/coincident pairs back
    if not exclude_self:
        tree_p = cKDTree(np.asarray(points, float))
        dd, jj = tree_p.query(np.asarray(at, float), k=1)
        same = dd < 1e-9
        r = np.concatenate([r, np.nonzero(same)[0]])
        c = np.concatenate([c, jj[same]])
        d = np.concatenate([d, np.zeros(int(same.sum()))])
    w = np.exp(-0.5 * (d / sigma) ** 2)
    wsum = np.bincount(r, weights=w, minlength=len(at)) + prior_weight
    for k in range(vals.shape[1]):
        out[:, k] = np.bincount(r, weights=w * vals[c, k], minlength=len(at)) / wsum
    return out


def _fit_affine_lattice(points, ij, weights=None):
    """Least-squares ``p = o + i a1 + j a2`` -> (o, a1, a2), or None if degenerate."""
    A = np.column_stack([np.ones(len(ij)), ij[:, 0], ij[:, 1]]).astype(float)
    if len(ij) < 3 or np.linalg.matrix_rank(A) < 3:
        return None
    w = np.ones(len(ij)) if weights is None else np.sqrt(np.asarray(weights, float))
    coef, *_ = np.linalg.lstsq(A * w[:, None], points * w[:, None], rcond=None)
    return coef[0], coef[1], coef[2]


def fit_lattice(
    points: np.ndarray, a_px: float, tolerance: float = 0.3
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Index points of a (mildly distorted) hexagonal lattice and fit its vectors.

    The orientation is estimated from nearest-neighbour vectors (6-fold average),
    neighbours get integer index offsets by local rounding (breadth-first over the
    neighbour graph, so slow distortions do not accumulate), and ``p = o + i a1 + j a2``
    is fitted by least squares. Points farther than ``tolerance * a_px`` from their
    locally corrected lattice site are outliers.

    Parameters
    ----------
    points : (K, 2) array
        Positions in px (x, y), e.g. hexagon centres.
    a_px : float
        Approximate lattice constant, px.
    tolerance : float
        Outlier distance in units of ``a_px``.

    Returns
    -------
    ij : (K, 2) int
        Lattice indices (a1 is the vector closest to +x, a2 60° from it, towards +y).
    inlier : (K,) bool
    a1, a2, origin : (2,) arrays
        Fitted lattice vectors and the position of index (0, 0), px.
    """
    from collections import deque

    from scipy.spatial import cKDTree

    if not (math.isfinite(a_px) and a_px > 0):
        raise ValueError(f"a_px must be a positive number of px, got {a_px!r}")
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    k = len(pts)
    ij = np.zeros((k, 2), dtype=np.int64)
    if k == 0:
        a1, a2 = _lattice_from_angle(a_px, 0.0)
        return ij, np.zeros(0, bool), a1, a2, np.zeros(2)
    tree = cKDTree(pts)
    # orientation and spacing from nearest-neighbour vectors
    a_est, theta = float(a_px), 0.0
    if k >= 2:
        _, idx = tree.query(pts, k=min(7, k))
        v = pts[idx[:, 1:]] - pts[:, None, :]
        ln = np.linalg.norm(v, axis=-1)
        sel = (ln > 0.75 * a_px) & (ln < 1.3 * a_px)
        if sel.sum() >= 4:
            phi = np.arctan2(v[..., 1][sel], v[..., 0][sel])
            z = np.mean(np.exp(6j * phi))
            if abs(z) > 0.3:
                theta = float(np.angle(z)) / 6.0
            a_est = float(np.median(ln[sel]))
    a1, a2 = _lattice_from_angle(a_est, theta)
    m_inv = np.linalg.inv(np.column_stack([a1, a2]))
    # neighbour graph with integer offsets
    pairs = tree.query_pairs(1.35 * a_est, output_type="ndarray")
    adj: list[list[tuple[int, int, int]]] = [[] for _ in range(k)]
    if len(pairs):
        dv = pts[pairs[:, 1]] - pts[pairs[:, 0]]
        off = np.rint(dv @ m_inv.T).astype(np.int64)
        res = np.linalg.norm(dv - off @ np.stack([a1, a2]), axis=1)
        for (p, q), (di, dj), r in zip(pairs, off, res):
            if r < tolerance * a_est:
                adj[p].append((q, di, dj))
                adj[q].append((p, -di, -dj))
    comp = np.full(k, -1, dtype=np.int64)
    n_comp = 0
    for start in np.argsort([-len(a) for a in adj], kind="stable"):
        if comp[start] >= 0:
            continue
        comp[start] = n_comp
        queue = deque([start])
        while queue:
            p = queue.popleft()
            for q, di, dj in adj[p]:
                if comp[q] < 0:
                    comp[q] = n_comp
                    ij[q] = ij[p] + (di, dj)
                    queue.append(q)
        n_comp += 1
    sizes = np.bincount(comp, minlength=n_comp)
    main = int(np.argmax(sizes))
    sel = comp == main
    fit = _fit_affine_lattice(pts[sel], ij[sel])
    if fit is None:
        origin = np.mean(pts[sel] - ij[sel] @ np.stack([a1, a2]), axis=0)
    else:
        origin, a1, a2 = fit
    m_inv = np.linalg.inv(np.column_stack([a1, a2]))
    # attach the other components to the main one's lattice
    for c in range(n_comp):
        if c == main:
            continue
        s = comp == c
        frac = (pts[s] - origin) @ m_inv.T - ij[s]
        ij[s] += np.rint(np.median(frac, axis=0)).astype(np.int64)
    inlier = np.ones(k, dtype=bool)
    for _ in range(2):
        fit = _fit_affine_lattice(pts[inlier], ij[inlier])
        if fit is not None:
            origin, a1, a2 = fit
        resid = pts - (origin + ij @ np.stack([a1, a2]))
        local = _local_mean(pts[inlier], resid[inlier], pts, 1.5 * a_est, exclude_self=False)
        inlier = np.linalg.norm(resid - local, axis=1) < tolerance * a_est
        if not inlier.any():
            inlier[:] = True
            break
    return ij, inlier, a1, a2, origin


# --------------------------------------------------------------------------- cells
@dataclass
class CellSet:
    """Unit cells of an image, each reported once (px; x = column, y = row).

    Attributes
    ----------
    boxes : (N, 4)
        Cell boxes ``(x_min, y_min, x_max, y_max)``.
    x_sites, m_sites : (N, 2)
        Estimated X (chalcogen) and M (metal) column positions.
    ij : (N, 2) int
        Lattice indices: cell ``(i, j)`` has its X column near ``origin + i a1 + j a2``.
    support : (N,) int
        Number of detected hexagons that cast the cell (1 or 2; 0 = recovered from the
        fitted lattice at the border or next to a missed hexagon).
    scores : (N,)
        Mean detection score of the supporting hexagons (0 for recovered cells).
    a1, a2, origin : (2,) arrays
        Fitted lattice vectors and the X column of cell (0, 0), px.
    """

    boxes: np.ndarray
    x_sites: np.ndarray
    m_sites: np.ndarray
    ij: np.ndarray
    support: np.ndarray
    scores: np.ndarray
    a1: np.ndarray = field(default_factory=lambda: np.zeros(2))
    a2: np.ndarray = field(default_factory=lambda: np.zeros(2))
    origin: np.ndarray = field(default_factory=lambda: np.zeros(2))

    def __len__(self) -> int:
        return int(len(self.boxes))

    @classmethod
    def empty(cls, a_px: float = 0.0) -> "CellSet":
        a1, a2 = _lattice_from_angle(a_px, 0.0)
        z2 = np.zeros((0, 2))
        return cls(np.zeros((0, 4)), z2, z2.copy(), np.zeros((0, 2), np.int64),
                   np.zeros(0, np.int64), np.zeros(0), a1, a2, np.zeros(2))


def _group_mean(keys: np.ndarray, values: np.ndarray, weights: np.ndarray):
    """Weighted mean of ``values`` per unique row of ``keys`` -> (keys, means, counts, idx)."""
    uk, inv, cnt = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    wsum = np.bincount(inv, weights=weights, minlength=len(uk))
    vals = np.asarray(values, float).reshape(len(keys), -1)
    mean = np.stack(
        [np.bincount(inv, weights=weights * vals[:, c], minlength=len(uk)) for c in range(vals.shape[1])],
        axis=1,
    ) / wsum[:, None]
    return uk, mean, cnt, inv


def refine_columns(
    image: np.ndarray, sites: np.ndarray, a_px: float, sigma: float = 0.12, iterations: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Refine atomic-column positions to the local intensity peaks of an image.

    Gaussian-weighted centroids (mean shift, window ``sigma * a_px``) of the image minus
    the mean of a ``±0.3 a`` patch, starting from ``sites``; the patch is sampled every
    ``a_px // 30`` px at fine sampling.

    Parameters
    ----------
    image : (rows, cols) array
    sites : (N, 2) array
        Starting positions (x, y) in px.
    a_px : float
        Lattice constant, px.

    Returns
    -------
    refined : (N, 2) array
        Peak positions, px.
    ok : (N,) bool
        False where the patch leaves the image, holds no signal (e.g. a vacancy), or the
        peak moved more than ``0.25 a`` (the input position is returned there).
    """
    img = np.asarray(image, dtype=np.float32)
    p0 = np.asarray(sites, dtype=float).reshape(-1, 2)
    n = len(p0)
    out, ok = p0.copy(), np.zeros(n, dtype=bool)
    r = max(2, int(math.ceil(0.3 * a_px)))
    h, w = img.shape
    if n == 0 or h < 2 * r + 1 or w < 2 * r + 1:
        return out, ok
    cx = np.rint(p0[:, 0]).astype(np.int64)
    cy = np.rint(p0[:, 1]).astype(np.int64)
    inside = (cx - r >= 0) & (cx + r < w) & (cy - r >= 0) & (cy + r < h)
    idx = np.nonzero(inside)[0]
    if len(idx) == 0:
        return out, ok
    # columns are many pixels wide at fine sampling: every ``step``-th pixel is enough
    step = max(1, int(a_px // 30))
    off = np.arange(-(r // step) * step, r + 1, step)
    patches = img[(cy[idx, None, None] + off[None, :, None]), (cx[idx, None, None] + off[None, None, :])]
    patches = np.clip(patches - patches.mean(axis=(1, 2), keepdims=True), 0.0, None)
    gx = cx[idx, None, None] + off[None, None, :]
    gy = cy[idx, None, None] + off[None, :, None]
    p = p0[idx].copy()
    s2 = 2.0 * (sigma * a_px) ** 2
    good = np.ones(len(idx), dtype=bool)
    for _ in range(iterations):
        wgt = patches * np.exp(-((gx - p[:, 0, None, None]) ** 2 + (gy - p[:, 1, None, None]) ** 2) / s2)
        tot = wgt.sum(axis=(1, 2))
        good &= tot > 1e-12
        safe = np.maximum(tot, 1e-12)
        p = np.where(
            good[:, None],
            np.stack([(wgt * gx).sum(axis=(1, 2)) / safe, (wgt * gy).sum(axis=(1, 2)) / safe], axis=1),
            p,
        )
    good &= np.linalg.norm(p - p0[idx], axis=1) < 0.25 * a_px
    out[idx[good]] = p[good]
    ok[idx[good]] = True
    return out, ok


def _fit_columns(ij: np.ndarray, xs: np.ndarray):
    """Robust least-squares lattice ``X(i, j) = o + i a1 + j a2`` from measured X columns
    -> (o, a1, a2, inlier mask) or None."""
    d = np.column_stack([np.ones(len(ij)), ij]).astype(float)
    y = np.asarray(xs, float)
    keep = np.ones(len(y), dtype=bool)
    coef = None
    for _ in range(3):
        if keep.sum() < 4 or np.linalg.matrix_rank(d[keep]) < 3:
            return None
        coef, *_ = np.linalg.lstsq(d[keep], y[keep], rcond=None)
        res = np.linalg.norm(y - d @ coef, axis=1)
        mad = np.median(res[keep]) + 1e-9
        keep = res < max(3.0 * mad, 1e-6)
    return coef[0], coef[1], coef[2], keep


def _lattice_cell_boxes(x_sites: np.ndarray, a1: np.ndarray, a2: np.ndarray) -> np.ndarray:
    """Ground-truth-convention boxes of cells with X columns at ``x_sites`` on a lattice
    ``a1, a2``: the canonical box (:func:`cell_box`) mapped by the linear map taking the
    canonical lattice to ``a1, a2`` (rotation, scale, shear), then its bounding box."""
    xs = np.asarray(x_sites, dtype=float).reshape(-1, 2)
    c1, c2 = lattice_vectors(1.0)
    canon = cell_box(np.zeros(2), mx_offset(1.0), 1.0)
    corners = box_corners(canon[None])[0]  # (4, 2) relative to X, a = 1
    uv = corners @ np.linalg.inv(np.column_stack([c1, c2])).T
    offsets = uv @ np.stack([a1, a2])  # (4, 2) in px
    pts = xs[:, None, :] + offsets[None]
    return bbox_of_points(pts)


def cells_from_hexagons(
    boxes: np.ndarray,
    scores: np.ndarray | None,
    shape: tuple[int, int],
    a_px: float,
    alpha: float = 0.65,
    beta: float = 0.5,
    complete: bool = True,
    min_neighbors: int = 3,
    box_source: str = "cast",
    smooth: float = 3.0,
    image: np.ndarray | None = None,
) -> CellSet:
    """Hexagonal-net casting: detected hexagons -> unit cells, each reported once.

    1. The hexagon centres are indexed on a fitted lattice (:func:`fit_lattice`);
       detections off the lattice are dropped, repeated detections of one hexagon merged.
    2. Each hexagon ``(i, j)`` casts its upper-left cell ``(i, j)`` and lower-right cell
       ``(i, j + 1)`` with the crop ratios ``alpha``, ``beta`` (:func:`cast_hexagons`).
    3. The (up to two) casts of a cell are merged by their score-weighted mean.
    4. The fitted lattice (affine, plus a Gaussian-weighted local correction from the
       hexagon centres that follows slow non-linear distortions) gives every cell's X and
       M columns and its box in the ground-truth convention; that box decides whether a
       cell lies inside the image (as for the ground truth,
       :func:`inside_boxes`) and, if ``complete``, cells that no detected
       hexagon cast (image border, next to defects or missed hexagons) are added when at
       least ``min_neighbors`` supported cells lie within 2 lattice constants (so large
       empty regions are not filled).

    Parameters
    ----------
    boxes : (K, 4) array
        Hexagon boxes in px (e.g. from :meth:`~.detection.HexagonDetector.detect`).
    scores : (K,) array or None
        Detection scores (weights of the merge); None: all 1.
    shape : (rows, cols)
        Image shape in px.
    a_px : float
        Approximate lattice constant in px (material a / pixel size); refined here.
    alpha, beta : float
        Crop ratios W_U/W_H and H_U/H_H (paper: 0.65, 0.5).
    complete : bool
        Add lattice-predicted cells that no hexagon cast (needs at least three
        hexagons that are not all in one lattice row).
    min_neighbors : int
        Supported cells needed within 2 a to add a predicted cell.
    box_source : {"cast", "lattice"}
        Boxes reported for cast cells: the merged casts (the paper's method) or the
        lattice boxes. Recovered cells always get lattice boxes.
    smooth : float
        Width (in lattice constants) of the Gaussian that averages the deviations of the
        hexagon centres (or columns) from the affine lattice into the local correction.
    image : (rows, cols) array, optional
        The image the hexagons were detected in. When given, the X (chalcogen) columns
        are refined to their intensity peaks (:func:`refine_columns`) and the lattice
        is re-fitted to them, which removes any bias of the detector's boxes from the
        sites and from the inside-the-image decision.

    Returns
    -------
    CellSet
        Cells sorted by lattice row ``j``, then ``i``; boxes clipped to the image.
        Assumes the canonical orientation (a1 along x); small rotations are fine.
    """
    from scipy.spatial import cKDTree


    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    if not (math.isfinite(a_px) and a_px > 0):
        raise ValueError(f"a_px must be a positive number of px, got {a_px!r}")
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (rows, cols) of an image, got {shape!r}")
    if box_source not in ("cast", "lattice"):
        raise ValueError(f"box_source must be 'cast' or 'lattice', got {box_source!r}")
    sc = np.ones(len(b)) if scores is None else np.asarray(scores, dtype=float).reshape(-1)
    if len(sc) != len(b):
        raise ValueError(f"got {len(b)} boxes but {len(sc)} scores")
    ok = np.all(np.isfinite(b), axis=1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]) & np.isfinite(sc)
    b, sc = b[ok], sc[ok]
    if len(b) == 0:
        return CellSet.empty(a_px)
    h, w = int(shape[0]), int(shape[1])
    centres = (b[:, :2] + b[:, 2:]) / 2.0
    ij, inlier, a1, a2, origin_hex = fit_lattice(centres, a_px)
    b, sc, ij = b[inlier], sc[inlier], ij[inlier]
    # merge repeated detections of one hexagon
    hij, hbox, _, hinv = _group_mean(ij, b, np.maximum(sc, 1e-3))
    hsc = np.bincount(hinv, weights=sc) / np.bincount(hinv)
    ul, lr = cast_hexagons(hbox, alpha, beta)
    cij_all = np.concatenate([hij, hij + np.array([0, 1])])
    cw = np.concatenate([np.maximum(hsc, 1e-3)] * 2)
    cij, cbox, support, cinv = _group_mean(cij_all, np.concatenate([ul, lr]), cw)
    csc = np.bincount(cinv, weights=np.concatenate([hsc, hsc])) / support

    # lattice sites: affine fit of the hexagon centres + smooth local correction
    lat = np.stack([a1, a2])
    a_fit = float(math.sqrt(abs(np.linalg.det(lat)) * 2.0 / SQRT3))
    hcen = (hbox[:, :2] + hbox[:, 2:]) / 2.0
    hres = hcen - (origin_hex + hij @ lat)

    def sites(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """X and M columns of cells ``q`` (X = hexagon centre - (a1 + a2) / 3)."""
        x0 = origin_hex + (np.asarray(q, float) - 1.0 / 3.0) @ lat
        x = x0 + _local_mean(hcen, hres, x0, smooth * a_fit)
        return x, x + (2.0 * a1 - a2) / 3.0

    # candidate cells: every index whose cell may touch the image
    m_inv = np.linalg.inv(lat.T)
    corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]])
    q = (corners - origin_hex) @ m_inv.T
    lo = np.floor(q.min(axis=0)).astype(int) - 2
    hi = np.ceil(q.max(axis=0)).astype(int) + 2
    # completion needs a lattice fitted from at least three hexagons
    if complete and len(hij) >= 3 and np.linalg.matrix_rank(np.column_stack([np.ones(len(hij)), hij])) == 3:
        gi, gj = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="xy")
        cand = np.column_stack([gi.ravel(), gj.ravel()]).astype(np.int64)
        known = {tuple(t) for t in cij.tolist()}
        cand = cand[np.fromiter((tuple(t) not in known for t in cand.tolist()), dtype=bool, count=len(cand))]
    else:
        cand = np.zeros((0, 2), np.int64)
    n_sup = len(cij)
    if len(cand):
        # keep the candidates with enough cast cells around them (no filling of large holes)
        x_c, _ = sites(np.concatenate([cij, cand]))
        cen = _lattice_cell_boxes(x_c, a1, a2)
        cen = (cen[:, :2] + cen[:, 2:]) / 2.0
        near = cKDTree(cen[:n_sup]).query_ball_point(cen[n_sup:], 2.0 * a_fit, return_length=True)
        cand = cand[np.asarray(near) >= min_neighbors]
    all_ij = np.concatenate([cij, cand])
    if image is not None:
        img = np.asarray(image)
        if img.shape != (h, w):
            raise ValueError(f"image has shape {img.shape}, expected {(h, w)}")
        # X columns only: bright, and their three M neighbours pull symmetrically (an M
        # column's centroid is pulled towards the brighter X column by the probe tails)
        x0, _ = sites(all_ij)
        xr, okx = refine_columns(img, x0, a_fit)
        fit = _fit_columns(all_ij[okx], xr[okx])
        if fit is not None:
            o_x, c1, c2, good = fit
            lat_c = np.stack([c1, c2])
            cres = (xr[okx] - (o_x + all_ij[okx] @ lat_c))[good]
            cpts = xr[okx][good]
            a1, a2, lat = c1, c2, lat_c
            origin_hex = o_x + (a1 + a2) / 3.0

            def sites(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                x = o_x + np.asarray(q, float) @ lat_c
                x = x + _local_mean(cpts, cres, x, smooth * a_fit)
                return x, x + (2.0 * c1 - c2) / 3.0

    xs, ms = sites(all_ij)
    lbox = _lattice_cell_boxes(xs, a1, a2)
    keep = inside_boxes(lbox, (h, w))
    out_box = lbox.copy()
    if box_source == "cast":
        out_box[:n_sup] = cbox
    out_box = out_box[keep]
    out_box[:, [0, 2]] = np.clip(out_box[:, [0, 2]], -0.5, w - 0.5)
    out_box[:, [1, 3]] = np.clip(out_box[:, [1, 3]], -0.5, h - 0.5)
    out_ij = all_ij[keep]
    out_sup = np.concatenate([support, np.zeros(len(cand), np.int64)])[keep]
    out_sc = np.concatenate([csc, np.zeros(len(cand))])[keep]
    order = np.lexsort((out_ij[:, 0], out_ij[:, 1]))
    return CellSet(
        boxes=out_box[order],
        x_sites=xs[keep][order],
        m_sites=ms[keep][order],
        ij=out_ij[order],
        support=out_sup[order].astype(np.int64),
        scores=out_sc[order],
        a1=a1,
        a2=a2,
        origin=origin_hex - (a1 + a2) / 3.0,
    )
