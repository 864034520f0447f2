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
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CELL_PAD_X",
    "CELL_PAD_Y",
    "bbox_of_points",
    "box_iou",
    "cast_hexagons",
    "CellSet",
    "cell_box",
    "cells_from_hexagons",
    "estimate_lattice",
    "LatticeEstimate",
    "RotationFrame",
    "hexagon_box",
    "inside_boxes",
    "lattice_vectors",
    "rotate_points",
    "rotated_cell_box",
    "sites_from_cell_boxes",
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


def estimate_lattice(image: np.ndarray, a_range_px: tuple[float, float] = (6.0, 400.0)) -> LatticeEstimate | None:
    """Find the hexagonal lattice of an image from its Fourier transform.

    Candidate first-order ({100}, spacing sqrt(3)/2 a) and second-order ({110}, spacing
    a/2) reflections are scored together, so either may be the strongest.

    Parameters
    ----------
    image : (rows, cols) array
    a_range_px : (min, max)
        Range of lattice constants to consider, px.

    Returns
    -------
    LatticeEstimate, or None when the image has no periodic structure at all.
    """
    img = np.asarray(image, dtype=float)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    h, w = img.shape
    if min(h, w) < 16 or not np.isfinite(img).all() or np.ptp(img) == 0:
        return None
    win = np.outer(np.hanning(h), np.hanning(w))
    n = int(2 ** math.ceil(math.log2(max(h, w, 128)))) * 2
    f = np.fft.fftshift(np.fft.fft2((img - img.mean()) * win, s=(n, n)))
    power = np.abs(f) ** 2
    c = n // 2
    yy, xx = np.mgrid[0:n, 0:n]
    ky, kx = (yy - c) / n, (xx - c) / n  # cycles per px, y down
    kr = np.hypot(ky, kx)
    # {100} spatial frequency for a lattice constant a: 2 / (sqrt(3) a)
    kmin = 2.0 / (SQRT3 * min(a_range_px[1], max(h, w) / 2.0))
    kmax = min(2.0 / a_range_px[0], 0.45)
    band = (kr > kmin) & (kr < kmax)
    if not band.any():
        return None
    from scipy import ndimage as ndi

    sm = ndi.uniform_filter(power, 3)
    peaks = (sm == ndi.maximum_filter(sm, size=7)) & band & (ky >= 0)
    idx = np.flatnonzero(peaks)
    if idx.size == 0:
        return None
    idx = idx[np.argsort(sm.ravel()[idx])[::-1][:8]]

    def power_at(k100: float, theta: float) -> float:
        tot = 0.0
        for order, (rad, off) in enumerate(((k100, 0.0), (k100 * SQRT3, 30.0))):
            for m in range(6):
                t = math.radians(theta + off + 60.0 * m)
                py, px = c + rad * n * math.sin(t), c + rad * n * math.cos(t)
                iy, ix = int(round(py)), int(round(px))
                if 1 <= iy < n - 1 and 1 <= ix < n - 1:
                    tot += sm[iy - 1 : iy + 2, ix - 1 : ix + 2].max()
        return tot

    best = None
    for i in idx:
        pk = kr.ravel()[i]
        th = math.degrees(math.atan2(ky.ravel()[i], kx.ravel()[i]))
        for k100, theta in ((pk, th), (pk / SQRT3, th - 30.0)):
            if not (kmin <= k100 <= kmax):
                continue
            score = power_at(k100, theta)
            if best is None or score > best[0]:
                best = (score, k100, theta)
    if best is None:
        return None
    _, k100, theta = best
    # refine three {100} reflections (and use their {110} sums) to get the reciprocal basis
    g = []
    for m in range(3):
        t = math.radians(theta + 60.0 * m)
        py, px, _ = _refine_peak(power, c + k100 * n * math.sin(t), c + k100 * n * math.cos(t))
        g.append(np.array([(px - c) / n, (py - c) / n]))  # (kx, ky) cycles/px
    g1, g2, g3 = g
    # g3 = g2 - g1 for a hexagonal lattice; average the redundant estimate
    b1 = (g1 + (g2 - g3)) / 2.0
    b2 = (g2 + (g1 + g3)) / 2.0
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
    a2 = next(v for v in cands if abs(((math.degrees(math.atan2(-v[1], v[0])) - (rot - 60.0) + 180) % 360) - 180) < 20)
    a_px = float((np.linalg.norm(a1) + np.linalg.norm(a2)) / 2.0)
    # strength: lattice reflections over the same pattern turned away from them
    off = np.mean([power_at(k100, theta + d) for d in (15.0, 30.0, 45.0)])
    strength = float(best[0] / max(off, 1e-30))
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
        """The image resampled onto the canvas (bilinear), ``fill`` outside it."""
        from scipy import ndimage as ndi

        t = math.radians(self.rotation_deg)
        c, s = math.cos(t), math.sin(t)
        mat = np.array([[c, -s], [s, c]])  # acts on (row, col) of the canvas
        ci, co = self._centers()
        offset = ci[::-1] - mat @ co[::-1]
        return ndi.affine_transform(
            np.asarray(image, float), mat, offset=offset, output_shape=self.out_shape,
            order=1, mode="constant", cval=float(fill),
        ).astype(np.float32)


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


