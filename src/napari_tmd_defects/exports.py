"""What an exported frame holds besides the crystal's HAADF signal: burned-in
annotations (scale bars, labels, marks), insets and inverted contrast.

Frames exported from acquisition software or cut from figure panels often carry a scale
bar or a label, drawn at the brightest grey level or in colour. Read as crystal, a bar's
pixels become very bright "substituent" columns, and its flat maximum bends the frame's
noise and level fits everywhere. An annotation is

* a solid flat region at the image's exact maximum that is wider than any column can be
  (its core at least one lattice constant across; a clipped column top is a fraction of
  that, and a chain of clipped tops has no core), or
* such a region at the image's exact minimum (a black bar or label) that is thin (a bar:
  its largest inscribed disk a small share of its length) and inside the frame: zero
  padding, a black canvas and a clipped vacuum hole are thick or reach the border and are
  vacuum (:func:`~.vacuum.flat_vacuum`), and the clipped hollows of a background-subtracted
  export have no core, or
* coloured pixels in an otherwise grey RGB frame (a colour-mapped frame, mostly coloured,
  is not taken for one).

:func:`~.pipeline.locate_cells` fills the annotation's pixels with noise
(drawn from its other pixels: no column is found there) and leaves the cells on it out.

A figure panel may also hold an *inset*: a pasted FFT, a zoomed view or another panel,
in a corner of the frame. Read as crystal, its spots or its magnified columns became a
small "domain" of invented vacancies with boundary cells around it (an FFT pasted into a
real WSe2 frame: three domains, 31 boundary cells, 6 defect calls on the inset). An
inset is an axis-aligned rectangle in a corner that does not show the frame's lattice
(:func:`inset_mask`): a vacuum hole or a grain in a corner has no two straight,
axis-aligned edges meeting at a right angle. :func:`~.pipeline.locate_cells` fills it
with the crystal continued from elsewhere in the frame (:func:`fill_inset`: the cells
next to it are read as next to crystal, not next to a hole), reads no column on it and
leaves its cells out. ``benchmarks/insets.py`` measures both.

HAADF (Z-contrast) shows the columns as sharp bright peaks on a darker background, so the
frame's band-passed intensity is skewed towards bright values (+0.3 to +1.3 on the 23 real
frames of ``docs/reports/real_frames.md``, column *polarity*); a bright-field or ABF image,
or an inverted export, shows them dark and the skew negative: :func:`column_polarity`.

A Fourier (Bragg) filtered frame keeps only discs around the lattice's reflections: every
column becomes the lattice's average, vacancies and dopants are painted over, and the
analysis reads a perfect crystal. Raw frames hold power between the reflections (shot and
scan noise, defects, contamination); a filtered one almost none:
:func:`between_reflections_power`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .geometry import LatticeEstimate, block_mean, dilate_disk
from .parallel import thread_map

__all__ = ["annotation_mask", "between_reflections_power", "colour_mask", "column_polarity", "exclusion_zone",
           "false_colour_note", "fill_annotations", "fill_inset", "flat_maximum_mask", "flat_minimum_mask", "inset_mask",
           "rgb_to_grey"]

#: Smallest extent of a flat region's core at the image's maximum taken for an annotation,
#: in lattice constants ...
MIN_FLAT_EXTENT_A = 1.0
#: ... the core being the region less a rim this many px wide.
SOLID_CORE_PX = 2
#: A flat region at the image's minimum is a bar or a label (not vacuum) when its largest
#: inscribed disk's radius is at most this share of its length (a bar 6 px high and 60 px
#: long: 0.05; a round hole: 0.5).
MAX_DARK_THICKNESS = 0.2
#: A pixel is coloured when its channels spread by more than this fraction of the grey range.
COLOUR_SPREAD = 0.08
#: A frame with more coloured pixels than this is colour-mapped, not annotated.
MAX_COLOUR_FRACTION = 0.2
#: A false-coloured (colour-mapped) frame is read back through the first of these maps
#: (matplotlib's names) whose colours it follows: the perceptual maps, whose brightness
#: follows the intensity, and the rainbow ones, whose brightness does not (jet's yellow is
#: brighter than its red: a luminance reading puts the columns' cores below their flanks).
COLOUR_MAPS = ("viridis", "plasma", "inferno", "magma", "cividis", "turbo", "jet", "rainbow", "nipy_spectral",
               "hot", "afmhot", "gist_heat", "copper", "gnuplot", "gnuplot2", "CMRmap", "cubehelix")
#: A colour map is taken where the frame's colours lie this close to it (0-1 RGB, mean over
#: the pixels: an exact export ~0.002, JPEG's colour errors up to ~0.09) and at most
#: :data:`MAX_COLOURMAP_RIVAL` times as far as from the closest map that would read the
#: frame otherwise (positions correlated below :data:`RIVAL_CORRELATION`: hot and
#: gist_heat read alike and are no rivals).
MAX_COLOURMAP_DISTANCE = 0.1
#: :func:`rgb_to_grey`'s name for a frame coloured all over whose colours follow none of
#: :data:`COLOUR_MAPS` closely enough (a rainbow map through JPEG's colour errors, an
#: unlisted map): read by its luminance, which a rainbow map's brightness does not follow.
UNKNOWN_COLOUR_MAP = "unknown"
MAX_COLOURMAP_RIVAL = 0.7
RIVAL_CORRELATION = 0.9
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
#: A tile with at least this fraction of its pixels at the frame's ceiling or floor is
#: clipped symmetrically before its skew is taken (:func:`column_polarity`).
_POLARITY_CLIPPED = 0.01
#: A frame whose power between its lattice's reflections (:func:`between_reflections_power`)
#: is below this reads as Fourier filtered: real frames measured 5.9e-5 or more, simulated
#: frames with defects (noisy, smoothed, JPEG) 8.8e-5 or more, defect-free ones at a dose of
#: 200 counts per column 5.4e-6 or more; Fourier-filtered ones mostly below 1e-6 (cropped,
#: 8-bit or JPEG after filtering: up to ~3e-6) unless the discs kept nearly touch
#: (docs/reports/fourier_filtered.md).
FOURIER_FILTERED_POWER = 3e-6
#: :func:`between_reflections_power` reads the central square of this many px of the frame,
#: block-averaged to at least this many px per lattice constant.
_REFLECTIONS_FFT_PX = 256
_REFLECTIONS_PX_PER_A = 12.0


def _flat_regions(top: np.ndarray, a_px: float) -> tuple[np.ndarray, list[int]] | None:
    """``(labels, big)``: the 8-connected regions of ``top`` (pixels at one extreme grey
    level) and the labels of those whose core (the region less a :data:`SOLID_CORE_PX` px
    rim) is at least :data:`MIN_FLAT_EXTENT_A` lattice constants (``a_px``, px) across;
    None when there are none."""
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
    return labels, [int(v) for v in np.unique(labels[np.isin(cores, big)])]


def flat_maximum_mask(image: np.ndarray, a_px: float) -> np.ndarray | None:
    """Pixels of the solid flat regions at the image's exact maximum whose core (the region
    less a :data:`SOLID_CORE_PX` px rim) is at least :data:`MIN_FLAT_EXTENT_A` lattice
    constants (``a_px``, px) across; None when there are none. The core keeps a bar or a
    label block whole but breaks the chains of clipped column tops of a saturated export
    (tops joined by thin necks) into tops, each far smaller than a lattice constant."""
    found = _flat_regions(image == image.max(), a_px)
    return None if found is None else np.isin(found[0], found[1])


def flat_minimum_mask(image: np.ndarray, a_px: float) -> np.ndarray | None:
    """Pixels of the thin solid flat regions at the image's exact minimum (a black scale bar
    or label): cores as in :func:`flat_maximum_mask`, the region inside the frame (not
    touching its border) and its largest inscribed disk's radius at most
    :data:`MAX_DARK_THICKNESS` of its length; None when there are none. A flat dark region
    that is thick or reaches the border (zero padding, a black canvas, a hole clipped to
    black) is vacuum, found by :func:`~.vacuum.flat_vacuum`."""
    found = _flat_regions(image == image.min(), a_px)
    if found is None:
        return None
    labels, big = found
    keep = []
    slices = ndi.find_objects(labels)
    h, w = labels.shape
    for v in big:
        sl = slices[v - 1]
        if sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == h or sl[1].stop == w:
            continue
        region = labels[sl] == v
        length = max(region.shape)
        if ndi.distance_transform_edt(np.pad(region, 1)).max() <= MAX_DARK_THICKNESS * length:
            keep.append(v)
    return np.isin(labels, keep) if keep else None


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luminance weights


def _coloured_pixels(rgb: np.ndarray) -> np.ndarray | None:
    """Pixels of an RGB(A) frame whose channels spread by more than :data:`COLOUR_SPREAD`
    of the frame's grey range; None for a flat frame."""
    c = np.asarray(rgb)[..., :3]
    span = float(c.max()) - float(c.min())
    if span <= 0:
        return None
    return c.max(axis=-1).astype(np.float32) - c.min(axis=-1) > COLOUR_SPREAD * span


