"""Classical reference method: lattice from the FFT, column peaks, lattice completion,
intensity thresholds per site. No training; the floor the networks must beat.

1. The lattice (two vectors, any orientation, linear distortion included) comes from
   :func:`geometry.estimate_lattice`.
2. Columns are local maxima of the lightly smoothed image; the brighter sublattice fixes
   the lattice origin, the second sublattice is the one of the two remaining honeycomb
   positions that is brighter (the third is the hollow site).
3. Every lattice site inside the image is predicted (lattice completion: vacancies get a
   position too), nudged by a smooth displacement field measured on the found peaks.
4. The intensity of each site above the local background (hollow sites) is normalised by
   the median of its sublattice and thresholded: chalcogen column 1 / 0.5 / 0 (0, 1, 2
   atoms missing), metal column 1 / 0 (present, missing). Soft probabilities come from
   Gaussian likelihoods of those levels with the measured spread.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .geometry import estimate_lattice, rotated_cell_box
from .materials import CLASS_VACANCIES, N_CLASSES, get_material

__all__ = ["LatticeHexagonDetector", "SublatticeFit", "analyze_classical", "fit_sublattices"]


def _frac_coords(points: np.ndarray, a1: np.ndarray, a2: np.ndarray) -> np.ndarray:
    basis = np.stack([a1, a2], axis=1)  # columns
    return np.linalg.solve(basis, points.T).T


def _circular_mean(frac: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    ang = 2 * np.pi * frac
    w = np.ones(len(frac)) if weights is None else weights
    return (np.angle((w[:, None] * np.exp(1j * ang)).sum(axis=0)) / (2 * np.pi)) % 1.0


def _sample(img: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return ndi.map_coordinates(img, [xy[:, 1], xy[:, 0]], order=1, mode="nearest")


def _smooth_displacements(sites: np.ndarray, anchors: np.ndarray, disp: np.ndarray, scale: float) -> np.ndarray:
    """Gaussian-weighted average (width ``scale`` px, cut at 3x) of anchor values at each site."""
    if len(anchors) == 0 or len(sites) == 0:
        return np.zeros((len(sites), disp.shape[1] if disp.ndim == 2 else 1))
    from scipy.spatial import cKDTree

    dist = cKDTree(sites).sparse_distance_matrix(cKDTree(anchors), 3 * scale, output_type="coo_matrix")
    w = dist.copy()
    w.data = np.exp(-(dist.data**2) / (2 * scale**2))
    w = w.tocsr()
    # sites that coincide with an anchor have distance 0, which the sparse matrix drops
    exact = cKDTree(anchors).query(sites, distance_upper_bound=1e-9)
    num = np.asarray(w @ disp)
    den = np.asarray(w.sum(axis=1)).reshape(-1)
    hit = np.isfinite(exact[0])
    num[hit] += disp[exact[1][hit]]
    den[hit] += 1.0
    out = np.zeros_like(num)
    ok = den > 0
    out[ok] = num[ok] / den[ok, None]
    return out


@dataclass
class SublatticeFit:
    """Where the X, M and hollow sites of a honeycomb image are.

    Fractional offsets are in units of the lattice vectors ``a1``, ``a2`` (px); ``origin``
    is an X column. ``partner`` is the offset from an X column to the M column it forms a
    unit cell with; ``rotation_deg`` is the lattice rotation reduced to (-60, 60] (the
    X->partner bond points at 30° + rotation, as in the simulator); ``mirrored`` is True
    when the M columns sit down-right of X at rotation ~0 (the other handedness).
    """

    a1: np.ndarray
    a2: np.ndarray
    origin: np.ndarray
    partner: np.ndarray
    hollow: np.ndarray
    rotation_deg: float
    mirrored: bool
    peaks: np.ndarray
    smooth: np.ndarray

    bright_is_x: bool = True

    def positions(self, ij: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """Positions (px) of sites ``origin + offset + (i, j)`` for integer rows of ``ij``."""
        f = np.asarray(ij, float) + self.origin + offset
        return f[:, :1] * self.a1 + f[:, 1:] * self.a2

    def sites(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every cell near an image of ``shape``: ``(ij, X sites, partner M sites, hollows)``.

        Positions follow the lattice, nudged by a smooth displacement field measured on
        the columns found on the bright sublattice (scan distortion); vacancies get a
        position too.
        """
        from scipy.spatial import cKDTree

        h, w = shape
        a_px = float((np.linalg.norm(self.a1) + np.linalg.norm(self.a2)) / 2)
        n = int(math.hypot(h, w) / a_px) + 4
        c = _frac_coords(np.array([[w / 2.0, h / 2.0]]), self.a1, self.a2)[0].astype(int)
        ii, jj = np.meshgrid(np.arange(-n, n + 1) + c[0], np.arange(-n, n + 1) + c[1], indexing="ij")
        ij = np.stack([ii.ravel(), jj.ravel()], axis=1)
        x = self.positions(ij, np.zeros(2))
        m = self.positions(ij, self.partner)
        hol = self.positions(ij, self.hollow)
        margin = a_px
        near = (x[:, 0] > -margin) & (x[:, 0] < w + margin) & (x[:, 1] > -margin) & (x[:, 1] < h + margin)
        ij, x, m, hol = ij[near], x[near], m[near], hol[near]
        # coarse-to-fine: a wide tolerance and smooth field first (large drifts), then a
        # tight tolerance and local field (scan distortion varies across the frame)
        tree = cKDTree(self.peaks)
        field = np.zeros((3, len(x), 2))
        for tol, scale in ((0.45, 3.0), (0.3, 1.5), (0.25, 1.0)):
            pb = (x if self.bright_is_x else m) + field[0 if self.bright_is_x else 1]
            d, k = tree.query(pb, distance_upper_bound=tol * a_px)
            ok = np.isfinite(d)
            if not ok.any():
                break
            disp = self.peaks[k[ok]] - pb[ok]
            for n, p in enumerate((x, m, hol)):
                field[n] += _smooth_displacements(p + field[n], pb[ok], disp, scale * a_px)
        x, m, hol = x + field[0], m + field[1], hol + field[2]
        return ij, x, m, hol


