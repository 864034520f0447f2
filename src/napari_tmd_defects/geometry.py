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

import numpy as np

__all__ = [
    "CELL_PAD_X",
    "CELL_PAD_Y",
    "bbox_of_points",
    "box_iou",
    "cast_hexagons",
    "cell_box",
    "hexagon_box",
    "lattice_vectors",
    "rotate_points",
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
