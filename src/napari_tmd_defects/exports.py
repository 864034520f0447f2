"""What an exported frame holds besides the crystal's HAADF signal: burned-in
annotations (scale bars, labels, marks) and inverted contrast.

Frames exported from acquisition software or cut from figure panels often carry a scale
bar or a label, drawn at the brightest grey level or in colour. Read as crystal, a bar's
pixels become very bright "substituent" columns, and its flat maximum bends the frame's
noise and level fits everywhere. An annotation is

* a solid flat region at the image's exact maximum that is wider than any column can be
  (its core at least one lattice constant across; a clipped column top is a fraction of
  that, and a chain of clipped tops has no core), or
* coloured pixels in an otherwise grey RGB frame (a colour-mapped frame, mostly coloured,
  is not taken for one).

:func:`~.pipeline.locate_cells` fills the annotation's pixels with noise
(drawn from its other pixels: no column is found there) and leaves the cells on it out.

HAADF (Z-contrast) shows the columns as sharp bright peaks on a darker background, so the
frame's band-passed intensity is skewed towards bright values (+0.3 to +1.3 on the 23 real
frames of ``docs/reports/real_frames.md``, column *polarity*); a bright-field or ABF image,
or an inverted export, shows them dark and the skew negative: :func:`column_polarity`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .geometry import block_mean, dilate_disk
from .parallel import thread_map

__all__ = ["annotation_mask", "colour_mask", "column_polarity", "exclusion_zone", "fill_annotations",
           "flat_maximum_mask"]

#: Smallest extent of a flat region's core at the image's maximum taken for an annotation,
#: in lattice constants ...
MIN_FLAT_EXTENT_A = 1.0
#: ... the core being the region less a rim this many px wide.
SOLID_CORE_PX = 2
#: A pixel is coloured when its channels spread by more than this fraction of the grey range.
COLOUR_SPREAD = 0.08
#: A frame with more coloured pixels than this is colour-mapped, not annotated.
MAX_COLOUR_FRACTION = 0.2
#: Annotations covering more of the frame than this are not taken for annotations (a
#: heavily clipped export, say): nothing is masked.
MAX_ANNOTATION_FRACTION = 0.25
#: Cells within this many lattice constants of an annotation are left out.
EXCLUSION_MARGIN_A = 0.5
#: A frame whose columns' polarity (:func:`column_polarity`) is below this shows dark columns.
DARK_COLUMNS_POLARITY = -0.2
#: :func:`column_polarity` works on the frame block-averaged to about this many px per
#: lattice constant, in square tiles of :data:`_POLARITY_TILE_A` lattice constants.
_POLARITY_PX_PER_A = 12.0
_POLARITY_TILE_A = 4.0
#: ... and reads at most this many tiles (spread over the frame).
_POLARITY_TILES = 9


def flat_maximum_mask(image: np.ndarray, a_px: float) -> np.ndarray | None:
    """Pixels of the solid flat regions at the image's exact maximum whose core (the region
    less a :data:`SOLID_CORE_PX` px rim) is at least :data:`MIN_FLAT_EXTENT_A` lattice
    constants (``a_px``, px) across; None when there are none. The core keeps a bar or a
    label block whole but breaks the chains of clipped column tops of a saturated export
    (tops joined by thin necks) into tops, each far smaller than a lattice constant."""
    top = image == image.max()
    if top.sum() < 4:
        return None
    k = 2 * SOLID_CORE_PX + 1
    core = ndi.binary_erosion(top, structure=np.ones((k, k), bool))
    if not core.any():
        return None
    eight = np.ones((3, 3), bool)
    cores, _ = ndi.label(core, structure=eight)
    min_extent = max(MIN_FLAT_EXTENT_A * a_px, 4.0)
    big = [i + 1 for i, sl in enumerate(ndi.find_objects(cores))
           if max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) >= min_extent]
    if not big:
        return None
    labels, _ = ndi.label(top, structure=eight)
    return np.isin(labels, np.unique(labels[np.isin(cores, big)]))


def colour_mask(rgb: np.ndarray) -> np.ndarray | None:
    """Coloured pixels of a mostly grey RGB(A) frame ``(rows, cols, 3 or 4)``; None for a
    grey or a colour-mapped frame."""
    c = np.asarray(rgb)[..., :3].astype(np.float32)
    spread = c.max(axis=-1) - c.min(axis=-1)
    span = float(c.max() - c.min())
    if span <= 0:
        return None
    mask = spread > COLOUR_SPREAD * span
    if not mask.any() or mask.mean() > MAX_COLOUR_FRACTION:
        return None
    return mask


def annotation_mask(image: np.ndarray, a_px: float, rgb: np.ndarray | None = None) -> np.ndarray | None:
    """The burned-in annotations of a grey ``image`` (the RGB original as ``rgb`` where
    there is one); None when there are none or when they would cover more than
    :data:`MAX_ANNOTATION_FRACTION` of the frame."""
    masks = [m for m in (flat_maximum_mask(image, a_px), colour_mask(rgb) if rgb is not None else None)
             if m is not None]
    if not masks:
        return None
    mask = np.logical_or.reduce(masks)
    if mask.mean() > MAX_ANNOTATION_FRACTION:
        return None
    return mask


def exclusion_zone(mask: np.ndarray, a_px: float) -> np.ndarray:
    """The region whose cells are left out for pixels ``mask`` that do not show the
    crystal: the mask grown by :data:`EXCLUSION_MARGIN_A` lattice constants (``a_px``, px)."""
    return dilate_disk(mask, max(EXCLUSION_MARGIN_A * a_px, 2.0))


def fill_annotations(image: np.ndarray, mask: np.ndarray, a_px: float) -> tuple[np.ndarray, np.ndarray]:
    """``(filled, excluded)``: a float32 copy of ``image`` with the annotation (grown by two
    pixels, for its anti-aliased rim) replaced by the frame's other pixels drawn at random
    (fixed seed: no lattice there, and the frame's histogram, which the classifier's
    normalisation and the noise estimate read, stays as it was; a flat dark fill moved them
    enough to change hundreds of flagged cells on a noisy real frame), and the region whose
    cells are left out (:func:`exclusion_zone`)."""
    filled = np.array(image, dtype=np.float32, copy=True)
    rim = dilate_disk(mask, 2.0)
    n = int(rim.sum())
    if n and n < rim.size:
        filled[rim] = filled.ravel()[_draw_outside(rim, n, np.random.default_rng(0))]
    return filled, exclusion_zone(mask, a_px)


def _draw_outside(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` flat indices of pixels outside ``mask`` drawn uniformly with replacement, by
    rejection (memory of the draw only, not of a copy of every other pixel)."""
    flat = mask.ravel()
    out = np.empty(0, np.int64)
    while len(out) < n:
        k = rng.integers(0, flat.size, max(2 * (n - len(out)), 1024))
        out = np.concatenate([out, k[~flat[k]]])
    return out[:n]