def fit_sublattices(img: np.ndarray, a_px: float, material: str = "MoTe2") -> SublatticeFit | None:
    """Lattice vectors from the FFT, then which honeycomb sites are X, M and hollow.

    Returns None when the image shows no lattice of about this lattice constant.
    """
    from .analysis import MIN_LATTICE_STRENGTH

    mat = get_material(material)
    h, w = img.shape
    lat = estimate_lattice(img)
    if lat is None or lat.strength < MIN_LATTICE_STRENGTH or abs(lat.a_px / a_px - 1) > 0.2:
        return None
    a1, a2 = lat.a1, lat.a2
    g = ndi.gaussian_filter(img, 0.12 * a_px)
    from skimage.feature import peak_local_max

    peaks = peak_local_max(g, min_distance=max(1, int(0.3 * a_px)), exclude_border=False)[:, ::-1].astype(float)
    if len(peaks) < 6:
        return None
    vals = _sample(g, peaks)
    bright = peaks[vals >= np.percentile(vals, 70)]
    bright_origin = _circular_mean(_frac_coords(bright, a1, a2) % 1.0)
    n = int(math.hypot(h, w) / a_px) + 4
    c = _frac_coords(np.array([[w / 2.0, h / 2.0]]), a1, a2)[0].astype(int)
    ii, jj = np.meshgrid(np.arange(-n, n + 1) + c[0], np.arange(-n, n + 1) + c[1], indexing="ij")
    ij = np.stack([ii.ravel(), jj.ravel()], axis=1).astype(float)
    offsets = ((2 / 3, -1 / 3), (1 / 3, 1 / 3))
    level = {}
    for off in offsets:
        f = ij + bright_origin + np.array(off)
        p = f[:, :1] * a1 + f[:, 1:] * a2
        inside = (p[:, 0] >= 0) & (p[:, 0] <= w - 1) & (p[:, 1] >= 0) & (p[:, 1] <= h - 1)
        level[off] = float(np.median(_sample(g, p[inside]))) if inside.any() else -np.inf
    second = max(level, key=level.get)
    third = offsets[1] if second == offsets[0] else offsets[0]
    bright_is_x = 2 * mat.z_chalcogen**1.7 >= mat.z_metal**1.7
    # canonical handedness: M = X + (2/3, -1/3) in lattice coordinates (up-right of X)
    mirrored = second != (offsets[0] if bright_is_x else offsets[1])
    x_off = np.zeros(2) if bright_is_x else np.array(second)
    # the cell partner of X is its M neighbour in the direction 30° + the lattice rotation
    # reduced to (-60, 60]; see simulation.reduce_rotation
    rho = math.degrees(math.atan2(-a1[1], a1[0]))
    if not mirrored:
        partner = np.array(offsets[0])
    else:
        partner = np.array(offsets[1] if rho > 0 else (1 / 3, -2 / 3))
    # of the three M neighbours, the partner is the one whose bond points at 30° + a
    # rotation in (-60, 60] (the three are 120° apart, so exactly one does)
    best = None
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            cand = np.asarray(partner, float) + (di, dj)
            bond = cand[0] * a1 + cand[1] * a2
            length = float(np.hypot(*bond))
            theta = (math.degrees(math.atan2(-bond[1], bond[0])) - 30.0 + 180.0) % 360.0 - 180.0
            if -60.0 < theta <= 60.0 and (best is None or length < best[0] - 1e-6):
                best = (length, cand, theta)
    _, partner, theta = best
    return SublatticeFit(
        a1=a1, a2=a2, origin=bright_origin + x_off, partner=partner,
        hollow=np.array(third) - x_off, rotation_deg=float(theta), mirrored=bool(mirrored),
        peaks=peaks, smooth=g, bright_is_x=bool(bright_is_x),
    )


