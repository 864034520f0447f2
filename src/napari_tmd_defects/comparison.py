"""Compare cells of a real image with simulated cells of a class (the paper's GUI check).

* :func:`preview_image` simulates a frame with defects of one class under given noise
  and blur, to set the noise parameters by eye next to a real image.
* :func:`reference_cell` simulates a small perfect lattice with one cell of a chosen
  class at its centre.
* :func:`mx_profile` is the intensity line profile along the M–X direction of a cell
  (through its M and X columns).
* :func:`compare_cell` puts the two together: the crop and profile of a cell of the
  user's image next to those of a simulated cell of its (predicted) class.

Pure numpy/scipy; coordinates in px (x = column, y = row), distances in Å.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .corrections import crop_box
from .geometry import inside_boxes
from .materials import N_CLASSES, get_material
from .simulation import Noise, Optics, SimulatedImage, build_lattice, place_defects, simulate

__all__ = ["CellComparison", "compare_cell", "mx_profile", "preview_image", "reference_cell"]


def _check_label(label: int) -> int:
    if not 0 <= int(label) < N_CLASSES:
        raise ValueError(f"label must be a class id 0..{N_CLASSES - 1}, got {label}")
    return int(label)


def preview_image(
    material: str = "MoTe2",
    label: int = 1,
    pixel_size: float = 0.09,
    noise: Noise | None = None,
    optics: Optics | None = None,
    shape: int | tuple[int, int] = 256,
    defect_fraction: float = 0.1,
    seed: int = 0,
) -> SimulatedImage:
    """A simulated frame whose defective cells are all of class ``label`` (at least one
    inside the frame).

    Parameters
    ----------
    material : str
    label : int
        Class id 0..5; 0 (Perfect) gives a defect-free lattice.
    pixel_size : float
        Å/px.
    noise, optics : Noise, Optics, optional
        Default: the paper's noise (λ = 12, μ = 20) and probe.
    shape : int or (rows, cols)
        Image size in px.
    defect_fraction : float
        Fraction of cells with the defect.
    seed : int
    """
    label = _check_label(label)
    size = (int(shape), int(shape)) if np.isscalar(shape) else (int(shape[0]), int(shape[1]))
    lat = build_lattice(material, size, pixel_size)
    labels = np.zeros(len(lat.ij), dtype=np.int64)
    if label:
        weights = np.zeros(N_CLASSES - 1)
        weights[label - 1] = 1.0
        labels = place_defects(len(labels), defect_fraction, weights, rng=seed)
        inside = np.flatnonzero(inside_boxes(lat.box, size))
        if len(inside) and not np.any(labels[inside] == label):  # show at least one
            centres = (lat.box[inside, :2] + lat.box[inside, 2:]) / 2.0
            labels[inside[np.argmin(np.linalg.norm(centres - np.array(size[::-1]) / 2.0, axis=1))]] = label
    return simulate(material, size, pixel_size=pixel_size, labels=labels, optics=optics, noise=noise, seed=seed)


def reference_cell(
    material: str,
    label: int,
    pixel_size: float,
    noise: Noise | None = None,
    optics: Optics | None = None,
    n_cells: int = 5,
    seed: int = 0,
) -> tuple[SimulatedImage, np.ndarray, np.ndarray, np.ndarray]:
    """A perfect lattice of about ``n_cells`` x ``n_cells`` cells with one cell of class
    ``label`` at the centre.

    Returns
    -------
    sim : SimulatedImage
    box : (4,) array
        The centre cell's box, px.
    x_site, m_site : (2,) arrays
        Its X and M columns, px.
    """
    label = _check_label(label)
    if n_cells < 3:
        raise ValueError(f"n_cells must be at least 3, got {n_cells}")
    mat = get_material(material)
    size = max(32, int(np.ceil(n_cells * mat.a / pixel_size)) + 1)
    shape = (size, size)
    lat = build_lattice(mat, shape, pixel_size)
    inside = inside_boxes(lat.box, shape)
    centres = (lat.box[:, :2] + lat.box[:, 2:]) / 2.0
    dist = np.linalg.norm(centres - (size - 1) / 2.0, axis=1)
    dist[~inside] = np.inf
    c = int(np.argmin(dist))
    labels = np.zeros(len(lat.ij), dtype=np.int64)
    labels[c] = label
    sim = simulate(mat, shape, pixel_size=pixel_size, labels=labels, optics=optics, noise=noise, seed=seed)
    return sim, lat.box[c].copy(), lat.x_site[c].copy(), lat.m_site[c].copy()


def mx_profile(
    image: np.ndarray,
    x_site: np.ndarray,
    m_site: np.ndarray,
    pixel_size: float,
    extend: float = 0.6,
    width_a: float = 0.3,
    levels: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Intensity along the line from the M column through the X column of a cell.

    Parameters
    ----------
    image : (rows, cols) array
    x_site, m_site : (2,) arrays
        X and M column positions (x, y) in px.
    pixel_size : float
        Å/px.
    extend : float
        The line runs ``extend`` M–X distances beyond each column.
    width_a : float
        Width (Å) across the line over which the intensity is averaged.
    levels : (low, high), optional
        Intensities mapped to 0 and 1 (default: no scaling).

    Returns
    -------
    distance : (K,) array
        Å from the M column (the X column is at the M–X distance, a/√3).
    profile : (K,) array
    """
    img = np.asarray(image, dtype=float)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    if not pixel_size > 0:
        raise ValueError(f"pixel_size must be positive (Å/px), got {pixel_size}")
    m = np.asarray(m_site, float).reshape(2)
    x = np.asarray(x_site, float).reshape(2)
    v = x - m
    length = float(np.hypot(*v))
    if length == 0:
        raise ValueError("the X and M columns coincide; no M–X direction")
    u = v / length
    perp = np.array([-u[1], u[0]])
    t = np.arange(-extend * length, (1 + extend) * length + 1e-9, 0.5)
    half = max(0, int(round(width_a / 2.0 / pixel_size)))
    offsets = np.arange(-half, half + 1, dtype=float)
    pts = m + t[:, None, None] * u + offsets[None, :, None] * perp  # (K, W, 2) as (x, y)
    vals = ndi.map_coordinates(img, [pts[..., 1].ravel(), pts[..., 0].ravel()], order=1, mode="nearest")
    prof = vals.reshape(len(t), len(offsets)).mean(axis=1)
    if levels is not None:
        lo, hi = levels
        prof = (prof - lo) / (hi - lo if hi > lo else 1.0)
    return t * pixel_size, prof


