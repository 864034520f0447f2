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
from scipy import fft as sfft
from scipy import ndimage as ndi

from .geometry import LatticeEstimate, block_mean, flat_pixels, nearest_pixel
from .parallel import cpu_threads, thread_map

__all__ = ["distance_to_mask", "domain_lattices", "flat_vacuum", "grow_into_empty_cells", "lattice_amplitude",
           "vacuum_mask", "VACUUM_THRESHOLD"]

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


def _gaussian_kernel(sigma: float) -> tuple[np.ndarray, int]:
    """The 1-D Gaussian weights :func:`scipy.ndimage.gaussian_filter` uses (truncated at 4 σ)."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return phi / phi.sum(), radius


def _kernel_spectrum(k: np.ndarray, radius: int, freq: float, n: int) -> np.ndarray:
    """DFT (length ``n``) of the kernel ``k(d) exp(2 pi i freq d)``, d = -radius … radius, wrapped."""
    d = np.arange(-radius, radius + 1)
    buf = np.zeros(n, complex)
    buf[d % n] = k * np.exp(2j * np.pi * freq * d)
    return np.fft.fft(buf)


#: Rows of the reduced grid demodulated at once (bounds the memory of large frames).
_STRIP_ELEMENTS = 1 << 19


def _amplitude_grid(image: np.ndarray, lattice: LatticeEstimate, sigma_px: float | None = None
                    ) -> tuple[np.ndarray, int]:
    """Lattice amplitude on the block-averaged grid (float32) and its block size f (px).

    Demodulating each reflection ``g`` and averaging it in a Gaussian window is, up to a
    phase, a convolution with the Gaussian modulated by ``g`` (a Gabor kernel): done by
    FFT in strips of rows (each with the kernel's reach on both sides), one forward
    transform per strip for all six reflections. The result equals the direct
    demodulation with :func:`scipy.ndimage.gaussian_filter` (``mode="constant"``) up to
    rounding.
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    a_px = float(lattice.a_px)
    sigma = 0.8 * a_px if sigma_px is None else float(sigma_px)
    f = max(1, int(a_px // 10))
    small = block_mean(img, f, dtype=np.float64)  # float64 sums, no float64 copy of the image
    small -= small.mean()
    sh, sw = small.shape
    k, r = _gaussian_kernel(sigma / f)
    # the window's weight inside the image (normalises the average at the border)
    wy = ndi.correlate1d(np.ones(sh), k, mode="constant")
    wx = ndi.correlate1d(np.ones(sw), k, mode="constant")
    gs = _reciprocal_vectors(lattice) * f  # cycles per grid px
    nx = sfft.next_fast_len(sw + r)
    kx = [_kernel_spectrum(k, r, g[0], nx) for g in gs]
    rows = max(16, min(sh, _STRIP_ELEMENTS // nx))
    amp = np.empty((sh, sw), np.float32)
    ky_cache: dict[int, list[np.ndarray]] = {}
    for y0 in range(0, sh, rows):
        y1 = min(sh, y0 + rows)
        ys, ye = max(0, y0 - r), min(sh, y1 + r)
        ny = sfft.next_fast_len(ye - ys + r)  # no wrap-around into the rows used
        if ny not in ky_cache:
            ky_cache[ny] = [_kernel_spectrum(k, r, g[1], ny) for g in gs]
        spec = sfft.fft2(small[ys:ye], s=(ny, nx), workers=cpu_threads())

        def power(kk: tuple[np.ndarray, np.ndarray], spec=spec, y0=y0, y1=y1, ys=ys) -> np.ndarray:
            # one strip-size complex array per reflection in flight (the product and its
            # transform in place): two threads hold less than one serial product did
            prod = spec * kk[0][:, None]
            prod *= kk[1][None, :]
            out = sfft.ifft2(prod, overwrite_x=True)[y0 - ys : y1 - ys, :sw]
            return out.real**2 + out.imag**2

        acc = np.zeros((y1 - y0, sw))
        pairs = list(zip(ky_cache[ny], kx))
        at_once = cpu_threads()
        for i in range(0, len(pairs), at_once):  # as many reflections at once as threads, added in order
            for p in thread_map(power, pairs[i:i + at_once]):
                acc += p
        acc /= (wy[y0:y1, None] * wx[None, :]) ** 2
        amp[y0:y1] = np.sqrt(acc, out=acc)
    return amp, f


def _grid_weights(n_grid: int, f: int, n: int) -> np.ndarray:
    """Pixels of the full image each grid row (or column) stands for: f, the last one the rest."""
    wt = np.full(n_grid, f, np.int64)
    wt[-1] = n - (n_grid - 1) * f
    return wt


def _to_image(grid: np.ndarray, f: int, shape: tuple[int, int]) -> np.ndarray:
    """Grid values back on the image: each block repeated, the last row and column extended."""
    if f == 1 and grid.shape == tuple(shape):
        return grid
    rows = np.minimum(np.arange(shape[0]) // f, grid.shape[0] - 1)
    cols = np.minimum(np.arange(shape[1]) // f, grid.shape[1] - 1)
    return grid[rows][:, cols]


def _weighted_kth(vals: np.ndarray, wts: np.ndarray, k: int) -> float:
    """The ``k``-th smallest value (0-based) when ``vals[i]`` is counted ``wts[i]`` times."""
    n = len(vals)
    lo, hi = 0, n - 1
    mean_w = float(wts.sum()) / n
    j = int(k / mean_w)
    for it in range(64):
        j = min(max(j, lo), hi) if it < 8 else (lo + hi) // 2
        v = np.partition(vals, j)[j]
        below = int(wts[vals < v].sum())
        upto = below + int(wts[vals == v].sum())
        if below <= k < upto:
            return float(v)
        if k < below:
            hi = j - 1
            j -= max(1, int((below - k) / mean_w))
        else:
            lo = j + 1
            j += max(1, int((k - upto + 1) / mean_w))
    order = np.argsort(vals, kind="stable")  # not reached in practice
    return float(vals[order[np.searchsorted(np.cumsum(wts[order]), k, side="right")]])


def _weighted_percentile(vals: np.ndarray, wts: np.ndarray, q: float) -> float:
    """``np.percentile`` (linear) of the values counted ``wts`` times each, without expanding them."""
    n = int(wts.sum())
    idx = (n - 1) * q / 100.0
    k0 = int(math.floor(idx))
    t = idx - k0
    a = _weighted_kth(vals, wts, k0)
    b = _weighted_kth(vals, wts, min(k0 + 1, n - 1)) if t > 0 else a
    return a + (b - a) * t if t < 0.5 else b - (b - a) * (1.0 - t)


def lattice_amplitude(image: np.ndarray, lattice: LatticeEstimate, sigma_px: float | None = None) -> np.ndarray:
    """Local amplitude of the lattice reflections of ``image`` (same shape, grey levels).

    Each reflection ``g`` is demodulated (``image * exp(-2 pi i g.r)``) and averaged in a
    Gaussian window of ``sigma_px`` (default 0.8 a); the amplitudes of the six
    reflections are added in quadrature. The average is normalised at the image border
    (no drop there). Finely sampled images are first block-averaged to about 10 px per
    lattice constant (the amplitude varies on the scale of ``a``, not of a pixel).
    """
    amp, f = _amplitude_grid(image, lattice, sigma_px)
    return _to_image(amp, f, np.shape(image))


def vacuum_mask(image: np.ndarray, lattice: LatticeEstimate | list[LatticeEstimate],
                threshold: float = VACUUM_THRESHOLD, min_cells: float = MIN_VACUUM_CELLS) -> np.ndarray:
    """Boolean mask (image shape) of the vacuum regions: True where there is no crystal.

    ``lattice`` may be one lattice or several (grains of other orientations,
    :func:`domain_lattices`): the amplitude is the largest of theirs, normalised by each
    one's crystal level. The crystal's lattice amplitude is taken as the 90th percentile
    over the image (so the crystal must cover at least a tenth of it); vacuum is where the
    amplitude is below ``threshold`` times that, in connected regions of at least
    ``min_cells`` unit-cell areas (sqrt(3)/2 a² each).

    The amplitude is constant over each block of the reduced grid, so the percentile,
    the threshold and the regions are taken on that grid, each block counted with the
    pixels it stands for: the same mask as at full resolution, without full-size copies.
    """
    shape = np.shape(image)
    lattices = [lattice] if isinstance(lattice, LatticeEstimate) else [lat for lat in lattice if lat is not None]
    if not lattices:
        return np.zeros(shape, bool)
    grids = [_amplitude_grid(image, lat) for lat in lattices]
    f = grids[0][1]
    if any(g[1] != f for g in grids):  # lattices reduced differently: compare them per pixel
        grids = [(_to_image(amp, fk, shape), 1) for amp, fk in grids]
        f = 1
    wy = _grid_weights(grids[0][0].shape[0], f, shape[0])
    wx = _grid_weights(grids[0][0].shape[1], f, shape[1])
    # a block stands for at most (2 f - 1)² px: the smallest exact type
    wdt = np.uint16 if (2 * f) ** 2 < 1 << 16 else np.int64
    wts = (wy[:, None] * wx[None, :]).astype(wdt).ravel()
    amps = [amp for amp, _ in grids]
    del grids
    rel = None
    for i, amp in enumerate(amps):
        ref = _weighted_percentile(amp.ravel(), wts, 90.0)
        if not np.isfinite(ref) or ref <= 0:
            continue
        amp /= ref  # in place: each grid is read once
        rel = amp if rel is None else np.maximum(rel, amp, out=rel)
        amps[i] = None
    del wts, amps
    if rel is None:
        return np.zeros(shape, bool)
    low = rel < threshold
    del rel
    if not low.any():
        return np.zeros(shape, bool)
    lab, n = ndi.label(low)
    del low
    # the pixels of each region, in bands of grid rows (integer sums: exact in any order)
    sizes = np.zeros(n + 1)
    band = max(1, (1 << 20) // max(1, lab.shape[1]))
    for r0 in range(0, lab.shape[0], band):
        r1 = min(lab.shape[0], r0 + band)
        sizes += np.bincount(lab[r0:r1].ravel(), weights=(wy[r0:r1, None] * wx[None, :]).ravel().astype(float),
                             minlength=n + 1)
    a_px = float(np.mean([lat.a_px for lat in lattices]))
    cell_area = math.sqrt(3) / 2 * a_px**2
    keep = sizes >= min_cells * cell_area
    keep[0] = False
    return _to_image(keep[lab], f, shape)


#: A flat dark region is vacuum where disks of this radius (lattice constants) fit in it:
#: a background-subtracted export's hollows clipped at zero link up between the columns
#: (even where the chalcogen columns are clipped too, the largest empty disk between metal
#: columns is ~0.3 a), padding, a canvas or a filled border holds far larger ones.
FLAT_VACUUM_RADIUS_A = 0.5


def flat_vacuum(image: np.ndarray, a_px: float, radius_a: float = FLAT_VACUUM_RADIUS_A) -> np.ndarray | None:
    """Boolean mask (image shape) of the flat dark regions of ``image`` (every pixel equal to
    its four neighbours, below the median of the rest) that disks of ``radius_a`` lattice
    constants fit in, with at least :data:`MIN_VACUUM_CELLS` unit cells of area: zero
    padding, a black canvas, a filled border. None where there are none.

    :func:`vacuum_mask` finds a hole by its missing lattice; next to a sharp, high-contrast
    step into padding the step itself carries power at the lattice frequencies and the
    amplitude stays up over much of the pad. Worked on blocks of about a third of the
    radius (a block is flat where all its pixels are): the opening and the regions on the
    block grid, the flat test at full resolution, in bands of rows; the blocks around a
    region add their pixels at its values (its edge to the pixel).
    """
    img = np.asarray(image)
    h, w = img.shape
    r_px = radius_a * a_px
    if min(h, w) < 3 or r_px < 1:
        return None
    b = max(1, int(r_px // 3))
    # a disk of the radius holds several points of the block grid, all alike: none alike, no region
    s = img[::b, ::b]
    if not np.any((s[1:, 1:] == s[:-1, 1:]) & (s[1:, 1:] == s[1:, :-1])):
        return None
    hb, wb = -(-h // b), -(-w // b)
    blocks = np.ones((hb, wb), bool)
    band = max(b, ((1 << 20) // w) // b * b)
    for r0 in range(0, h, band):
        r1 = min(h, r0 + band)
        eq = flat_pixels(img, r0, r1)
        pad_r, pad_c = -(-(r1 - r0) // b) * b - (r1 - r0), wb * b - w
        if pad_r or pad_c:
            eq = np.pad(eq, ((0, pad_r), (0, pad_c)), mode="edge")
        blocks[r0 // b : r0 // b + eq.shape[0] // b] &= eq.reshape(eq.shape[0] // b, b, wb, b).all(axis=(1, 3))
    if not blocks.any():
        return None
    film = s[:hb, :wb][~blocks]
    if not film.size:
        return None
    blocks &= s[:hb, :wb] < np.median(film)
    rb = r_px / b
    k = int(math.ceil(rb))
    yy, xx = np.mgrid[-k : k + 1, -k : k + 1]
    opened = ndi.binary_opening(blocks, structure=yy**2 + xx**2 <= rb**2)
    if not opened.any():
        return None
    lab, n = ndi.label(opened)
    sizes = np.bincount(lab.ravel(), minlength=n + 1) * float(b * b)
    keep = sizes >= MIN_VACUUM_CELLS * math.sqrt(3) / 2 * a_px**2
    keep[0] = False
    if not keep.any():
        return None
    kept = keep[lab]
    # the blocks that straddle the region's edge: their pixels at the region's values
    values = np.unique(s[:hb, :wb][kept])
    grown = ndi.binary_dilation(kept, structure=np.ones((3, 3), bool))
    out = np.repeat(np.repeat(grown, b, axis=0), b, axis=1)[:h, :w]
    if len(values) <= 8:
        same = np.zeros((h, w), bool)
        for v in values:
            same |= img == v
        out &= same
    else:
        out = np.repeat(np.repeat(kept, b, axis=0), b, axis=1)[:h, :w]
    return out


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
    row, col = nearest_pixel(centres, mask.shape)
    frontier = list(np.flatnonzero(empty & (distance_to_mask(mask, row, col) <= 1.2 * a_px)))
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


#: Mask pixels eroded at once by :func:`distance_to_mask` (bounds its memory).
_EDGE_BAND_ELEMENTS = 1 << 22


def distance_to_mask(mask: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Euclidean distance (px) from pixels ``(row, col)`` to the nearest True pixel of ``mask``
    (0 inside it), as :func:`scipy.ndimage.distance_transform_edt` of ``~mask`` gives it,
    without a full-size distance map: the nearest True pixel of an outside one always lies
    on the mask's edge."""
    from scipy.spatial import cKDTree

    out = np.zeros(len(row))
    outside = ~mask[row, col]
    if not outside.any():
        return out
    # the edge in bands of rows (each eroded with a row of its neighbours on both sides)
    h = mask.shape[0]
    band = max(1, _EDGE_BAND_ELEMENTS // max(1, mask.shape[1]))
    eys, exs = [], []
    for r0 in range(0, h, band):
        r1 = min(h, r0 + band)
        a0, a1 = max(0, r0 - 1), min(h, r1 + 1)
        part = mask[a0:a1]
        edge = part & ~ndi.binary_erosion(part, border_value=1)
        if a0 < r0:  # a band's outer rows only stand in for its neighbours' (rows of the image
            edge[0] = False  # border are eroded by the border value, as the whole mask is)
        if a1 > r1:
            edge[-1] = False
        y, x = np.nonzero(edge)
        eys.append(y + a0)
        exs.append(x)
    ey, ex = np.concatenate(eys), np.concatenate(exs)
    d, _ = cKDTree(np.stack([ey, ex], axis=1)).query(np.stack([row[outside], col[outside]], axis=1))
    out[outside] = d
    return out
