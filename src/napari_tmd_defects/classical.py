"""Classical reference method: the pipeline's sites, classified by intensity thresholds.

No training; the floor the networks must beat. It shares the network pipeline's first
stages (:func:`~.pipeline.locate_cells`: lattice, columns, domains, sites with local gap
filling, cells, vacuum) and differs only in how a cell is classified:

* the intensity of each site above the local background (hollow sites) is taken from the
  smoothed image at the site (:attr:`~.sites.Sites.height`);
* it is normalised by the median of the found columns of its sublattice in its domain;
* chalcogen column 1 / 0.5 / 0 (0, 1, 2 atoms missing), metal column 1 / 0 (present,
  missing); soft probabilities come from Gaussian likelihoods of those levels with the
  measured spread.
"""

from __future__ import annotations

import time

import numpy as np

from .materials import CLASS_VACANCIES, N_CLASSES
from .sites import ROLE_M, ROLE_X

__all__ = ["analyze_classical", "threshold_probabilities"]


def threshold_probabilities(x_level: np.ndarray, m_level: np.ndarray) -> np.ndarray:
    """Class probabilities ``(N, 6)`` from normalised X and M column intensities (1 = full).

    The spread of each level is measured on the columns near 1 (robust, at least 0.05).
    """
    nx, nm = np.asarray(x_level, float), np.asarray(m_level, float)
    full_x, full_m = nx[nx > 0.75], nm[nm > 0.5]
    sx = max(1.4826 * np.median(np.abs(full_x - 1.0)), 0.05) if len(full_x) else 0.15
    sm = max(1.4826 * np.median(np.abs(full_m - 1.0)), 0.05) if len(full_m) else 0.15
    lx = np.stack([np.exp(-0.5 * ((nx - lvl) / sx) ** 2) for lvl in (1.0, 0.5, 0.0)], axis=1) + 1e-12
    lm = np.stack([np.exp(-0.5 * ((nm - lvl) / sm) ** 2) for lvl in (1.0, 0.0)], axis=1) + 1e-12
    lx /= lx.sum(axis=1, keepdims=True)
    lm /= lm.sum(axis=1, keepdims=True)
    probs = np.zeros((len(nx), N_CLASSES))
    for c, (nvx, vm) in enumerate(CLASS_VACANCIES):
        probs[:, c] = lx[:, nvx] * lm[:, int(vm)]
    return probs / probs.sum(axis=1, keepdims=True)


def analyze_classical(image: np.ndarray, pixel_size: float | None, material: str = "MoTe2"):
    """Classify every unit cell with the classical reference method.

    Parameters
    ----------
    image : (rows, cols) array
    pixel_size : float or None
        Å/px (None: estimated from the lattice).
    material : str

    Returns
    -------
    analysis.Result
        Same type as :func:`~.pipeline.analyze` returns (no hexagons; ``support`` is 0).
    """
    from .pipeline import locate_cells, make_result

    t0 = time.perf_counter()
    frame = locate_cells(image, pixel_size, material)
    model = frame.model
    if model is None or len(model.cells) == 0:
        return make_result(frame, np.zeros(0, int), np.zeros(0), None)
    s, c = model.sites, model.cells
    found = ~s.placed
    norm = np.ones(len(s))
    for d in model.domains:
        for role in (ROLE_X, ROLE_M):
            sel = (s.domain == d.id) & (s.role == role)
            ref = s.height[sel & found]
            norm[sel] = max(float(np.median(ref)), 1e-9) if len(ref) else max(float(np.median(s.height[sel])), 1e-9)
    level = s.height / norm
    probs = threshold_probabilities(level[c.x], level[c.m])
    frame.models["classical"] = {"name": "local sites + intensity thresholds"}
    res = make_result(frame, probs.argmax(axis=1), probs.max(axis=1), probs)
    res.timings["total"] = time.perf_counter() - t0
    return res