def colour_mask(rgb: np.ndarray) -> np.ndarray | None:
    """Coloured pixels of a mostly grey RGB(A) frame ``(rows, cols, 3 or 4)``; None for a
    grey or a colour-mapped frame."""
    mask = _coloured_pixels(rgb)
    if mask is None or not mask.any() or mask.mean() > MAX_COLOUR_FRACTION:
        return None
    return mask


def rgb_to_grey(rgb: np.ndarray) -> tuple[np.ndarray, str | None]:
    """A grey frame ``(rows, cols)`` float32 of an RGB(A) one ``(rows, cols, 3 or 4)``, and
    the colour map it was read back through (None: a grey frame, or one with coloured marks).
    A frame coloured all over (more than :data:`MAX_COLOUR_FRACTION` of its pixels) whose
    colours follow one of :data:`COLOUR_MAPS` becomes each colour's position on that map
    (0-255); any other frame its luminance (ITU-R 601 weights, in the frame's own units),
    one coloured all over named :data:`UNKNOWN_COLOUR_MAP`."""
    rgb = np.asarray(rgb)[..., :3]
    coloured = _coloured_pixels(rgb)
    if coloured is None or coloured.mean() <= MAX_COLOUR_FRACTION:
        return rgb.astype(np.float32) @ _LUMA, None
    import matplotlib
    from scipy.spatial import cKDTree

    # the frame's distinct colours as 8-bit codes (a map's export has a few hundred)
    c = rgb
    if c.dtype != np.uint8:
        lo = float(c.min())
        c = np.round(255.0 * (c.astype(np.float32) - lo) / (float(c.max()) - lo)).astype(np.uint8)
    code = (c[..., 0].astype(np.int32) << 16) | (c[..., 1].astype(np.int32) << 8) | c[..., 2].astype(np.int32)
    codes, inverse, counts = np.unique(code.ravel(), return_inverse=True, return_counts=True)
    colours = np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=-1) / 255.0
    weights = counts / counts.sum()
    fits = []
    for name in COLOUR_MAPS:
        lut = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
        dist, idx = cKDTree(lut).query(colours)
        fits.append((float(np.sum(weights * dist)), name, idx, lut))
    fits.sort(key=lambda f: f[0])
    mean, name, idx, lut = fits[0]

    def alike(other: np.ndarray) -> bool:
        """Another map's positions of the frame's colours follow this one's."""
        a, b = idx - np.sum(weights * idx), other - np.sum(weights * other)
        den = np.sqrt(np.sum(weights * a * a) * np.sum(weights * b * b))
        return den > 0 and np.sum(weights * a * b) / den >= RIVAL_CORRELATION

    rival = next((f[0] for f in fits[1:] if not alike(f[2])), np.inf)
    if mean > MAX_COLOURMAP_DISTANCE or mean > MAX_COLOURMAP_RIVAL * rival:
        return rgb.astype(np.float32) @ _LUMA, UNKNOWN_COLOUR_MAP
    luma = lut @ _LUMA
    if np.all(np.diff(luma) > 0):
        # the map's brightness rises with the position: read the position off the
        # luminance (JPEG keeps luminance at full resolution, colour at half)
        return np.interp(c.astype(np.float32) @ _LUMA / 255.0, luma, np.arange(256.0)).astype(np.float32), name
    return idx.astype(np.float32)[inverse].reshape(code.shape), name