def _levels(image: np.ndarray, box: np.ndarray, pad_px: float) -> tuple[float, float]:
    """1st and 99.5th percentiles of the box grown by ``pad_px`` (the cell's neighbourhood)."""
    b = np.asarray(box, float) + np.array([-pad_px, -pad_px, pad_px, pad_px])
    region = crop_box(image, b)
    lo, hi = np.percentile(region, [1.0, 99.5])
    return float(lo), float(hi)


@dataclass
class CellComparison:
    """A cell of an image next to a simulated cell of a class (see :func:`compare_cell`).

    Crops are at the image's sampling; profiles are scaled so that 0 and 1 are the 1st
    and 99.5th intensity percentiles of each cell's neighbourhood (one lattice constant
    around it), which makes a real and a simulated image comparable.
    """

    label: int
    class_name: str
    crop: np.ndarray
    reference_crop: np.ndarray
    distance_A: np.ndarray
    profile: np.ndarray
    reference_distance_A: np.ndarray
    reference_profile: np.ndarray
    mx_distance_A: float


def compare_cell(
    image: np.ndarray,
    box: np.ndarray,
    x_site: np.ndarray,
    m_site: np.ndarray,
    pixel_size: float,
    label: int,
    material: str = "MoTe2",
    noise: Noise | None = None,
    optics: Optics | None = None,
    seed: int = 0,
) -> CellComparison:
    """Crop and M–X profile of a cell next to those of a simulated cell of class ``label``.

    Parameters
    ----------
    image : (rows, cols) array
    box : (4,) array
        The cell's box, px.
    x_site, m_site : (2,) arrays
        Its X and M columns, px.
    pixel_size : float
        Å/px (the simulation uses the same sampling).
    label : int
        Class to simulate (e.g. the predicted one).
    material : str
    noise, optics : Noise, Optics, optional
        Imaging conditions of the simulation.
    seed : int
    """
    mat = get_material(material)
    label = _check_label(label)
    a_px = mat.a / pixel_size
    sim, rbox, rx, rm = reference_cell(mat.name, label, pixel_size, noise, optics, seed=seed)
    d, prof = mx_profile(image, x_site, m_site, pixel_size, levels=_levels(image, box, a_px))
    rd, rprof = mx_profile(sim.image, rx, rm, pixel_size, levels=_levels(sim.image, rbox, a_px))
    return CellComparison(
        label=label,
        class_name=mat.class_names[label],
        crop=crop_box(image, box),
        reference_crop=crop_box(sim.image, rbox),
        distance_A=d,
        profile=prof,
        reference_distance_A=rd,
        reference_profile=rprof,
        mx_distance_A=mat.bond_length,
    )