def column_polarity(image: np.ndarray, a_px: float) -> float:
    """Median over tiles of the frame of the skewness of its band-passed intensity
    (Gaussian σ 0.08 a less Gaussian σ 1 a, ``a_px`` px per lattice constant): positive where
    the columns are bright peaks (HAADF), negative where they are dark (bright field, ABF,
    an inverted export). Vacuum and contamination tiles sit near 0 and do not move the median
    of a frame that is mostly crystal. nan for a frame smaller than one tile."""
    f = max(1, int(a_px // _POLARITY_PX_PER_A))
    ap = a_px / f
    t = max(int(_POLARITY_TILE_A * ap), 16)
    h, w = (n // f for n in image.shape)
    rows, cols = range(0, h - t + 1, t), range(0, w - t + 1, t)
    tiles = [(r, c) for r in rows for c in cols]
    if not tiles:
        return float("nan")
    if len(tiles) > _POLARITY_TILES:
        tiles = [tiles[i] for i in np.linspace(0, len(tiles) - 1, _POLARITY_TILES).astype(int)]
    m = int(np.ceil(2 * ap))  # each tile read with a margin for the wide Gaussian

    def skewness(tile: tuple[int, int]) -> float:
        r, c = tile
        r0, c0 = max(r - m, 0), max(c - m, 0)
        r1, c1 = min(r + t + m, h), min(c + t + m, w)
        block = np.asarray(image[r0 * f:r1 * f, c0 * f:c1 * f], np.float32)
        b = block_mean(block, f) if f > 1 else block
        g = ndi.gaussian_filter(b, 0.08 * ap) - ndi.gaussian_filter(b, ap)
        g = g[r - r0:r - r0 + t, c - c0:c - c0 + t].ravel().astype(np.float64)
        sd = g.std()
        return float(np.mean(((g - g.mean()) / sd) ** 3)) if sd > 0 else 0.0

    return float(np.median(thread_map(skewness, tiles)))  # the tiles on the CPU threads