def false_colour_note(cmap: str) -> str:
    """What :func:`rgb_to_grey` did with a false-coloured frame, for a warning (after the
    frame's name)."""
    if cmap == UNKNOWN_COLOUR_MAP:
        return ("is coloured all over but follows no known colour map closely (JPEG's colour errors?): read by its "
                "brightness, which a rainbow map (jet, turbo) does not follow: export it in grey levels")
    return f"is false-coloured: read back to intensities through the '{cmap}' colour map"


def annotation_mask(image: np.ndarray, a_px: float, rgb: np.ndarray | None = None) -> np.ndarray | None:
    """The burned-in annotations of a grey ``image`` (the RGB original as ``rgb`` where
    there is one); None when there are none or when they would cover more than
    :data:`MAX_ANNOTATION_FRACTION` of the frame."""
    masks = [m for m in (flat_maximum_mask(image, a_px), flat_minimum_mask(image, a_px),
                         colour_mask(rgb) if rgb is not None else None) if m is not None]
    if not masks:
        return None
    mask = np.logical_or.reduce(masks)
    if mask.mean() > MAX_ANNOTATION_FRACTION:
        return None
    return mask


#: :func:`inset_mask` reads the lattice amplitude on the frame block-averaged to about this
#: many px per lattice constant ...
INSET_PX_PER_A = 6.0
#: ... less its local mean over this many lattice constants (Gaussian σ) ...
INSET_HIGH_PASS_A = 0.5
#: ... and takes for an inset's interior what stays below this fraction of the crystal's
#: level (above the vacuum's 0.3, :data:`~.vacuum.VACUUM_THRESHOLD`: a magnified view of
#: the lattice keeps 0.2-0.4 of it through its harmonics; the region's shape, not its
#: level, tells an inset from the crystal) ...
INSET_LEVEL = 0.45
#: ... in a region that holds a corner of the frame, spans at least this many lattice
#: constants each way, fills at least this share of its bounding box ...
MIN_INSET_A = 3.0
MIN_INSET_FILL = 0.8
#: ... covers at most this share of the frame (a larger one is the frame's subject) ...
MAX_INSET_FRACTION = 0.25
#: ... and whose two inner edges are straight and axis-aligned: their positions along the
#: edge spread by at most this many lattice constants (10th to 90th percentile).
MAX_INSET_EDGE_SPREAD_A = 0.8
#: The mask reaches this far (lattice constants) beyond the low region: the amplitude's
#: window (0.8 a) puts the region's edge about 0.6 a inside the inset's.
INSET_GROW_A = 1.0