def analyze_classical(image: np.ndarray, pixel_size: float, material: str = "MoTe2"):
    """Classify every unit cell with the classical reference method.

    Parameters
    ----------
    image : (rows, cols) array
    pixel_size : float
        Å/px.
    material : str

    Returns
    -------
    analysis.Result
        Same type as :func:`analysis.analyze` returns (no hexagons; ``support`` is 0).
    """
    from .analysis import Result, _empty_result, prepare_image

    t0 = time.perf_counter()
    mat = get_material(material)
    img, warnings = prepare_image(image)
    h, w = img.shape
    a_px = mat.a / pixel_size
    if min(h, w) < 2.5 * a_px:
        warnings.append("image holds fewer than 2.5 lattice constants")
        return _empty_result(img.shape, mat.name, pixel_size, "given", 0.65, 0.5, warnings, 0.6)
    fit = fit_sublattices(img, a_px, mat.name)
    if fit is None:
        warnings.append("classical: no lattice of this lattice constant found")
        return _empty_result(img.shape, mat.name, pixel_size, "given", 0.65, 0.5, warnings, 0.6)
    ij, x_sites, m_sites, ph = fit.sites((h, w))
    mirrored = fit.mirrored

    def in_img(p):
        return (p[:, 0] >= 0) & (p[:, 0] <= w - 1) & (p[:, 1] >= 0) & (p[:, 1] <= h - 1)

    # intensities above the local background (hollow sites)
    gi = ndi.gaussian_filter(img, 0.15 * a_px)
    hv = _sample(gi, ph)
    hin = in_img(ph)
    bg_x = _smooth_displacements(x_sites, ph[hin], hv[hin, None], 2 * a_px)[:, 0]
    bg_m = _smooth_displacements(m_sites, ph[hin], hv[hin, None], 2 * a_px)[:, 0]
    ix = _sample(gi, x_sites) - bg_x
    im = _sample(gi, m_sites) - bg_m
    # cell boxes: the canonical cell rectangle in the lattice frame
    boxes = rotated_cell_box(x_sites, m_sites, a_px, fit.rotation_deg)
    inside = (boxes[:, 0] >= -0.5) & (boxes[:, 1] >= -0.5) & (boxes[:, 2] <= w - 0.5) & (boxes[:, 3] <= h - 0.5)
    boxes, x_sites, m_sites, ix, im, ij_in = boxes[inside], x_sites[inside], m_sites[inside], ix[inside], im[inside], ij[inside]
    if len(boxes) == 0:
        warnings.append("classical: no complete unit cell inside the image")
        return _empty_result(img.shape, mat.name, pixel_size, "given", 0.65, 0.5, warnings, 0.6)
    nx = ix / max(np.median(ix), 1e-9)
    nm = im / max(np.median(im), 1e-9)
    sx = max(1.4826 * np.median(np.abs(nx[nx > 0.75] - 1.0)), 0.05)
    sm = max(1.4826 * np.median(np.abs(nm[nm > 0.5] - 1.0)), 0.05)
    # likelihoods of 0/1/2 missing chalcogens and present/missing metal
    lx = np.stack([np.exp(-0.5 * ((nx - lvl) / sx) ** 2) for lvl in (1.0, 0.5, 0.0)], axis=1) + 1e-12
    lm = np.stack([np.exp(-0.5 * ((nm - lvl) / sm) ** 2) for lvl in (1.0, 0.0)], axis=1) + 1e-12
    lx /= lx.sum(axis=1, keepdims=True)
    lm /= lm.sum(axis=1, keepdims=True)
    probs = np.zeros((len(boxes), N_CLASSES))
    for c, (nvx, vm) in enumerate(CLASS_VACANCIES):
        probs[:, c] = lx[:, nvx] * lm[:, int(vm)]
    probs /= probs.sum(axis=1, keepdims=True)
    labels = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    if mirrored:
        warnings.append("lattice has the mirrored handedness (M columns below-right of X)")
    n = len(boxes)
    return Result(
        material=mat.name, pixel_size=float(pixel_size), pixel_size_source="given", image_shape=(h, w),
        alpha=0.65, beta=0.5, hexagon_boxes=np.zeros((0, 4)), hexagon_scores=np.zeros(0), boxes=boxes,
        x_sites=x_sites, m_sites=m_sites, ij=ij_in.astype(int), support=np.zeros(n, int), labels=labels,
        confidence=conf, probabilities=probs, flagged=conf < 0.6, corrected=np.zeros(n, bool),
        models={"classical": {"name": "FFT lattice + peak finding + intensity thresholds"}},
        timings={"total": time.perf_counter() - t0}, warnings=warnings,
    )


class LatticeHexagonDetector:
    """A detector without learning: hexagon boxes from the fitted lattice.

    Follows the CNN-1 contract (``detect(image, pixel_size, material)``) so that the
    classical lattice can stand in for the network (comparisons, tests); boxes are the
    canonical hexagon boxes around every hollow site, so the image should be in the
    canonical orientation.
    """

    card = {"name": "lattice hexagons (classical)"}

    def detect(self, image, pixel_size, material="MoTe2", progress=None, cancel=None):
        from .geometry import hexagon_box

        img = np.asarray(image, float)
        a_px = get_material(material).a / pixel_size
        fit = fit_sublattices(img, a_px, material)
        if fit is None:
            return np.zeros((0, 4)), np.zeros(0)
        _, _, _, hol = fit.sites(img.shape)
        boxes = hexagon_box(hol, a_px)
        h, w = img.shape
        inside = (boxes[:, 0] >= -0.5) & (boxes[:, 1] >= -0.5) & (boxes[:, 2] <= w - 0.5) & (boxes[:, 3] <= h - 0.5)
        return boxes[inside], np.ones(int(inside.sum()))
