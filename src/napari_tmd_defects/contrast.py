"""Sublattice contrast matching: show any 2H-MX2 image to the networks as MoTe2.

The shipped networks learnt MoTe2, where the chalcogen (X) column is about three times
brighter than the metal (M) column. Other dichalcogenides differ only in that ratio
(MoSe2 ~1.4; WSe2, MoS2, WS2 have the metal brighter: ~0.5, 0.4, 0.15) and in the
lattice constant, which the cell frames absorb. So the image is remapped pixel by pixel:
every pixel belongs to the nearest X site, M site or hollow of its domain (the sites
found in the image, :mod:`.lattice`); the X sublattice is scaled so that a full X column
reads 1 and the M sublattice so that a metal column reads the MoTe2 ratio. Relative
contrasts within a sublattice, which are what tell a defect (one chalcogen of two
missing, a missing metal), are untouched; so are the noise's relative level and the
column positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from .geometry import is_exact_counts
from .materials import get_material
from .sites import ROLE_M, ROLE_X, Domain, SiteModel

__all__ = ["ContrastMatch", "match_contrast", "model_positions", "sublattice_positions"]

#: Z exponent used for the reference ratio (middle of the range the networks saw).
REFERENCE_Z_EXPONENT = 1.8
#: Grid points per nearest-site query of the gain map (bounds its temporaries: ~50 B each).
_QUERY_POINTS = 2**18


@dataclass
class ContrastMatch:
    """An image remapped to the reference material's contrast, and what was measured.

    ``x_level``, ``m_level``, ``background``: median smoothed intensities at the found X
    columns, the found M columns and the hollow sites of the input (its grey levels);
    ``ratio`` the M/X ratio imposed (the reference material's).
    """

    image: np.ndarray
    x_level: float
    m_level: float
    background: float
    ratio: float

    def describe(self, material: str, reference: str) -> str:
        measured = (self.m_level - self.background) / max(self.x_level - self.background, 1e-12)
        return (f"{material} contrast matched to {reference} for the networks "
                f"(metal/chalcogen column ratio {measured:.2f} -> {self.ratio:.2f})")


def sublattice_positions(xy: np.ndarray, role: np.ndarray, domain: np.ndarray, basis: np.ndarray,
                         domains: list[Domain]) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(K, 2)`` px and roles ``(K,)`` (0 X, 1 M, 2 hollow) of the given sites and
    of the two hollows next to each X site's partner bond (placed with its local lattice).

    ``xy``, ``role``, ``domain``, ``basis``: per site (only X and M sites with a domain are
    used); ``domains``: their :class:`~.sites.Domain` records.
    """
    on = ((role == ROLE_X) | (role == ROLE_M)) & (domain >= 0)
    xy, role, domain, basis = xy[on], role[on], domain[on], basis[on]
    if len(xy) == 0 or not domains:
        return np.zeros((0, 2)), np.zeros(0, np.int64)
    xs = np.flatnonzero(role == ROLE_X)
    steps = np.array([d.hollow for d in domains], float)[domain[xs]]
    partners = np.array([d.partner for d in domains], float)[domain[xs]]
    h1 = xy[xs] + np.einsum("nij,nj->ni", basis[xs], steps)
    h2 = xy[xs] + np.einsum("nij,nj->ni", basis[xs], partners - steps)
    pos = np.concatenate([xy, h1, h2])
    out_role = np.concatenate([role, np.full(2 * len(xs), 2, np.int64)])
    return pos, out_role


def model_positions(model: SiteModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(positions, roles, found)`` of every site of a site model and of the hollows next to
    its X sites (:func:`sublattice_positions`); ``found`` is False for placed sites and hollows."""
    s = model.sites
    pos, role = sublattice_positions(s.xy, s.role, s.domain, s.basis, model.domains)
    found = np.concatenate([~s.placed, np.zeros(len(pos) - len(s), bool)]) if len(pos) else np.zeros(0, bool)
    return pos, role, found


def match_contrast(image: np.ndarray, positions: np.ndarray, roles: np.ndarray, found: np.ndarray, a_px: float,
                   material: str, reference: str = "MoTe2") -> ContrastMatch | None:
    """Remap ``image`` of ``material`` so that its column contrast is that of ``reference``.

    ``positions``, ``roles`` (0 X, 1 M, 2 hollow) and ``found`` (a column was seen there)
    describe the sublattices (:func:`model_positions`); ``a_px``: lattice constant, px.
    Returns None when there are too few found columns of either sublattice to measure
    their levels. The result is in units where a full X column is 255 above the hollow
    background.
    """
    img = np.asarray(image)
    if not is_exact_counts(img):  # 8/16-bit counts are read as they are (exact in float32)
        img = img.astype(np.float32, copy=False)
    pos = np.asarray(positions, float).reshape(-1, 2)
    role = np.asarray(roles)
    found = np.asarray(found, bool)
    if np.sum(found & (role == ROLE_X)) < 3 or np.sum(found & (role == ROLE_M)) < 3 or not a_px > 0:
        return None
    ref = get_material(reference)
    get_material(material)  # validates the name
    smooth = ndi.gaussian_filter(img, max(0.7, 0.05 * a_px), mode="nearest", output=np.float32)
    h, w = img.shape

    def level(field, p):
        p = p[(p[:, 0] >= 0) & (p[:, 0] <= w - 1) & (p[:, 1] >= 0) & (p[:, 1] <= h - 1)]
        if not len(p):
            return float("nan")
        return float(np.median(ndi.map_coordinates(field, [p[:, 1], p[:, 0]], order=1, mode="nearest")))

    x_level = level(smooth, pos[found & (role == ROLE_X)])
    m_level = level(smooth, pos[found & (role == ROLE_M)])
    bg = level(smooth, pos[role == 2])
    del smooth  # only the levels were needed: one full-size array fewer from here on
    if not (np.isfinite(x_level) and np.isfinite(m_level) and np.isfinite(bg)) or min(x_level, m_level) - bg <= 0:
        return None
    ratio = ref.z_metal**REFERENCE_Z_EXPONENT / (2.0 * ref.z_chalcogen**REFERENCE_Z_EXPONENT)
    gx, gm = 1.0 / (x_level - bg), ratio / (m_level - bg)
    # nearest sublattice of every pixel, on a grid of ~a/12 (the gain is smoothed anyway),
    # queried a block of grid rows at a time (no full-grid coordinate arrays)
    g = max(1, int(a_px // 12))
    gy, gxx = np.mgrid[(g - 1) / 2.0:h:g], np.mgrid[(g - 1) / 2.0:w:g]
    tree = cKDTree(pos)
    lut = np.array([gx, gm, math.sqrt(gx * gm)], np.float32)
    gain_small = np.empty((len(gy), len(gxx)), np.float32)
    step = max(1, _QUERY_POINTS // len(gxx))
    for i in range(0, len(gy), step):
        rows = gy[i:i + step]
        _, k = tree.query(np.stack([np.tile(gxx, len(rows)), np.repeat(rows, len(gxx))], 1))
        gain_small[i:i + step] = lut[role[k]].reshape(len(rows), len(gxx))
    del tree, k
    if g > 1:
        gain = np.repeat(np.repeat(gain_small, g, axis=0), g, axis=1)[:h, :w]
        if gain.shape != (h, w):  # the grid stops short of the last rows / columns
            gain = np.pad(gain, ((0, h - gain.shape[0]), (0, w - gain.shape[1])), mode="edge")
    else:
        gain = gain_small
    del gain_small
    gain = ndi.gaussian_filter(gain, 0.05 * a_px, output=gain)  # in place (each axis goes line by line via a buffer)
    # (img - bg) * gain * 255 in the gain's array, a block of rows at a time (no full-size temporaries)
    out = gain
    for r0 in range(0, h, 256):
        out[r0:r0 + 256] *= img[r0:r0 + 256] - np.float32(bg)
    out *= np.float32(255.0)
    return ContrastMatch(image=out, x_level=x_level, m_level=m_level, background=bg, ratio=ratio)
