"""Vacuum in the field of view (a hole in the film, the edge of the flake), found from the lattice.

A point defect removes one or two columns; a hole removes the crystal. The difference
is the local *lattice amplitude*: the strength of the lattice's Fourier components in a
window about one lattice constant wide (as in geometric phase analysis). Over the
crystal it is nearly uniform (a missing cell lowers it by ~15 %); over vacuum it falls to
the noise floor whatever the background, contamination or brightness. Regions where it
stays below a fraction of the crystal's level, and that are larger than a few unit
cells, are vacuum: :func:`~.pipeline.analyze` leaves the cells there out of the counts,
the classification and the analysed area.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from .geometry import LatticeEstimate, block_mean, nearest_pixel

__all__ = ["domain_lattices", "grow_into_empty_cells", "lattice_amplitude", "vacuum_mask", "VACUUM_THRESHOLD"]

#: Vacuum where the lattice amplitude is below this fraction of the crystal's.
VACUUM_THRESHOLD = 0.3
#: Smallest vacuum region kept, in unit-cell areas (a single empty cell is a defect).
MIN_VACUUM_CELLS = 4.0


def _reciprocal_vectors(lattice: LatticeEstimate) -> np.ndarray:
    """The six first- and second-order reflections (cycles/px, as (gx, gy)), one of each ± pair."""
    a = np.stack([np.asarray(lattice.a1, float), np.asarray(lattice.a2, float)], axis=1)  # columns a1, a2
    b = np.linalg.inv(a).T  # columns b1, b2: a_i . b_j = delta_ij
    b1, b2 = b[:, 0], b[:, 1]
    return np.stack([b1, b2, b1 + b2, b1 - b2, 2 * b1 + b2, b1 + 2 * b2])


def lattice_amplitude(image: np.ndarray, lattice: LatticeEstimate, sigma_px: float | None = None) -> np.ndarray:
    """Local amplitude of the lattice reflections of ``image`` (same shape, grey levels).

    Each reflection ``g`` is demodulated (``image * exp(-2 pi i g.r)``) and averaged in a
    Gaussian window of ``sigma_px`` (default 0.8 a); the amplitudes of the six
    reflections are added in quadrature. The average is normalised at the image border
    (no drop there). Finely sampled images are first block-averaged to about 10 px per
    lattice constant (the amplitude varies on the scale of ``a``, not of a pixel).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    h, w = img.shape
    a_px = float(lattice.a_px)
    sigma = 0.8 * a_px if sigma_px is None else float(sigma_px)
    f = max(1, int(a_px // 10))
    small = block_mean(img, f)
    small = small - small.mean()
    sh, sw = small.shape
    # pixel centres of the reduced grid, in px of the image
    xs = np.arange(sw) * f + (f - 1) / 2.0
    ys = np.arange(sh) * f + (f - 1) / 2.0
    weight = ndi.gaussian_filter(np.ones((sh, sw)), sigma / f, mode="constant")
    total = np.zeros((sh, sw))
    for g in _reciprocal_vectors(lattice):
        demod = small * np.exp(-2j * np.pi * g[1] * ys)[:, None] * np.exp(-2j * np.pi * g[0] * xs)[None, :]
        re = ndi.gaussian_filter(demod.real, sigma / f, mode="constant")
        im = ndi.gaussian_filter(demod.imag, sigma / f, mode="constant")
        total += (re * re + im * im) / (weight * weight)
    amp = np.sqrt(total).astype(np.float32)
    if f > 1:
        amp = np.repeat(np.repeat(amp, f, axis=0), f, axis=1)
        amp = np.pad(amp, ((0, h - sh * f), (0, w - sw * f)), mode="edge")
    return amp


def vacuum_mask(image: np.ndarray, lattice: LatticeEstimate | list[LatticeEstimate],
                threshold: float = VACUUM_THRESHOLD, min_cells: float = MIN_VACUUM_CELLS) -> np.ndarray:
    """Boolean mask (image shape) of the vacuum regions: True where there is no crystal.

    ``lattice`` may be one lattice or several (grains of other orientations,
    :func:`domain_lattices`): the amplitude is the largest of theirs, normalised by each
    one's crystal level. The crystal's lattice amplitude is taken as the 90th percentile
    over the image (so the crystal must cover at least a tenth of it); vacuum is where the
    amplitude is below ``threshold`` times that, in connected regions of at least
    ``min_cells`` unit-cell areas (sqrt(3)/2 a² each).
    """
    lattices = [lattice] if isinstance(lattice, LatticeEstimate) else [lat for lat in lattice if lat is not None]
    if not lattices:
        return np.zeros(np.shape(image), bool)
    rel = None
    for lat in lattices:
        amp = lattice_amplitude(image, lat)
        ref = float(np.percentile(amp, 90))
        if not np.isfinite(ref) or ref <= 0:
            continue
        r = amp / ref
        rel = r if rel is None else np.maximum(rel, r)
    if rel is None:
        return np.zeros(np.shape(image), bool)
    low = rel < threshold
    if not low.any():
        return low
    lab, n = ndi.label(low)
    sizes = np.bincount(lab.ravel())
    a_px = float(np.mean([lat.a_px for lat in lattices]))
    cell_area = math.sqrt(3) / 2 * a_px**2
    keep = sizes >= min_cells * cell_area
    keep[0] = False
    return keep[lab]


def domain_lattices(model, tolerance_deg: float = 3.0) -> list[LatticeEstimate]:
    """One lattice per distinct orientation among the domains of a site model
    (:class:`~.sites.SiteModel`), from the mean local basis of its largest domain."""
    out: list[LatticeEstimate] = []
    seen: list[float] = []
    s = model.sites
    for d in sorted(model.domains, key=lambda d: -d.n_sites):
        sel = s.domain == d.id
        if sel.sum() < 3:
            continue
        e = s.basis[sel].mean(axis=0)  # columns e1, e2 (fine lattice)
        a1, a2 = e[:, 0] + e[:, 1], 2 * e[:, 1] - e[:, 0]
        ang = math.degrees(math.atan2(-a1[1], a1[0])) % 60.0
        if any(abs((ang - t + 30.0) % 60.0 - 30.0) < tolerance_deg for t in seen):
            continue
        seen.append(ang)
        a = float((np.linalg.norm(a1) + np.linalg.norm(a2)) / 2)
        out.append(LatticeEstimate(a_px=a, rotation_deg=ang, a1=a1, a2=a2, strength=float("inf")))
    return out


def grow_into_empty_cells(mask: np.ndarray, centres: np.ndarray, empty: np.ndarray,
                          a_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Extend the vacuum through empty cells that touch it.

    A cell with no atoms at all (both vacancies) next to a hole cannot be told from the
    hole: such cells, and empty cells next to them, belong to the vacuum. ``centres``
    (N, 2) cell centres in px, ``empty`` (N,) bool. Returns ``(grown mask, taken)`` with
    ``taken`` (N,) bool marking the cells that joined the vacuum; each is painted into
    the mask as a disc of radius 0.6 a.
    """
    centres = np.asarray(centres, float).reshape(-1, 2)
    empty = np.asarray(empty, bool)
    taken = np.zeros(len(centres), bool)
    if not mask.any() or not empty.any():
        return mask, taken
    h, w = mask.shape
    dist = ndi.distance_transform_edt(~mask)
    row, col = nearest_pixel(centres, mask.shape)
    frontier = list(np.flatnonzero(empty & (dist[row, col] <= 1.2 * a_px)))
    idx_empty = np.flatnonzero(empty)
    while frontier:
        k = frontier.pop()
        if taken[k]:
            continue
        taken[k] = True
        near = idx_empty[np.hypot(*(centres[idx_empty] - centres[k]).T) <= 1.2 * a_px]
        frontier.extend(int(j) for j in near if not taken[j])
    grown = mask.copy()
    r = 0.6 * a_px
    for x, y in centres[taken]:
        y0, y1 = max(int(y - r), 0), min(int(y + r) + 1, h)
        x0, x1 = max(int(x - r), 0), min(int(x + r) + 1, w)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        grown[y0:y1, x0:x1] |= (xx - x) ** 2 + (yy - y) ** 2 <= r * r
    return grown, taken
