"""The data model of the pipeline: columns -> sites -> domains -> cells.

Every coordinate is in px of the analysed image (x = column, y = row, pixel centres at
integers). A *site* is a metal (M) or chalcogen (X) position of the projected honeycomb,
found as a column in the image or, for a missing column, placed where its neighbours in
the same domain put it. A *domain* is a region with one lattice and one assignment of
the three fine-lattice sublattices to M, X and the empty hollow: grains of another
orientation, mirror-twin and inversion domains (the sublattices swap) and translation
domains are different domains. A *cell* is an X site and its partner M site, the
canonical unit cell of 2DIP-Net, described by an affine frame from the canonical cell
(lattice-constant units, X at the origin, M at ``(1/2, -1/(2 sqrt 3))``) to the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CANONICAL_BOX",
    "ROLE_HOLLOW",
    "ROLE_M",
    "ROLE_NAMES",
    "ROLE_X",
    "CellSites",
    "Domain",
    "SiteModel",
    "Sites",
    "canonical_cell_box",
    "cell_box_corners",
]

ROLE_X, ROLE_M, ROLE_HOLLOW = 0, 1, 2
ROLE_NAMES = ("X", "M", "hollow")
SQRT3 = math.sqrt(3.0)
#: The canonical cell box relative to its X column, lattice-constant units
#: ``(x_min, y_min, x_max, y_max)``: column centres padded by 3/14 a in x and
#: a / (2 sqrt 3) in y (the ground-truth convention of :mod:`.geometry`).
CANONICAL_BOX = (-3.0 / 14.0, -1.0 / SQRT3, 0.5 + 3.0 / 14.0, 0.5 / SQRT3)
#: X -> M (partner) and X -> hollow bond vectors of the canonical cell, lattice-constant units.
CANONICAL_PARTNER = np.array([0.5, -0.5 / SQRT3])
CANONICAL_HOLLOW = np.array([0.5, 0.5 / SQRT3])


def canonical_cell_box(alpha: float = 0.65, beta: float = 0.5) -> tuple[float, float, float, float]:
    """The crop box of a cell in canonical cell coordinates for casting ratios α, β.

    The upper-left cast (2DIP-Net, Fig. 2b) of the hexagon box around the hollow next to
    the cell, ``(x_min, y_min, x_min + αW, y_min + βH)``; α = 0.65, β = 0.5 give
    :data:`CANONICAL_BOX`.
    """
    if not (0.0 < alpha <= 1.0 and 0.0 < beta <= 1.0):
        raise ValueError(f"alpha and beta must lie in (0, 1], got alpha={alpha}, beta={beta}")
    cx, cy = CANONICAL_HOLLOW
    hx, hy = 0.5 + 3.0 / 14.0, 1.0 / SQRT3 + 0.5 / SQRT3
    x0, y0, wd, ht = cx - hx, cy - hy, 2 * hx, 2 * hy
    return (x0, y0, x0 + alpha * wd, y0 + beta * ht)


def cell_box_corners(box: tuple[float, float, float, float] = CANONICAL_BOX) -> np.ndarray:
    """The four corners ``(4, 2)`` of a box in canonical cell coordinates."""
    x0, y0, x1, y1 = box
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


@dataclass
class Sites:
    """Metal and chalcogen sites (one row each).

    Attributes
    ----------
    xy : (S, 2) float
        Position, px: the column's intensity peak, or for a placed site the mean of where
        its neighbours in the domain put it.
    role : (S,) int
        :data:`ROLE_X` or :data:`ROLE_M`.
    domain : (S,) int
        Domain id (index into :attr:`SiteModel.domains`).
    nm : (S, 2) int
        Fine-lattice indices within the domain's lattice patch.
    placed : (S,) bool
        True where no column was found and the site was placed from its neighbours.
    height : (S,) float
        Smoothed intensity above the hollow-site background at the site, grey levels.
    boundary : (S,) bool
        On or next to a domain boundary, a dislocation core or a column that fits no lattice.
    basis : (S, 2, 2) float
        Local fine-lattice vectors ``[e1, e2]`` as columns, px.
    fitted : (S, 2) float
        The position averaged with where the neighbours put the site (less noisy; frames
        of the cells are built on it), px.
    """

    xy: np.ndarray
    role: np.ndarray
    domain: np.ndarray
    nm: np.ndarray
    placed: np.ndarray
    height: np.ndarray
    boundary: np.ndarray
    basis: np.ndarray
    fitted: np.ndarray

    def __len__(self) -> int:
        return int(len(self.xy))

    @classmethod
    def empty(cls) -> "Sites":
        return cls(np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2), np.int64),
                   np.zeros(0, bool), np.zeros(0), np.zeros(0, bool), np.zeros((0, 2, 2)), np.zeros((0, 2)))

    def subset(self, keep: np.ndarray) -> "Sites":
        return Sites(*(getattr(self, k)[keep] for k in
                       ("xy", "role", "domain", "nm", "placed", "height", "boundary", "basis", "fitted")))


@dataclass
class Domain:
    """One domain: a lattice patch with one M / X / hollow assignment.

    ``rotation_deg`` is the cell orientation in (-60, 60]: the X -> M partner bond points
    at ``30° + rotation_deg`` counter-clockwise on screen (the simulator's convention).
    ``partner`` and ``hollow`` are the fine-lattice index steps from an X site to its
    partner M site and to the hollow 60° clockwise of it. ``levels`` holds the median
    intensities above background of the X, M and hollow positions (grey levels), and
    ``contrast`` the separation of the two brighter levels relative to the brightest
    (0: M and X cannot be told apart by intensity).
    """

    id: int
    patch: int
    rotation_deg: float
    partner: tuple[int, int]
    hollow: tuple[int, int]
    x_class: int
    m_class: int
    levels: dict[str, float]
    contrast: float
    n_sites: int = 0
    n_cells: int = 0
    #: how far the hollow level lies below the dimmer column level (fraction of the span)
    hollow_margin: float = 1.0
    #: mean local fine-lattice vectors ``[e1, e2]`` (columns, px) of the domain
    basis: np.ndarray | None = None
    #: share of the hexagon detector's hexagons in the domain centred on its hollows (None: not run)
    hexagons_on_hollows: float | None = None
    #: intensities of the three fine-lattice classes (by class index)
    class_levels: np.ndarray | None = None
    #: the hollow sites were taken from the hexagon detector (the intensities could not tell)
    roles_from_hexagons: bool = False
    #: which equally bright class is the metal was read from the site-to-site spread (an alloy)
    roles_from_spread: bool = False

    def to_dict(self, cell_area_nm2: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "rotation_deg": round(self.rotation_deg, 2),
            "n_sites": self.n_sites,
            "n_cells": self.n_cells,
            "area_nm2": round(self.n_cells * cell_area_nm2, 3),
            "levels": {k: round(float(v), 4) for k, v in self.levels.items()},
            "metal_chalcogen_contrast": round(float(self.contrast), 3),
            "hexagons_on_hollows": None if self.hexagons_on_hollows is None else round(self.hexagons_on_hollows, 3),
        }


@dataclass
class CellSites:
    """Unit cells: an X site and its partner M site of one domain.

    Attributes
    ----------
    x, m : (N,) int
        Indices into :class:`Sites` of the X and the M site.
    domain : (N,) int
    frame : (N, 2, 3) float
        Affine map from canonical cell coordinates (lattice-constant units, X at the origin)
        to image px: ``p = frame[:, :, :2] @ u + frame[:, :, 2]``.
    boundary : (N,) bool
        The cell touches a boundary (its class is ``boundary``, not a defect).
    boxes : (N, 4) float
        Axis-aligned bounding box of the canonical cell box under ``frame``, px.
    """

    x: np.ndarray
    m: np.ndarray
    domain: np.ndarray
    frame: np.ndarray
    boundary: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return int(len(self.x))

    @classmethod
    def empty(cls) -> "CellSites":
        z = np.zeros(0, np.int64)
        return cls(z, z.copy(), z.copy(), np.zeros((0, 2, 3)), np.zeros(0, bool), np.zeros((0, 4)))

    def subset(self, keep: np.ndarray) -> "CellSites":
        return CellSites(self.x[keep], self.m[keep], self.domain[keep], self.frame[keep],
                         self.boundary[keep], self.boxes[keep])


@dataclass
class SiteModel:
    """Everything the lattice stages found: sites, domains, cells and boundaries.

    ``boundary_lines`` are polylines ``(K, 2)`` px along domain boundaries;
    ``boundary_length_px`` their total length; ``strays`` columns that fit no lattice
    (``(K, 2)`` px); ``notes`` plain-language findings for the result's warnings.
    """

    sites: Sites
    domains: list[Domain]
    cells: CellSites
    boundary_lines: list[np.ndarray] = field(default_factory=list)
    boundary_length_px: float = 0.0
    strays: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    a_px: float = 0.0
    n_columns: int = 0
    notes: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls, a_px: float = 0.0) -> "SiteModel":
        return cls(Sites.empty(), [], CellSites.empty(), a_px=a_px)