@dataclass
class CellSet:
    """Unit cells cast from hexagons, one row per physical cell (px, x = column).

    ``boxes`` (N, 4); ``x_sites``, ``m_sites`` (N, 2) column estimates; ``ij`` (N, 2)
    lattice indices; ``support`` (N,) number of detected hexagons that cast the cell.
    """

    boxes: np.ndarray
    x_sites: np.ndarray
    m_sites: np.ndarray
    ij: np.ndarray
    support: np.ndarray


def sites_from_cell_boxes(boxes: np.ndarray, a_px: float) -> tuple[np.ndarray, np.ndarray]:
    """X (lower-left) and M (upper-right) column estimates inside cell boxes (canonical)."""
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    px, py = CELL_PAD_X * a_px, CELL_PAD_Y * a_px
    x = np.stack([b[:, 0] + px, b[:, 3] - py], axis=1)
    m = np.stack([b[:, 2] - px, b[:, 1] + py], axis=1)
    return x, m


def cells_from_hexagons(
    boxes: np.ndarray,
    scores: np.ndarray,
    shape: tuple[int, int],
    a_px: float,
    alpha: float = 0.65,
    beta: float = 0.5,
) -> CellSet:
    """Cast hexagon boxes into unit cells and report every physical cell once.

    Each hexagon gets lattice indices from its centre; its upper-left cell is cell
    ``(i, j)`` and its lower-right cell ``(i, j + 1)``; the casts of the same cell are
    averaged (weighted by detection score). Cells whose box leaves the image are dropped.
    """
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    s = np.asarray(scores, dtype=float).reshape(-1)
    if len(b) == 0:
        z = np.zeros((0, 2))
        return CellSet(np.zeros((0, 4)), z, z, np.zeros((0, 2), int), np.zeros(0, int))
    centers = (b[:, :2] + b[:, 2:]) / 2.0
    a1, a2 = lattice_vectors(a_px)
    ref = centers[np.argmin(np.linalg.norm(centers - np.array([shape[1], shape[0]]) / 2.0, axis=1))]
    ij_f = np.linalg.solve(np.stack([a1, a2], axis=1), (centers - ref).T).T
    hij = np.round(ij_f).astype(int)
    ul, lr = cast_hexagons(b, alpha, beta)
    keys = np.concatenate([hij, hij + [0, 1]])
    cast = np.concatenate([ul, lr])
    w = np.concatenate([s, s]).clip(1e-3, None)
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    wsum = np.bincount(inv, weights=w, minlength=len(uniq))
    merged = np.stack([np.bincount(inv, weights=w * cast[:, k], minlength=len(uniq)) for k in range(4)], 1)
    merged /= wsum[:, None]
    support = np.bincount(inv, minlength=len(uniq))
    inside = inside_boxes(merged, shape)
    merged, uniq, support = merged[inside], uniq[inside], support[inside]
    x, m = sites_from_cell_boxes(merged, a_px)
    return CellSet(merged, x, m, uniq, support)
