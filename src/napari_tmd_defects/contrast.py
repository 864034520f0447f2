"""Sublattice contrast matching: show any 2H-MX2 image to the networks as MoTe2.

The shipped networks learnt MoTe2, where the chalcogen (X) column is about three times
brighter than the metal (M) column. Other dichalcogenides differ only in that ratio
(MoSe2 ~1.4; WSe2, MoS2, WS2 have the metal brighter: ~0.5, 0.4, 0.15) and in the
lattice constant, which the pipeline handles by resampling. So the image is remapped
pixel by pixel: every pixel belongs to the nearest X column, M column or hollow site of
the fitted honeycomb (:func:`~.classical.fit_sublattices`); the X sublattice is scaled so
that a full X column reads 1 and the M sublattice so that a metal column reads the MoTe2
ratio. Relative contrasts within a sublattice, which are what tell a defect (one
chalcogen of two missing, a missing metal), are untouched; so are the noise's relative
level and the column positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .materials import get_material

__all__ = ["ContrastMatch", "match_contrast"]

#: Z exponent used for the reference ratio (middle of the range the networks saw).
REFERENCE_Z_EXPONENT = 1.8


@dataclass
class ContrastMatch:
    """An image remapped to the reference material's contrast, and what was measured.

    ``x_level``, ``m_level``, ``background``: median smoothed intensities at the X
    columns, the M columns and the hollow sites of the input (its grey levels);
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


def _sublattice_of_pixels(shape, a1, a2, origin, offsets, rows_per_chunk: int = 256) -> np.ndarray:
    """Index (into ``offsets``) of the nearest honeycomb site of every pixel, (rows, cols) uint8."""
    from .classical import _frac_coords

    h, w = shape
    basis = np.stack([a1, a2], axis=1)
    out = np.empty((h, w), np.uint8)
    xx = np.arange(w, dtype=float)
    shifts = np.array([(0, 0), (1, 0), (0, 1), (-1, 0), (0, -1), (1, -1), (-1, 1), (1, 1), (-1, -1)], float)
    for y0 in range(0, h, rows_per_chunk):
        yy = np.arange(y0, min(y0 + rows_per_chunk, h), dtype=float)
        px = np.stack(np.broadcast_arrays(xx[None, :], yy[:, None]), axis=-1).reshape(-1, 2)
        f = _frac_coords(px, a1, a2) - origin
        best = []
        for off in offsets:
            r = f - off
            r -= np.round(r)
            d = np.full(len(r), np.inf)
            for s in shifts:
                q = (r + s) @ basis.T
                d = np.minimum(d, q[:, 0] ** 2 + q[:, 1] ** 2)
            best.append(d)
        out[y0:y0 + len(yy)] = np.argmin(np.stack(best), axis=0).reshape(len(yy), w)
    return out


def match_contrast(image: np.ndarray, a_px: float, material: str, reference: str = "MoTe2") -> ContrastMatch | None:
    """Remap ``image`` of ``material`` so that its column contrast is that of ``reference``.

    ``a_px``: lattice constant in px. Returns None when the X and M sublattices cannot be
    told apart (no lattice found). The result is in units where a full X column is 255
    above the hollow-site background.
    """
    from .classical import _sample, fit_sublattices

    img = np.asarray(image, dtype=np.float32)
    mat, ref = get_material(material), get_material(reference)
    fit = fit_sublattices(img, a_px, mat.name)
    if fit is None:
        return None
    h, w = img.shape
    _, xs, ms, hs = fit.sites(img.shape)

    def level(p):
        p = p[(p[:, 0] >= 0) & (p[:, 0] <= w - 1) & (p[:, 1] >= 0) & (p[:, 1] <= h - 1)]
        return float(np.median(_sample(fit.smooth, p))) if len(p) else float("nan")

    x_level, m_level, bg = level(xs), level(ms), level(hs)
    if not (np.isfinite(x_level) and np.isfinite(m_level) and np.isfinite(bg)):
        return None
    if min(x_level, m_level) - bg <= 0:
        return None
    ratio = ref.z_metal**REFERENCE_Z_EXPONENT / (2.0 * ref.z_chalcogen**REFERENCE_Z_EXPONENT)
    gx, gm = 1.0 / (x_level - bg), ratio / (m_level - bg)
    which = _sublattice_of_pixels(img.shape, fit.a1, fit.a2, fit.origin,
                                  [np.zeros(2), np.asarray(fit.partner), np.asarray(fit.hollow)])
    gain = np.array([gx, gm, math.sqrt(gx * gm)], np.float32)[which]
    gain = ndi.gaussian_filter(gain, 0.05 * a_px)
    out = ((img - bg) * gain * 255.0).astype(np.float32)
    return ContrastMatch(image=out, x_level=x_level, m_level=m_level, background=bg, ratio=ratio)