#: :func:`_corner_is_low` reads patches this many lattice constants wide ...
SCREEN_PATCH_A = 8.0
#: ... and calls a corner low below this fraction of their level (a margin over
#: :data:`INSET_LEVEL`: a patch's level is rougher than the frame's).
SCREEN_LEVEL = 1.5 * INSET_LEVEL


def _high_pass(small: np.ndarray, a_s: float) -> np.ndarray:
    """``small`` (a block-averaged frame, ``a_s`` px per lattice constant) less its local
    mean over :data:`INSET_HIGH_PASS_A` lattice constants, as a new array: a bright or dark
    inset is then no step against the frame, nor against the frame's border, that the
    lattice's windows would read as lattice (the reflections pass: their periods are
    0.5-0.87 a)."""
    return small - ndi.gaussian_filter(small, INSET_HIGH_PASS_A * a_s, mode="nearest")


def _corner_is_low(img: np.ndarray, f: int, lattice: LatticeEstimate) -> bool:
    """Whether any corner of ``img`` shows the lattice (``lattice``: in px of ``img``
    block-averaged by ``f``) weakly enough to hold an inset. The four corner patches of
    :data:`SCREEN_PATCH_A` lattice constants, side by side as in the frame (its middle cut
    out), are read at once; a corner is low where the amplitude's median over 1-2.5 lattice
    constants from it (far from the seams) is below :data:`SCREEN_LEVEL` of the patches'
    90th percentile. A small share of the cost of the whole frame's amplitude, which only
    frames with such a corner need."""
    from .vacuum import lattice_amplitude

    h, w = img.shape
    a_s = float(lattice.a_px)
    p = min(int(np.ceil(SCREEN_PATCH_A * a_s)) * f, h // 2, w // 2)  # input px
    # each corner block-averaged from a view of the frame (no copy of its full-size pixels)
    blocks = [[block_mean(img[r, c], f, dtype=np.float32) for c in (slice(0, p), slice(w - p, w))]
              for r in (slice(0, p), slice(h - p, h))]
    amp = lattice_amplitude(_high_pass(np.block(blocks), a_s), lattice)
    ref = float(np.percentile(amp, 90))
    if not ref > 0:
        return False
    lo, hi = int(round(a_s)), max(int(round(2.5 * a_s)), int(round(a_s)) + 1)
    for view in (amp, amp[::-1], amp[:, ::-1], amp[::-1, ::-1]):
        if float(np.median(view[lo:hi, lo:hi])) < SCREEN_LEVEL * ref:
            return True
    return False


def inset_mask(image: np.ndarray, lattice: LatticeEstimate) -> np.ndarray | None:
    """The insets of ``image`` (pasted panels: an FFT, a zoomed view) as a mask, or None.

    Once a corner looks low (:func:`_corner_is_low`), the local amplitude of the frame's
    lattice (:func:`~.vacuum.lattice_amplitude`) is read on a copy block-averaged to
    :data:`INSET_PX_PER_A` px per lattice constant, less its local mean
    (:data:`INSET_HIGH_PASS_A`). A region below :data:`INSET_LEVEL` of the crystal's level
    (90th percentile) is an inset when it
    holds a corner of the frame, reaches neither opposite border, is at least
    :data:`MIN_INSET_A` lattice constants each way and at most :data:`MAX_INSET_FRACTION` of
    the frame, fills :data:`MIN_INSET_FILL` of its bounding box and ends at two straight,
    axis-aligned edges (:data:`MAX_INSET_EDGE_SPREAD_A`). The mask is that box, grown by
    :data:`INSET_GROW_A` lattice constants.
    """
    from .vacuum import lattice_amplitude

    img = np.asarray(image)
    a = float(lattice.a_px)
    f = max(1, int(a // INSET_PX_PER_A))
    a_s = a / f
    hs, ws = img.shape[0] // f, img.shape[1] // f
    if min(hs, ws) < 2 * MIN_INSET_A * a_s:
        return None
    scaled = LatticeEstimate(a_px=a_s, rotation_deg=lattice.rotation_deg, a1=np.asarray(lattice.a1, float) / f,
                             a2=np.asarray(lattice.a2, float) / f, strength=lattice.strength)
    if not _corner_is_low(img, f, scaled):
        return None
    # (block_mean with f == 1 returns the frame itself: the high pass makes a new array)
    small = _high_pass(block_mean(img, f, dtype=np.float32), a_s)
    hs, ws = small.shape
    amp = lattice_amplitude(small, scaled)
    ref = float(np.percentile(amp, 90))
    if not ref > 0:
        return None
    lab, _ = ndi.label(amp < INSET_LEVEL * ref)
    # (the amplitude rises within about a lattice constant of the frame's border, where its
    # window holds fewer pixels: a region "holds" a corner when it comes that close to both
    # of its borders)
    reach = int(np.ceil(1.5 * a_s))
    boxes = []
    for flip_y in (False, True):
        for flip_x in (False, True):
            view = lab[::-1 if flip_y else 1, ::-1 if flip_x else 1]  # the corner at (0, 0)
            for k in np.unique(view[:reach, :reach]):
                if k == 0:
                    continue
                region = view == k
                rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
                y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
                bh, bw = y1 - y0, x1 - x0
                if (y0 >= reach or x0 >= reach or y1 > hs - reach or x1 > ws - reach
                        or min(bh, bw) < MIN_INSET_A * a_s or y1 * x1 > MAX_INSET_FRACTION * hs * ws
                        or region[y0:y1, x0:x1].sum() < MIN_INSET_FILL * bh * bw):
                    continue
                # the inner edges: the region's last column in each row and its last row in
                # each column, away from the rounded inner corner and the frame's border
                box = region[y0:y1, x0:x1]
                keep_r = (np.arange(bh) >= a_s) & (np.arange(bh) < bh - a_s)
                keep_c = (np.arange(bw) >= a_s) & (np.arange(bw) < bw - a_s)
                if keep_r.sum() < 2 or keep_c.sum() < 2:
                    continue
                last_col = bw - 1 - np.argmax(box[:, ::-1], axis=1)
                last_row = bh - 1 - np.argmax(box[::-1, :], axis=0)
                spread = max(float(np.subtract(*np.percentile(last_col[keep_r], [90, 10]))),
                             float(np.subtract(*np.percentile(last_row[keep_c], [90, 10]))))
                if spread > MAX_INSET_EDGE_SPREAD_A * a_s:
                    continue
                # the box in input px, from the corner, grown
                grow = INSET_GROW_A * a
                boxes.append((flip_y, flip_x, int(round(min(img.shape[0], y1 * f + grow))),
                              int(round(min(img.shape[1], x1 * f + grow)))))
    if not boxes:
        return None
    mask = np.zeros(img.shape, bool)
    h, w = img.shape
    for flip_y, flip_x, ye, xe in boxes:
        ys = slice(h - ye, h) if flip_y else slice(0, ye)
        xs = slice(w - xe, w) if flip_x else slice(0, xe)
        mask[ys, xs] = True
    return mask


def fill_inset(image: np.ndarray, mask: np.ndarray, lattice: LatticeEstimate) -> np.ndarray:
    """A float32 copy of ``image`` with each inset of ``mask`` (rectangles in corners)
    filled with the crystal from elsewhere in the frame, moved by whole lattice vectors (the
    shortest such move, rounded to whole px, that keeps the source in the frame and off
    every inset): the lattice runs on across the inset's edges, so the cells next to it are
    read as next to crystal, not next to a hole or noise. Where no such move fits, the
    frame's other pixels drawn at random (:func:`fill_annotations`)."""
    img = np.asarray(image)
    h, w = img.shape
    out = np.array(img, dtype=np.float32, copy=True)
    basis = np.stack([np.asarray(lattice.a1, float), np.asarray(lattice.a2, float)], axis=1)  # columns, (x, y)
    a = float(lattice.a_px)
    near = np.stack(np.meshgrid(np.arange(-3, 4), np.arange(-3, 4), indexing="ij"), -1).reshape(-1, 2)
    labels, _ = ndi.label(mask)
    for k, (rows, cols) in enumerate(ndi.find_objects(labels), start=1):
        y0, y1, x0, x1 = rows.start, rows.stop, cols.start, cols.stop
        # whole lattice vectors near the moves just off the rectangle: across, down, both
        # (either way), so their number does not grow with the frame
        want = [(sx * (x1 - x0 + a), sy * (y1 - y0 + a)) for sx in (-1, 0, 1) for sy in (-1, 0, 1) if sx or sy]
        n0 = np.rint(np.linalg.solve(basis, np.array(want, float).T).T).astype(np.int64)
        cand = (n0[:, None, :] + near[None]).reshape(-1, 2)
        t = cand @ basis.T  # (x, y) moves, px
        dx, dy = np.rint(t[:, 0]).astype(int), np.rint(t[:, 1]).astype(int)
        order = np.argsort(dx**2 + dy**2, kind="stable")
        dx, dy = dx[order], dy[order]
        inside = (y0 + dy >= 0) & (y1 + dy <= h) & (x0 + dx >= 0) & (x1 + dx <= w)
        clear = (y1 + dy <= y0) | (y0 + dy >= y1) | (x1 + dx <= x0) | (x0 + dx >= x1)
        box = labels[rows, cols] == k
        for j in np.flatnonzero(inside & clear):
            src = (slice(y0 + dy[j], y1 + dy[j]), slice(x0 + dx[j], x1 + dx[j]))
            if not mask[src].any():  # off the other insets too
                out[rows, cols][box] = img[src][box]
                break
        else:
            out = fill_annotations(out, labels == k, float(lattice.a_px))[0]
    return out


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
    of a frame that is mostly crystal. A tile whose pixels sit at the frame's ceiling or
    floor (a clipped export: flat-topped columns leave only the hollows' dark tail) is clipped
    as far at its other end first, so clipping alone does not turn the skew negative. nan for
    a frame smaller than one tile."""
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
    lo, hi = float(np.min(image)), float(np.max(image))

    def skewness(tile: tuple[int, int]) -> float:
        r, c = tile
        r0, c0 = max(r - m, 0), max(c - m, 0)
        r1, c1 = min(r + t + m, h), min(c + t + m, w)
        block = np.asarray(image[r0 * f:r1 * f, c0 * f:c1 * f], np.float32)
        q = max(np.mean(block >= hi), np.mean(block <= lo))
        if q >= _POLARITY_CLIPPED:  # both tails cut as far as the clipped one
            block = np.clip(block, *np.quantile(block, [q, 1.0 - q]))
        b = block_mean(block, f) if f > 1 else block
        g = ndi.gaussian_filter(b, 0.08 * ap) - ndi.gaussian_filter(b, ap)
        g = g[r - r0:r - r0 + t, c - c0:c - c0 + t].ravel().astype(np.float64)
        sd = g.std()
        return float(np.mean(((g - g.mean()) / sd) ** 3)) if sd > 0 else 0.0

    return float(np.median(thread_map(skewness, tiles)))  # the tiles on the CPU threads


def between_reflections_power(image: np.ndarray, lattice: LatticeEstimate) -> float:
    """Power between the reflections of the frame's lattice over the power at its six
    first- or six second-order reflections, the stronger (Hann-windowed power spectrum of the central square of
    :data:`_REFLECTIONS_FFT_PX` px, block-averaged to ~:data:`_REFLECTIONS_PX_PER_A` px per
    lattice constant ``lattice.a_px``; scaled to that square's size and to full sampling):
    the median over the
    reciprocal plane at least 0.45 |g100| from every reflection (around the K points,
    inside 3 |g100| and 0.45 cycles/px). Raw frames: ~1e-5 to 1e-1; a Fourier (Bragg)
    filtered one, which keeps only discs around the reflections: below
    :data:`FOURIER_FILTERED_POWER`. nan for a frame too small to tell."""
    f = max(1, int(lattice.a_px // _REFLECTIONS_PX_PER_A))
    h, w = np.shape(image)[:2]
    n = min(_REFLECTIONS_FFT_PX, h // f, w // f)
    if n < 64:
        return float("nan")
    y0, x0 = (h - n * f) // 2, (w - n * f) // 2
    crop = block_mean(np.asarray(image[y0:y0 + n * f, x0:x0 + n * f]), f, dtype=np.float64)
    crop = (crop - crop.mean()) * np.outer(np.hanning(n), np.hanning(n))
    power = np.abs(np.fft.fftshift(np.fft.fft2(crop))) ** 2
    a = np.array([lattice.a1, lattice.a2], float) / f  # rows: a1, a2 (x, y) px of the crop
    b = np.linalg.inv(a).T  # rows: b1, b2, cycles/px (a_i . b_j = delta_ij)
    k = (np.arange(n) - n // 2) / n
    kx, ky = np.meshgrid(k, k)
    # k = u b1 + v b2 with u = k . a1, v = k . a2: the nearest reciprocal lattice point is
    # one of the four around (u, v)
    u, v = kx * a[0, 0] + ky * a[0, 1], kx * a[1, 0] + ky * a[1, 1]
    fu, fv = np.floor(u), np.floor(v)
    dist = np.full(u.shape, np.inf)
    for du in (0.0, 1.0):
        for dv in (0.0, 1.0):
            cu, cv = u - (fu + du), v - (fv + dv)
            dist = np.minimum(dist, np.hypot(cu * b[0, 0] + cv * b[1, 0], cu * b[0, 1] + cv * b[1, 1]))
    orders = np.array([(i, j) for i in (-2, -1, 0, 1, 2) for j in (-2, -1, 0, 1, 2) if (i, j) != (0, 0)], float)
    g = orders @ b
    g = g[np.argsort(np.hypot(g[:, 0], g[:, 1]))]
    first, second = g[:6], g[6:12]  # the {100} and {110} reflections
    g100 = float(np.median(np.hypot(first[:, 0], first[:, 1])))
    between = (dist >= 0.45 * g100) & (np.hypot(kx, ky) < min(0.45, 3.0 * g100))
    between &= (np.abs(kx) > 1.5 / n) & (np.abs(ky) > 1.5 / n)  # not the frame edges' streaks
    if between.sum() < 50:
        return float("nan")

    def ring(spots: np.ndarray) -> float:
        """Median power of a ring's six reflections (largest within 2 px of each)."""
        out = []
        for gx, gy in spots:
            iy, ix = int(round(n // 2 + gy * n)), int(round(n // 2 + gx * n))
            if 2 <= iy < n - 2 and 2 <= ix < n - 2:
                out.append(power[iy - 2:iy + 3, ix - 2:ix + 3].max())
        return float(np.median(out)) if len(out) == 6 else 0.0

    top = max(ring(first), ring(second))  # HAADF's {110} ring can be the stronger
    if not top > 0:
        return float("nan")
    # a reflection's power grows with the square's area squared, white noise's with its
    # area, and averaging f x f blocks divides the noise's by f^2: scaled to a square of
    # _REFLECTIONS_FFT_PX at full sampling (shot noise reads the same at any pixel size)
    return float(np.median(power[between]) / top * (n / _REFLECTIONS_FFT_PX) ** 2 * f * f)
