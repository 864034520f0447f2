"""HAADF-STEM images of 2H-MX2 monolayers with known point defects (ground truth).

The default model is incoherent Z-contrast imaging: each atomic column contributes
``sum(Z**n)`` (n ~ 1.6-1.8 for a 70-278 mrad annular detector) times the probe intensity
centred on it. The probe is computed from the condenser aperture (80 kV, 27 mrad by
default, optional defocus, spherical aberration and two-fold astigmatism), optionally
blurred by a Gaussian effective source. Noise follows the paper (2DIP-Net):

* Poisson: ``poisson_lambda`` is the expected number of electron counts at the
  noise-free peak of an isolated, brightest column (paper: 5-20).
* Gaussian: ``gaussian_mu`` is the standard deviation of additive Gaussian noise in grey
  levels, on a scale where that noise-free peak is 255 grey levels (paper: mu = 20).

Images are returned in those grey levels (float32; noise can make values negative or
above 255; ``quantize_8bit`` clips and rounds like an 8-bit export).

A multislice backend (abTEM, optional extra ``[multislice]``) lives in
:mod:`napari_tmd_defects.multislice`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from . import geometry as geo
from .materials import CHALCOGENS, CLASS_VACANCIES, METALS, N_CLASSES, Composition, Material, get_material, parse_composition

__all__ = [
    "Boundary",
    "Distortion",
    "GroundTruth",
    "Noise",
    "Optics",
    "SimulatedImage",
    "Vacuum",
    "apply_noise",
    "build_lattice",
    "electron_wavelength",
    "fourier_filter",
    "place_defects",
    "probe_fwhm",
    "reduce_rotation",
    "probe_kernel",
    "probe_profile",
    "render_columns",
    "simulate",
]

GT_FORMAT = "napari-tmd-defects.ground-truth"
GT_VERSION = 1
#: Radius (Å) of the probe kernel used for rendering; the Airy tails beyond it carry ~4 %.
KERNEL_RADIUS_A = 4.0
#: Finest sampling (Å) at which columns are placed before point-sampling the image.
_RENDER_DX_A = 0.06


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Optics:
    """Probe and detector settings (paper defaults).

    Attributes
    ----------
    voltage_kv : float
        Acceleration voltage, kV.
    convergence_mrad : float
        Condenser aperture semi-angle, mrad.
    detector_mrad : tuple of float
        HAADF inner and outer angles, mrad (sets the Z exponent in the fast model and
        is passed to the multislice backend).
    defocus_a, cs_mm : float
        Defocus (Å) and spherical aberration C3 (mm).
    astigmatism_a, astigmatism_deg : float
        Two-fold astigmatism magnitude (Å) and azimuth (degrees).
    source_fwhm_a : float
        FWHM (Å) of the Gaussian effective source / vibration blur.
    z_exponent : float
        n in the column intensity ``sum(Z**n)``.
    x1_fraction : float
        Weight of a chalcogen column with one atom left relative to a full column
        (0.5 incoherent; multislice channelling gives ~0.44 for MoTe2, docs/multislice.md).
    """

    voltage_kv: float = 80.0
    convergence_mrad: float = 27.0
    detector_mrad: tuple[float, float] = (70.0, 277.9)
    defocus_a: float = 0.0
    cs_mm: float = 0.0
    astigmatism_a: float = 0.0
    astigmatism_deg: float = 0.0
    source_fwhm_a: float = 0.0
    z_exponent: float = 1.7
    x1_fraction: float = 0.5


@dataclass(frozen=True)
class Noise:
    """Noise settings; see the module docstring for the units.

    Attributes
    ----------
    poisson_lambda : float or None
        Expected counts at the noise-free brightest-column peak; None: no shot noise.
    gaussian_mu : float
        Std of additive Gaussian noise in grey levels (peak = 255); 0: none.
    background : float
        Constant background added before shot noise, as a fraction of the peak.
    contamination : float
        Amplitude of a smooth, positive random background (amorphous contamination),
        as a fraction of the peak; 0: none.
    contamination_scale_a : float
        Correlation length of that background, Å.
    quantize_8bit : bool
        Clip to 0..255 and round, like an 8-bit export.
    jpeg_quality : int or None
        With ``quantize_8bit``: also JPEG-compress at this quality (1-95), like a JPEG export.
    subtract_background : bool
        Remove a smooth background (minimum over ~6 Å, smoothed) and stretch the rest so
        that its 99.5th percentile is 255, like a background-subtracted, auto-contrasted
        export (weak chalcogen columns end up near the floor).
    """

    poisson_lambda: float | None = 12.0
    gaussian_mu: float = 20.0
    background: float = 0.0
    contamination: float = 0.0
    contamination_scale_a: float = 8.0
    quantize_8bit: bool = False
    jpeg_quality: int | None = None
    subtract_background: bool = False


@dataclass(frozen=True)
class Distortion:
    """Scan distortions, in px.

    Attributes
    ----------
    row_jitter_px : float
        Std of a random horizontal offset of each scan row (flyback / line jitter).
    row_jitter_corr : float
        Correlation length of that offset, in rows.
    drift_px : tuple of float
        Linear drift ``(dx, dy)``: total displacement, px, accumulated from the first
        to the last row (shears and stretches the lattice).
    bend_px : float
        Amplitude (px) of a smooth non-linear displacement field (sample drift that
        changes speed during the frame, lattice bending): both components vary as sines
        of the row and column with a period of ``bend_period`` image sizes.
    flyback_px : float
        Horizontal displacement (px) at the left edge after the scan's flyback, decaying
        exponentially over ``flyback_width`` of the image width (the compressed left edge
        of real frames).
    """

    row_jitter_px: float = 0.0
    row_jitter_corr: float = 2.0
    drift_px: tuple[float, float] = (0.0, 0.0)
    bend_px: float = 0.0
    bend_period: float = 1.5
    flyback_px: float = 0.0
    flyback_width: float = 0.08


@dataclass(frozen=True)
class Vacuum:
    """A region of the field of view without crystal: a hole in the film or its edge.

    Attributes
    ----------
    kind : str
        ``"hole"`` (a round hole with a wavy rim, somewhere in the image) or ``"edge"``
        (the flake ends along a wavy line of random direction).
    fraction : float
        Share of the image area that is vacuum (0-0.8).
    roughness : float
        Waviness of the rim relative to the hole radius (or, for an edge, to a tenth of
        the image size), 0-0.5.

    Whole unit cells whose centre falls in the vacuum are left out (no atoms), so the
    rim is made of complete cells; they are not in the ground truth, and the analysed
    area shrinks accordingly.
    """

    kind: str = "hole"
    fraction: float = 0.15
    roughness: float = 0.15

    def __post_init__(self):
        if self.kind not in ("hole", "edge"):
            raise ValueError(f"Vacuum kind must be 'hole' or 'edge', got {self.kind!r}")
        if not 0.0 < self.fraction <= 0.8:
            raise ValueError(f"Vacuum fraction must lie in (0, 0.8], got {self.fraction}")
        if not 0.0 <= self.roughness <= 0.5:
            raise ValueError(f"Vacuum roughness must lie in [0, 0.5], got {self.roughness}")


BOUNDARY_KINDS = ("grain", "mirror", "inversion", "translation")
#: Cells whose centre lies this close to a boundary line (lattice constants) are boundary
#: cells in the ground truth (not scored as point defects).
BOUNDARY_HALF_WIDTH_A = 1.0


@dataclass(frozen=True)
class Boundary:
    """A boundary between two domains of the monolayer.

    The line runs at ``angle_deg`` (counter-clockwise on screen from +x) at a distance
    ``offset`` (fraction of half the smaller image side) from the image centre. The
    domain on its far side is the near domain's lattice transformed:

    * ``"grain"``: turned by ``misorientation_deg`` about a point of the line (a tilt
      grain boundary of any angle); columns of the second grain closer than half a bond
      to the first grain's are left out (dislocation cores);
    * ``"mirror"``: a mirror twin boundary (60° domains): the line follows the lattice's
      zigzag direction nearest to ``angle_deg`` and passes through a row of the
      ``variant`` columns (``"X"``: metal and hollow sites swap across it, like the 4|4P
      boundary; ``"M"``: chalcogen and hollow swap, like 4|4E);
    * ``"inversion"``: an inversion domain boundary along a zigzag direction: metal and
      chalcogen sublattices swap (a 180° turn about a hollow site on the line);
    * ``"translation"``: the lattice shifted by ``shift`` (fractions of a1, a2).
    """

    kind: str = "grain"
    angle_deg: float = 0.0
    offset: float = 0.0
    misorientation_deg: float = 15.0
    variant: str = "X"
    shift: tuple[float, float] = (0.5, 0.0)

    def __post_init__(self):
        if self.kind not in BOUNDARY_KINDS:
            raise ValueError(f"Boundary kind must be one of {BOUNDARY_KINDS}, got {self.kind!r}")
        if self.variant not in ("X", "M"):
            raise ValueError(f"Boundary variant must be 'X' or 'M', got {self.variant!r}")
        if not -0.95 <= self.offset <= 0.95:
            raise ValueError(f"Boundary offset must lie in [-0.95, 0.95], got {self.offset}")


def vacuum_region(vacuum: Vacuum, shape: tuple[int, int], rng: np.random.Generator):
    """A function ``inside(points) -> bool`` of the vacuum region for ``(..., 2)`` px points."""
    h, w = shape
    phases = rng.uniform(0, 2 * np.pi, 4)
    amps = rng.normal(0.0, 1.0, 4) * vacuum.roughness / np.arange(2, 6)
    if vacuum.kind == "hole":
        radius = math.sqrt(vacuum.fraction * h * w / math.pi)
        lo = np.minimum([0.15 * w, 0.15 * h], [radius, radius])
        centre = rng.uniform(lo, [w - 1 - lo[0], h - 1 - lo[1]])

        def inside(p):
            d = np.asarray(p, float) - centre
            theta = np.arctan2(d[..., 1], d[..., 0])
            rim = radius * (1.0 + sum(a * np.cos(k * theta + ph) for k, a, ph in zip(range(2, 6), amps, phases)))
            return np.hypot(d[..., 0], d[..., 1]) < rim

        return inside
    angle = rng.uniform(0, 2 * np.pi)
    normal = np.array([math.cos(angle), math.sin(angle)])
    along = np.array([-normal[1], normal[0]])
    yy, xx = np.mgrid[0:h:4, 0:w:4]
    dist = xx * normal[0] + yy * normal[1]
    cut = float(np.quantile(dist, 1.0 - vacuum.fraction))
    scale = 0.1 * max(h, w)
    length = max(h, w)

    def inside(p):
        p = np.asarray(p, float)
        t = (p @ along) / length
        wave = scale * sum(a * np.cos(2 * np.pi * k * t / 2 + ph) for k, a, ph in zip(range(2, 6), amps, phases))
        return p @ normal > cut + wave

    return inside


# --------------------------------------------------------------------------- optics
def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    v = voltage_kv * 1e3
    return 12.264259 / math.sqrt(v * (1.0 + 0.97847572e-6 * v))


@lru_cache(maxsize=32)
def _coherent_probe_table(
    voltage_kv: float,
    convergence_mrad: float,
    defocus_a: float,
    cs_mm: float,
    astigmatism_a: float,
    astigmatism_deg: float,
) -> tuple[np.ndarray, float]:
    """Probe intensity |psi(r)|² on a fine grid (0.04 Å, +-KERNEL_RADIUS_A), sum 1."""
    dx = 0.04
    n = 1024  # 41 Å field: the aperture spans ~26 reciprocal pixels at 27 mrad / 80 kV
    lam = electron_wavelength(voltage_kv)
    k = np.fft.fftfreq(n, dx)
    kx, ky = np.meshgrid(k, k, indexing="xy")
    k2 = kx**2 + ky**2
    k_ap = convergence_mrad * 1e-3 / lam
    # aperture with a one-pixel soft edge against aliasing
    dk = 1.0 / (n * dx)
    aperture = np.clip((k_ap - np.sqrt(k2)) / dk + 0.5, 0.0, 1.0)
    phi = np.arctan2(ky, kx)
    chi = (
        math.pi * lam * defocus_a * k2
        + 0.5 * math.pi * cs_mm * 1e7 * lam**3 * k2**2
        + math.pi * lam * astigmatism_a * k2 * np.cos(2.0 * (phi - math.radians(astigmatism_deg)))
    )
    psi = np.fft.ifft2(aperture * np.exp(-1j * chi))
    inten = np.fft.fftshift(np.abs(psi) ** 2)
    r = int(math.ceil(KERNEL_RADIUS_A / dx))
    c = n // 2
    table = inten[c - r : c + r + 1, c - r : c + r + 1]
    return table / table.sum(), dx


def probe_kernel(optics: Optics, dx_a: float) -> np.ndarray:
    """Probe intensity (incl. source blur) sampled every ``dx_a`` Å, centred, sum 1."""
    table, tdx = _coherent_probe_table(
        float(optics.voltage_kv),
        float(optics.convergence_mrad),
        round(float(optics.defocus_a), 1),
        round(float(optics.cs_mm), 4),
        round(float(optics.astigmatism_a), 1),
        round(float(optics.astigmatism_deg), 0),
    )
    r = int(math.ceil(KERNEL_RADIUS_A / dx_a))
    coords = np.arange(-r, r + 1) * dx_a / tdx + (table.shape[0] - 1) / 2.0
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    kern = ndi.map_coordinates(table, [yy, xx], order=3, mode="constant", cval=0.0)
    kern = np.clip(kern, 0.0, None)
    if optics.source_fwhm_a > 0:
        kern = ndi.gaussian_filter(kern, optics.source_fwhm_a / 2.3548 / dx_a, mode="constant")
    return kern / kern.sum()


def probe_profile(optics: Optics | None = None, dx_a: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Radial cut through the probe intensity: ``(r in Å, intensity normalised to 1)``."""
    kern = probe_kernel(optics or Optics(), dx_a)
    c = kern.shape[0] // 2
    prof = kern[c, c:]
    return np.arange(prof.size) * dx_a, prof / prof.max()


def probe_fwhm(optics: Optics | None = None) -> float:
    """Full width at half maximum of the probe intensity, Å (from the aperture)."""
    r, prof = probe_profile(optics, 0.005)
    i = int(np.argmax(prof < 0.5))
    # linear interpolation between samples i-1 and i
    r_half = r[i - 1] + (prof[i - 1] - 0.5) / (prof[i - 1] - prof[i]) * (r[i] - r[i - 1])
    return 2.0 * float(r_half)


# --------------------------------------------------------------------------- structure
@dataclass
class Lattice:
    """Columns of a monolayer in image pixels (before defects).

    ``ij`` (N, 2) cell indices; ``x_site``, ``m_site`` (N, 2) X and M column positions;
    ``box`` (N, 4) cell boxes; ``hex_center``, ``hex_box`` (N, 2), (N, 4): hexagon ``ij``.
    Includes cells up to a margin outside the image (see :func:`geometry.inside_boxes`).
    """

    a_px: float
    rotation_deg: float
    ij: np.ndarray
    x_site: np.ndarray
    m_site: np.ndarray
    box: np.ndarray
    hex_center: np.ndarray
    hex_box: np.ndarray
    #: X and M columns before ``transform`` (the scan distortion), px
    x_plain: np.ndarray | None = None
    m_plain: np.ndarray | None = None
    #: (N, 2) bool: the cell's X (M) column is another domain's, drawn by that cell
    shared: np.ndarray | None = None
    #: columns at boundaries that belong to no whole cell (px, as imaged; X or not)
    lone_xy: np.ndarray | None = None
    lone_is_x: np.ndarray | None = None

    def subset(self, keep: np.ndarray) -> "Lattice":
        """The cells where ``keep`` is True."""
        return Lattice(
            a_px=self.a_px, rotation_deg=self.rotation_deg, ij=self.ij[keep], x_site=self.x_site[keep],
            m_site=self.m_site[keep], box=self.box[keep], hex_center=self.hex_center[keep],
            hex_box=self.hex_box[keep],
            x_plain=None if self.x_plain is None else self.x_plain[keep],
            m_plain=None if self.m_plain is None else self.m_plain[keep],
            shared=None if self.shared is None else self.shared[keep],
        )


def _transformed_boxes(canonical_boxes: np.ndarray, transform) -> np.ndarray:
    return geo.bbox_of_points(transform(geo.box_corners(canonical_boxes)))


def build_lattice(
    material: str | Material,
    shape: tuple[int, int],
    pixel_size: float,
    rotation_deg: float = 0.0,
    origin: tuple[float, float] | None = None,
    margin_a: float = KERNEL_RADIUS_A + 1.0,
    transform=None,
) -> Lattice:
    """All unit cells covering an image of ``shape`` (rows, cols) at ``pixel_size`` Å/px.

    Cells are generated in the canonical orientation around the image centre, then
    rotated by ``rotation_deg`` about it and mapped by ``transform`` (a callable on
    ``(..., 2)`` px arrays, e.g. drift). ``origin`` is the X column of cell (0, 0) before
    rotation, px (default: a fixed offset from the image centre). Columns up to
    ``margin_a`` Å outside the image are kept so that border columns render correctly.
    """
    mat = get_material(material)
    h, w = int(shape[0]), int(shape[1])
    a_px = mat.a / pixel_size
    center = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    if origin is None:
        origin = center + np.array([0.123, 0.217]) * a_px
    origin = np.asarray(origin, dtype=float)
    a1, a2 = geo.lattice_vectors(a_px)
    # index range covering the image (any rotation) plus margin
    half = 0.5 * math.hypot(h, w) + margin_a / pixel_size + 2 * a_px
    nj = int(math.ceil(half / (a_px * geo.SQRT3 / 2))) + 1
    ni = int(math.ceil(half / a_px)) + nj // 2 + 2
    jj, ii = np.meshgrid(np.arange(-nj, nj + 1), np.arange(-ni, ni + 1), indexing="ij")
    ij = np.stack([ii.ravel(), jj.ravel()], axis=1)
    # shift indices so that they refer to the origin cell
    x0 = origin + ij[:, :1] * a1 + ij[:, 1:] * a2
    keep = np.all(np.abs(x0 - center) < half, axis=1)
    ij, x0 = ij[keep], x0[keep]
    m0 = x0 + geo.mx_offset(a_px)
    c0 = x0 + geo.hexagon_center_offset(a_px)
    cbox0 = geo.cell_box(x0, m0, a_px)
    hbox0 = geo.hexagon_box(c0, a_px)

    def tf(p):
        q = geo.rotate_points(p, rotation_deg, center)
        return transform(q) if transform is not None else q

    x_site, m_site, hcen = tf(x0), tf(m0), tf(c0)
    if rotation_deg or transform is not None:
        cbox = _transformed_boxes(cbox0, tf)
        hbox = _transformed_boxes(hbox0, tf)
    else:
        cbox, hbox = cbox0, hbox0

    mpx = margin_a / pixel_size
    near = np.all(
        (np.minimum(x_site, m_site) > -mpx) & (np.maximum(x_site, m_site) < np.array([w, h]) + mpx),
        axis=1,
    )
    xr, mr = geo.rotate_points(x0, rotation_deg, center), geo.rotate_points(m0, rotation_deg, center)
    return Lattice(
        a_px=a_px,
        rotation_deg=rotation_deg,
        ij=ij[near],
        x_site=x_site[near],
        m_site=m_site[near],
        box=cbox[near],
        hex_center=hcen[near],
        hex_box=hbox[near],
        x_plain=xr[near],
        m_plain=mr[near],
    )


def reduce_rotation(rotation_deg: float) -> float:
    """Lattice rotation reduced to (-60, 60] degrees (the honeycomb repeats every 120°)."""
    r = float(rotation_deg) % 120.0
    return r - 120.0 if r > 60.0 else r


def place_defects(
    n_cells: int,
    defect_fraction: float = 0.1,
    class_weights: Sequence[float] | None = None,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Random class ids (0 = Perfect) for ``n_cells`` cells.

    Each cell is defective with probability ``defect_fraction``; defective cells draw
    a class from 1..5 with relative ``class_weights`` (5 values, default uniform).
    """
    if not 0.0 <= defect_fraction <= 1.0:
        raise ValueError(f"defect_fraction must lie in [0, 1], got {defect_fraction}")
    rng = np.random.default_rng(rng)
    wts = np.ones(N_CLASSES - 1) if class_weights is None else np.asarray(class_weights, float)
    if wts.shape != (N_CLASSES - 1,) or np.any(wts < 0) or wts.sum() <= 0:
        raise ValueError("class_weights must be 5 non-negative numbers, not all zero")
    labels = np.zeros(n_cells, dtype=np.int64)
    defective = rng.random(n_cells) < defect_fraction
    labels[defective] = 1 + rng.choice(N_CLASSES - 1, size=int(defective.sum()), p=wts / wts.sum())
    return labels


def column_weights(
    material: str | Material, labels: np.ndarray, z_exponent: float = 1.7, x1_fraction: float = 0.5
):
    """Incoherent scattering weights ``sum(Z**n)`` of the X and M columns of each cell.

    A column with one chalcogen left weighs ``x1_fraction`` of a full one (0.5 in the
    incoherent model; channelling in multislice gives ~0.44 for MoTe2).
    """
    mat = get_material(material)
    vac = np.asarray(CLASS_VACANCIES)[np.asarray(labels)]
    full = 2 * float(mat.z_chalcogen) ** z_exponent
    x_w = np.choose(vac[:, 0], [full, x1_fraction * full, 0.0])
    m_w = (1 - vac[:, 1]) * float(mat.z_metal) ** z_exponent
    return x_w.astype(float), m_w.astype(float)


#: Share of the metal sites a dopant takes when the formula gives no fraction (``MoS2:Re``).
DEFAULT_DOPANT_FRACTION = 0.03


def place_species(
    composition: str | Composition, labels: np.ndarray, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers of what stands on every cell's sites: ``m_z (n,)`` of the metal and
    ``x_z (n, 2)`` of the two chalcogens of the X column (beam entrance, exit); 0 where the
    cell's class removes the atom.

    Metals are drawn with the alloy's site fractions (dopants take their share, default
    :data:`DEFAULT_DOPANT_FRACTION`), each chalcogen atom independently with the
    chalcogen fractions. A binary needs no random numbers (its frames stay as they were).

    Raises
    ------
    ValueError
        If a fraction is left open (``x``, ``(Mo,W)``): a simulation needs numbers.
    """
    comp = composition if isinstance(composition, Composition) else parse_composition(str(composition))
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    vac = np.asarray(CLASS_VACANCIES)[labels] if n else np.zeros((0, 2), np.int64)
    if any(f is None for _, f in comp.metals + comp.chalcogens):
        raise ValueError(f"{comp.formula}: give the alloy fractions to simulate it (e.g. Mo0.8W0.2Te2, "
                         "WS1.4Se0.6); open fractions are for analysis")
    dop = [(d, DEFAULT_DOPANT_FRACTION if f is None else float(f)) for d, f in comp.dopants]
    d_tot = sum(f for _, f in dop)
    if d_tot >= 1.0:
        raise ValueError(f"{comp.formula}: the dopants take {d_tot:.2f} of the metal sites")
    m_sp = [(m, f * (1.0 - d_tot)) for m, f in comp.metals] + dop
    if comp.is_binary:
        m_z = np.full(n, METALS[comp.metals[0][0]], np.int64)
        x_z = np.full((n, 2), CHALCOGENS[comp.chalcogens[0][0]], np.int64)
    else:
        rng = rng if rng is not None else np.random.default_rng(0)
        mz = np.array([METALS[m] for m, _ in m_sp])
        mp = np.array([f for _, f in m_sp], float)
        m_z = mz[rng.choice(len(mz), size=n, p=mp / mp.sum())]
        xz = np.array([CHALCOGENS[x] for x, _ in comp.chalcogens])
        xp = np.array([f for _, f in comp.chalcogens], float)
        x_z = xz[rng.choice(len(xz), size=(n, 2), p=xp / xp.sum())]
    m_z = np.where(vac[:, 1] == 1, 0, m_z)
    x_z = x_z.copy()
    one = vac[:, 0] == 1
    if one.any():  # one of the two chalcogens missing: the entrance or the exit one
        side = np.ones(int(one.sum()), np.int64) if comp.is_binary else \
            (rng.random(int(one.sum())) < 0.5).astype(np.int64)
        x_z[np.flatnonzero(one), side] = 0
    x_z[vac[:, 0] == 2] = 0
    return m_z, x_z


def species_weights(
    m_z: np.ndarray, x_z: np.ndarray, z_exponent: float = 1.7, x1_fraction: float = 0.5,
    voltage_kv: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Incoherent weights of X and M columns from their atoms (:func:`place_species`):
    ``sum Z**n``, a one-atom chalcogen column ``2 x1_fraction Z**n`` (channelling, as in
    :func:`column_weights`, which this equals for a binary).

    With ``voltage_kv`` a column of two different chalcogens also depends on their order
    along the beam (``x_z[:, 0]`` the entrance atom), as in multislice: ``· (1 ± δ)``, ``+``
    with the lighter atom on the entrance side (:func:`~.zcontrast.chalcogen_order_factor`).
    """
    zx = np.asarray(x_z, float) ** z_exponent * (np.asarray(x_z) > 0)
    k = (np.asarray(x_z) > 0).sum(axis=1)
    x_w = np.where(k == 1, 2.0 * x1_fraction * zx.sum(axis=1), zx.sum(axis=1))
    if voltage_kv is not None:
        from .zcontrast import chalcogen_order_factor

        xz = np.asarray(x_z, np.int64).reshape(-1, 2)
        x_w = x_w * chalcogen_order_factor(xz[:, 0], xz[:, 1], voltage_kv)
    m_w = np.asarray(m_z, float) ** z_exponent * (np.asarray(m_z) > 0)
    return x_w.astype(float), m_w.astype(float)


# --------------------------------------------------------------------------- imaging
def render_columns(
    xy: np.ndarray,
    weights: np.ndarray,
    shape: tuple[int, int],
    pixel_size: float,
    optics: Optics | None = None,
    reference_weight: float | None = None,
) -> np.ndarray:
    """Noise-free incoherent image of point columns.

    Parameters
    ----------
    xy : (N, 2) array
        Column positions in px (x = column, y = row).
    weights : (N,) array
        Scattering weight of each column (``sum(Z**n)``).
    shape : (rows, cols)
    pixel_size : float
        Å/px.
    optics : Optics
    reference_weight : float, optional
        The image is scaled so that an isolated column of this weight peaks at 1
        (default: the largest weight).

    Returns
    -------
    (rows, cols) float64 array.
    """
    optics = optics or Optics()
    h, w = int(shape[0]), int(shape[1])
    ovs = max(1, int(math.ceil(pixel_size / _RENDER_DX_A - 1e-9)))
    dxo = pixel_size / ovs
    kern = probe_kernel(optics, dxo)
    pad = kern.shape[0] // 2
    hh, ww = (h - 1) * ovs + 1 + 2 * pad, (w - 1) * ovs + 1 + 2 * pad
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    wts = np.asarray(weights, dtype=float).reshape(-1)
    u = xy[:, 0] * ovs + pad
    v = xy[:, 1] * ovs + pad
    ok = (u >= 0) & (u < ww - 1) & (v >= 0) & (v < hh - 1) & (wts != 0)
    u, v, wts = u[ok], v[ok], wts[ok]
    u0, v0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fu, fv = u - u0, v - v0
    canvas = np.zeros(hh * ww)
    for du, dv, f in (
        (0, 0, (1 - fu) * (1 - fv)),
        (1, 0, fu * (1 - fv)),
        (0, 1, (1 - fu) * fv),
        (1, 1, fu * fv),
    ):
        canvas += np.bincount((v0 + dv) * ww + (u0 + du), weights=wts * f, minlength=hh * ww)
    from scipy import signal  # here: scipy.signal costs ~35-60 MB of memory to import, analysing needs none

    img = signal.fftconvolve(canvas.reshape(hh, ww), kern, mode="same")
    img = img[pad : pad + (h - 1) * ovs + 1 : ovs, pad : pad + (w - 1) * ovs + 1 : ovs]
    ref = reference_weight if reference_weight is not None else (wts.max() if wts.size else 1.0)
    return img / (ref * kern.max())


def _smooth_field(shape, scale_px: float, rng: np.random.Generator) -> np.ndarray:
    f = ndi.gaussian_filter(rng.standard_normal(shape), max(scale_px, 1.0), mode="wrap")
    f -= f.min()
    return f / max(f.max(), 1e-12)


def apply_noise(
    clean: np.ndarray,
    noise: Noise | None = None,
    rng: np.random.Generator | int | None = None,
    pixel_size: float = 0.1,
) -> np.ndarray:
    """Add background, contamination, shot and read noise to a clean image (peak = 1).

    Returns grey levels (float32) on the scale where the clean peak is 255.
    """
    noise = noise or Noise()
    rng = np.random.default_rng(rng)
    sig = np.asarray(clean, dtype=float) + noise.background
    if noise.contamination > 0:
        sig = sig + noise.contamination * _smooth_field(
            sig.shape, noise.contamination_scale_a / pixel_size, rng
        )
    if noise.poisson_lambda is not None and noise.poisson_lambda > 0:
        lam = float(noise.poisson_lambda)
        sig = rng.poisson(np.clip(sig, 0.0, None) * lam) / lam
    out = 255.0 * sig
    if noise.gaussian_mu and noise.gaussian_mu > 0:
        out = out + rng.normal(0.0, float(noise.gaussian_mu), size=out.shape)
    if noise.subtract_background:
        win = max(3, int(round(6.0 / pixel_size)) | 1)
        bg = ndi.gaussian_filter(ndi.minimum_filter(ndi.gaussian_filter(out, 1.0), size=win), win / 2.0)
        out = np.clip(out - bg, 0.0, None)
        out = out * 255.0 / max(float(np.percentile(out, 99.5)), 1e-9)
    if noise.quantize_8bit:
        out = np.clip(np.round(out), 0, 255)
        if noise.jpeg_quality:
            out = _jpeg_round_trip(out, int(noise.jpeg_quality))
    return out.astype(np.float32)


def _jpeg_round_trip(img8: np.ndarray, quality: int) -> np.ndarray:
    import io as _io

    from PIL import Image

    buf = _io.BytesIO()
    Image.fromarray(img8.astype(np.uint8)).save(buf, format="JPEG", quality=int(np.clip(quality, 1, 95)))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("L"), dtype=float)


def fourier_filter(image: np.ndarray, a_px: float, radius: float = 0.15, spots: int = 36,
                   edge: float = 0.0) -> np.ndarray:
    """A frame as a Fourier (Bragg) mask filter leaves it, the processing many published
    frames went through: only discs of ``radius`` |g100| around its ``spots`` strongest
    reflections within three first orders (``a_px``: lattice constant, px) and around the
    origin are kept, their rims softened over ``edge`` |g100| (0: a hard mask). Every
    column becomes the lattice's average: vacancies and dopants are painted over. float32."""
    from scipy import ndimage as ndi

    img = np.asarray(image, dtype=float)
    h, w = img.shape
    f = np.fft.fftshift(np.fft.fft2(img - img.mean()))
    ky, kx = np.meshgrid((np.arange(h) - h // 2) / h, (np.arange(w) - w // 2) / w, indexing="ij")
    k, g = np.hypot(kx, ky), 2.0 / (np.sqrt(3.0) * float(a_px))
    p = np.abs(f) ** 2
    ys, xs = np.nonzero((p == ndi.maximum_filter(p, 7)) & (k > 0.3 * g) & (k < 3.15 * g))
    keep = np.argsort(p[ys, xs])[::-1][:spots]
    dist = k.copy()  # to the nearest kept disc's centre
    for y, x in zip(ys[keep], xs[keep]):
        np.minimum(dist, np.hypot(kx - kx[y, x], ky - ky[y, x]), out=dist)
    r = radius * g
    mask = (dist < r).astype(float) if edge <= 0 else np.clip((r + edge * g - dist) / (edge * g), 0.0, 1.0)
    return (np.real(np.fft.ifft2(np.fft.ifftshift(f * mask))) + img.mean()).astype(np.float32)


# --------------------------------------------------------------------------- ground truth
@dataclass
class GroundTruth:
    """Every unit cell and hexagon of a simulated image, in px (x = column, y = row).

    ``cell_*`` arrays have one row per unit cell whose box lies inside the image;
    ``hex_*`` one row per hexagon whose box lies inside the image.
    """

    material: str
    pixel_size: float
    shape: tuple[int, int]
    rotation_deg: float
    a_px: float
    cell_ij: np.ndarray
    cell_x_site: np.ndarray
    cell_m_site: np.ndarray
    cell_box: np.ndarray
    cell_label: np.ndarray
    hex_ij: np.ndarray
    hex_center: np.ndarray
    hex_box: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    #: domain of every cell (0 in a single crystal)
    cell_domain: np.ndarray | None = None
    #: cells within BOUNDARY_HALF_WIDTH_A of a domain boundary (not point defects)
    cell_boundary: np.ndarray | None = None
    #: domain boundaries as polylines ``(K, 2)`` (x, y px, as imaged)
    boundary_lines: list = field(default_factory=list)
    #: atomic number on every cell's metal site (0: vacant) and of the two chalcogens of its
    #: X column (beam entrance, exit; 0: missing); from the host and the class if not given
    cell_m_z: np.ndarray | None = None
    cell_x_z: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.cell_label)
        if self.cell_domain is None or len(self.cell_domain) != n:
            self.cell_domain = np.zeros(n, np.int64)
        if self.cell_boundary is None or len(self.cell_boundary) != n:
            self.cell_boundary = np.zeros(n, bool)
        if self.cell_m_z is None or len(self.cell_m_z) != n or self.cell_x_z is None or len(self.cell_x_z) != n:
            host = get_material(self.material)
            self.cell_m_z, self.cell_x_z = place_species(host.name, self.cell_label)
        self.cell_m_z = np.asarray(self.cell_m_z, np.int64)
        self.cell_x_z = np.asarray(self.cell_x_z, np.int64).reshape(-1, 2)

    @property
    def n_cells(self) -> int:
        return int(len(self.cell_label))

    @property
    def interior(self) -> np.ndarray:
        """Cells off the domain boundaries (where point defects are counted)."""
        return ~np.asarray(self.cell_boundary, bool)

    @property
    def boundary_length_px(self) -> float:
        """Total length of the boundary lines in the image, px."""
        return float(sum(np.linalg.norm(np.diff(np.asarray(ln, float), axis=0), axis=1).sum()
                         for ln in self.boundary_lines if len(ln) > 1))

    @property
    def class_names(self) -> tuple[str, ...]:
        return get_material(self.material).class_names

    def counts(self) -> dict[str, int]:
        """Number of cells per class name (off the domain boundaries)."""
        c = np.bincount(self.cell_label[self.interior], minlength=N_CLASSES)
        return {n: int(k) for n, k in zip(self.class_names, c)}

    @property
    def area_nm2(self) -> float:
        """Analysed area: cells off the boundaries times the unit-cell area, nm²."""
        return int(self.interior.sum()) * get_material(self.material).cell_area_nm2

    def concentrations_cm2(self) -> dict[str, float]:
        """Cells per class per cm² (1 nm² = 1e-14 cm²)."""
        area_cm2 = self.area_nm2 * 1e-14
        return {k: (v / area_cm2 if area_cm2 > 0 else 0.0) for k, v in self.counts().items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (see :func:`GroundTruth.from_dict`)."""

        def r(a):
            return np.round(np.asarray(a, dtype=float), 3).tolist()

        names = self.class_names
        return {
            "format": GT_FORMAT,
            "version": GT_VERSION,
            "coordinates": "pixels; x = column, y = row, pixel centres at integers; "
            "boxes are [x_min, y_min, x_max, y_max]",
            "material": self.material,
            "class_names": list(names),
            "pixel_size_A": float(self.pixel_size),
            "shape": [int(self.shape[0]), int(self.shape[1])],
            "rotation_deg": float(self.rotation_deg),
            "a_px": round(float(self.a_px), 4),
            "n_cells": self.n_cells,
            "area_nm2": round(self.area_nm2, 4),
            "counts": self.counts(),
            "concentration_cm2": {k: float(f"{v:.4g}") for k, v in self.concentrations_cm2().items()},
            "cells": {
                "ij": np.asarray(self.cell_ij, int).tolist(),
                "x_site": r(self.cell_x_site),
                "m_site": r(self.cell_m_site),
                "box": r(self.cell_box),
                "class_id": np.asarray(self.cell_label, int).tolist(),
                "class": [names[k] for k in self.cell_label],
            },
            "hexagons": {
                "ij": np.asarray(self.hex_ij, int).tolist(),
                "center": r(self.hex_center),
                "box": r(self.hex_box),
            },
            "domains": {
                "cell_domain": np.asarray(self.cell_domain, int).tolist(),
                "cell_boundary": np.asarray(self.cell_boundary, int).tolist(),
                "boundary_lines": [r(ln) for ln in self.boundary_lines],
            },
            "species": {
                "m_z": np.asarray(self.cell_m_z, int).tolist(),
                "x_z": np.asarray(self.cell_x_z, int).tolist(),
            },
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GroundTruth":
        """Inverse of :meth:`to_dict`; raises ValueError on another format."""
        if d.get("format") != GT_FORMAT:
            raise ValueError(f"not a {GT_FORMAT} document (format={d.get('format')!r})")
        c, hx = d["cells"], d["hexagons"]

        def arr(x, n, dtype=float):
            return np.asarray(x, dtype=dtype).reshape(-1, n) if n else np.asarray(x, dtype=dtype)

        return cls(
            material=d["material"],
            pixel_size=float(d["pixel_size_A"]),
            shape=(int(d["shape"][0]), int(d["shape"][1])),
            rotation_deg=float(d["rotation_deg"]),
            a_px=float(d["a_px"]),
            cell_ij=arr(c["ij"], 2, int),
            cell_x_site=arr(c["x_site"], 2),
            cell_m_site=arr(c["m_site"], 2),
            cell_box=arr(c["box"], 4),
            cell_label=arr(c["class_id"], 0, np.int64),
            hex_ij=arr(hx["ij"], 2, int),
            hex_center=arr(hx["center"], 2),
            hex_box=arr(hx["box"], 4),
            params=d.get("params", {}),
            cell_domain=arr(d["domains"]["cell_domain"], 0, np.int64) if "domains" in d else None,
            cell_boundary=arr(d["domains"]["cell_boundary"], 0, bool) if "domains" in d else None,
            boundary_lines=[arr(ln, 2) for ln in d["domains"]["boundary_lines"]] if "domains" in d else [],
            cell_m_z=arr(d["species"]["m_z"], 0, np.int64) if "species" in d else None,
            cell_x_z=arr(d["species"]["x_z"], 2, np.int64) if "species" in d else None,
        )

    def save(self, path: str | Path) -> Path:
        """Write the JSON document to ``path``."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), separators=(",", ":")))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "GroundTruth":
        """Read a JSON document written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class SimulatedImage:
    """A simulated image (grey levels, float32), its noise-free version and ground truth."""

    image: np.ndarray
    clean: np.ndarray
    truth: GroundTruth


def _drift_transform(shape, drift_px):
    h = shape[0]
    dx, dy = drift_px
    if not (dx or dy):
        return None
    sx, sy = dx / max(h - 1, 1), dy / max(h - 1, 1)

    def tf(p):
        p = np.asarray(p, dtype=float)
        return np.stack([p[..., 0] + sx * p[..., 1], p[..., 1] * (1.0 + sy)], axis=-1)

    return tf


def _scan_transform(shape, dist: Distortion, rng: np.random.Generator):
    """The scan's geometric distortion as ``tf((..., 2) px) -> (..., 2) px``, or None.

    Linear drift, then a smooth bending field and the flyback compression of the left
    edge (random phases drawn from ``rng`` only when those are on, so images without them
    do not change).
    """
    h, w = int(shape[0]), int(shape[1])
    drift = _drift_transform(shape, dist.drift_px)
    bend = None
    if dist.bend_px > 0:
        ph = rng.uniform(0.0, 2.0 * np.pi, 4)
        period = max(dist.bend_period, 0.1) * max(h, w)
        amp = float(dist.bend_px)

        def bend(p):
            x, y = p[..., 0], p[..., 1]
            k = 2.0 * np.pi / period
            dx = amp * 0.5 * (np.sin(k * y + ph[0]) + np.sin(k * x + ph[1]))
            dy = amp * 0.5 * (np.sin(k * x + ph[2]) + np.sin(k * y + ph[3]))
            return np.stack([x + dx, y + dy], axis=-1)

    fly = None
    if dist.flyback_px > 0:
        width = max(dist.flyback_width, 1e-3) * w

        def fly(p):
            x, y = p[..., 0], p[..., 1]
            return np.stack([x + dist.flyback_px * np.exp(-np.clip(x, 0.0, None) / width), y], axis=-1)

    steps = [f for f in (drift, bend, fly) if f is not None]
    if not steps:
        return None

    def tf(p):
        q = np.asarray(p, dtype=float)
        for f in steps:
            q = f(q)
        return q

    return tf


def _rotate_about(points: np.ndarray, angle_deg: float, centre: np.ndarray) -> np.ndarray:
    """Points turned by ``angle_deg`` counter-clockwise on screen about ``centre``."""
    return geo.rotate_points(points, angle_deg, tuple(np.asarray(centre, float)))


def _unit(angle_deg: float) -> np.ndarray:
    """Unit vector at a screen angle (counter-clockwise from +x; y points down)."""
    t = math.radians(angle_deg)
    return np.array([math.cos(t), -math.sin(t)])


@dataclass(frozen=True)
class _Line:
    """A boundary line in plain (undistorted) px: point, direction, normal; and the rigid
    motion (turn about ``pivot`` by ``turn_deg``, then ``shift``) that makes the far side's
    lattice from the near side's."""

    point: np.ndarray
    direction: np.ndarray
    normal: np.ndarray
    pivot: np.ndarray
    turn_deg: float
    shift: np.ndarray

    def side(self, p: np.ndarray) -> np.ndarray:
        return (np.asarray(p, float) - self.point) @ self.normal > 0

    def distance(self, p: np.ndarray) -> np.ndarray:
        return np.abs((np.asarray(p, float) - self.point) @ self.normal)

    def move(self, p: np.ndarray) -> np.ndarray:
        return _rotate_about(p, self.turn_deg, self.pivot) + self.shift


def _boundary_lines(boundaries, shape, a_px: float, rotation_deg: float, x0: np.ndarray) -> list[_Line]:
    """The lines and rigid motions of ``boundaries`` for a lattice with an X column at
    ``x0`` (plain px) turned by ``rotation_deg``."""
    h, w = shape
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    a1, a2 = geo.lattice_vectors(a_px, rotation_deg)
    basis = np.stack([a1, a2], axis=1)
    sub = {"X": np.zeros(2), "M": geo.rotate_points(geo.mx_offset(a_px), rotation_deg),
           "hollow": geo.rotate_points(geo.hexagon_center_offset(a_px), rotation_deg)}
    out = []
    for b in boundaries:
        angle = float(b.angle_deg)
        if b.kind in ("mirror", "inversion"):
            # the zigzag direction (a1 turned by a multiple of 60°) nearest to the request
            k = round((angle - rotation_deg) / 60.0)
            angle = rotation_deg + 60.0 * k
        u = _unit(angle)
        n = np.array([-u[1], u[0]])
        p0 = centre + b.offset * 0.5 * min(h, w) * n
        if b.kind in ("mirror", "inversion"):
            which = b.variant if b.kind == "mirror" else "hollow"
            f = np.linalg.solve(basis, p0 - x0 - sub[which])
            pivot = x0 + sub[which] + basis @ np.round(f)
            line = _Line(point=pivot, direction=u, normal=n, pivot=pivot,
                         turn_deg=60.0 if b.kind == "mirror" else 180.0, shift=np.zeros(2))
        elif b.kind == "grain":
            line = _Line(point=p0, direction=u, normal=n, pivot=p0, turn_deg=float(b.misorientation_deg),
                         shift=np.zeros(2))
        else:
            line = _Line(point=p0, direction=u, normal=n, pivot=p0, turn_deg=0.0,
                         shift=b.shift[0] * a1 + b.shift[1] * a2)
        out.append(line)
    return out


def _domain_lattice(mat: Material, shape, pixel_size: float, rotation_deg: float, origin, boundaries,
                    margin_a: float, transform) -> tuple[Lattice, np.ndarray, list[_Line]]:
    """Every unit cell of every domain: ``(lattice, domain id per cell, boundary lines)``.

    Domain ``d`` (bit ``i`` set: on the far side of line ``i``) holds the first domain's
    lattice moved by the motions of its lines; a cell belongs to the domain on whose side
    both its columns lie, and cells of later domains that come closer than half a bond to
    a column of an earlier one are left out (the boundary's cores). Deterministic.
    """
    base = build_lattice(mat, shape, pixel_size, rotation_deg, origin=origin, margin_a=margin_a,
                         transform=transform)
    if not boundaries:
        return base, np.zeros(len(base.ij), np.int64), []
    h, w = shape
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    a_px = base.a_px
    k0 = int(np.argmin(np.abs(base.ij).sum(axis=1)))
    x0 = base.x_plain[k0] - (base.ij[k0, 0] * geo.lattice_vectors(a_px, rotation_deg)[0]
                             + base.ij[k0, 1] * geo.lattice_vectors(a_px, rotation_deg)[1])
    lines = _boundary_lines(boundaries, shape, a_px, rotation_deg, x0)
    parts, doms, shared, lone = [], [], [], []
    kept_cols = np.zeros((0, 2))
    kept_x = np.zeros(0, bool)
    a_f = a_px / math.sqrt(3.0)
    min_sep = 0.55 * a_f
    for d in range(2 ** len(lines)):
        rot, xd = rotation_deg, x0.copy()
        for i, ln in enumerate(lines):
            if d >> i & 1:
                rot += ln.turn_deg
                xd = ln.move(xd[None])[0]
        rot_red = reduce_rotation(rot)
        org = geo.rotate_points(xd[None], -rot_red, tuple(centre))[0]
        lat = base if d == 0 else build_lattice(mat, shape, pixel_size, rot_red, origin=tuple(org),
                                                margin_a=margin_a, transform=transform)
        keep = np.ones(len(lat.ij), bool)
        centre_pts = 0.5 * (lat.x_plain + lat.m_plain)
        for i, ln in enumerate(lines):
            keep &= ln.side(centre_pts) == bool(d >> i & 1)
        sh = np.zeros((len(lat.ij), 2), bool)
        if d > 0 and len(kept_cols) and keep.any():
            from scipy.spatial import cKDTree

            tree = cKDTree(kept_cols)
            dx, kx = tree.query(lat.x_plain)
            dm, km = tree.query(lat.m_plain)
            # a column on top of an earlier domain's column of its own species is shared
            # (drawn once); any other column closer than half a bond leaves the cell out
            sh[:, 0] = (dx < 0.1 * a_f) & kept_x[np.minimum(kx, len(kept_x) - 1)]
            sh[:, 1] = (dm < 0.1 * a_f) & ~kept_x[np.minimum(km, len(kept_x) - 1)]
            keep &= ((dx > min_sep) | sh[:, 0]) & ((dm > min_sep) | sh[:, 1])
        # columns of cells cut by a line still stand on their own side: drawn, in no cell
        cut = ~keep
        side_ok = {}
        for name, pts in (("x", lat.x_plain[cut]), ("m", lat.m_plain[cut])):
            ok = np.ones(len(pts), bool)
            for i, ln in enumerate(lines):
                want = bool(d >> i & 1)
                ok &= (ln.side(pts) == want) | (ln.distance(pts) < 0.1 * a_f)
            side_ok[name] = ok
        lone_xy = np.concatenate([lat.x_plain[cut][side_ok["x"]], lat.m_plain[cut][side_ok["m"]]])
        lone_is_x = np.r_[np.ones(int(side_ok["x"].sum()), bool), np.zeros(int(side_ok["m"].sum()), bool)]
        lone_img = np.concatenate([lat.x_site[cut][side_ok["x"]], lat.m_site[cut][side_ok["m"]]])
        lat = lat.subset(keep)
        parts.append(lat)
        shared.append(sh[keep])
        doms.append(np.full(len(lat.ij), d, np.int64))
        kept_cols = np.concatenate([kept_cols, lat.x_plain, lat.m_plain])
        kept_x = np.concatenate([kept_x, np.ones(len(lat.ij), bool), np.zeros(len(lat.ij), bool)])
        lone.append((lone_xy, lone_is_x, lone_img))
    cat = Lattice(
        a_px=a_px, rotation_deg=rotation_deg,
        ij=np.concatenate([p.ij for p in parts]), x_site=np.concatenate([p.x_site for p in parts]),
        m_site=np.concatenate([p.m_site for p in parts]), box=np.concatenate([p.box for p in parts]),
        hex_center=np.concatenate([p.hex_center for p in parts]), hex_box=np.concatenate([p.hex_box for p in parts]),
        x_plain=np.concatenate([p.x_plain for p in parts]), m_plain=np.concatenate([p.m_plain for p in parts]),
        shared=np.concatenate(shared),
    )
    # the cut cells' columns, once each, where no kept column stands
    from scipy.spatial import cKDTree

    lx = np.concatenate([c[0] for c in lone])
    lis = np.concatenate([c[1] for c in lone])
    limg = np.concatenate([c[2] for c in lone])
    if len(lx):
        all_cols = np.concatenate([cat.x_plain, cat.m_plain])
        dd, _ = cKDTree(all_cols).query(lx)
        free = dd > min_sep
        lx, lis, limg = lx[free], lis[free], limg[free]
        order = np.arange(len(lx))
        pairs = cKDTree(lx).query_pairs(min_sep, output_type="ndarray") if len(lx) > 1 else np.zeros((0, 2), int)
        drop = np.zeros(len(lx), bool)
        for a, b in sorted(map(tuple, pairs)):
            if not drop[a]:
                drop[b] = True
        keep_l = order[~drop]
        cat.lone_xy, cat.lone_is_x = limg[keep_l], lis[keep_l]
    return cat, np.concatenate(doms), lines


def _row_offsets(h: int, dist: Distortion, rng: np.random.Generator) -> np.ndarray:
    if dist.row_jitter_px <= 0:
        return np.zeros(h)
    d = ndi.gaussian_filter1d(rng.standard_normal(h), max(dist.row_jitter_corr, 0.1), mode="reflect")
    return d / max(d.std(), 1e-12) * dist.row_jitter_px


def _params_dict(**kw) -> dict[str, Any]:
    out = {}
    for k, v in kw.items():
        if hasattr(v, "__dataclass_fields__"):
            v = asdict(v)
        out[k] = v
    return json.loads(json.dumps(out, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


@dataclass
class _Scene:
    """What every simulator shares for one image: lattice, labels, distortions, random streams.

    Built by :func:`_prepare_scene`; the fast model and the multislice backend render it
    differently but report the same ground truth (:func:`_ground_truth`).
    """

    material: Material
    shape: tuple[int, int]
    pixel_size: float
    rotation_deg: float
    origin: tuple[float, float] | None
    lattice: Lattice
    labels: np.ndarray
    #: horizontal scan-row offsets, px, one per row (zeros without jitter)
    row_offsets: np.ndarray
    drift: Any
    rng_noise: np.random.Generator
    #: the seed sequence (its first three children are spent); backends spawn more from it
    seed_seq: np.random.SeedSequence
    #: cells left out because their centre lies in a vacuum region (no atoms, not in the truth)
    vacuum: np.ndarray | None = None
    #: the vacuum region as ``inside(points) -> bool``, or None
    vacuum_inside: Any = None
    #: domain of every cell (0 without boundaries), the boundaries and their lines
    cell_domain: np.ndarray | None = None
    boundaries: tuple = ()
    lines: list = field(default_factory=list)
    #: the formula simulated and the atoms on every cell's sites (see :func:`place_species`)
    composition: Composition | None = None
    m_z: np.ndarray | None = None
    x_z: np.ndarray | None = None

    @property
    def render_labels(self) -> np.ndarray:
        """Class of every lattice cell as rendered: vacuum cells have no atoms (class 5)."""
        if self.vacuum is None or not self.vacuum.any():
            return self.labels
        out = self.labels.copy()
        out[self.vacuum] = N_CLASSES - 1  # X2 and M missing: an empty cell
        return out


def _prepare_scene(
    material: str | Material,
    shape: int | tuple[int, int],
    pixel_size: float,
    rotation_deg: float,
    defect_fraction: float,
    class_weights: Sequence[float] | None,
    labels: np.ndarray | None,
    distortion: Distortion,
    origin: tuple[float, float] | None,
    seed: int | None,
    vacuum: Vacuum | None = None,
    boundaries: Sequence[Boundary] = (),
) -> _Scene:
    """Validate the common arguments of the simulators and build the scene."""
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape), int(shape))
    shape = (int(shape[0]), int(shape[1]))
    if min(shape) < 8:
        raise ValueError(f"shape must be at least 8 x 8 px, got {shape}")
    if not 0.005 <= pixel_size <= 1.0:
        raise ValueError(f"pixel_size must be in Å/px between 0.005 and 1, got {pixel_size}")
    mat = get_material(material)
    rotation_deg = reduce_rotation(rotation_deg)
    seed_seq = np.random.SeedSequence(seed)
    rng_def, rng_noise, rng_dist = (np.random.default_rng(s) for s in seed_seq.spawn(3))

    offsets = _row_offsets(shape[0], distortion, rng_dist)
    drift = _scan_transform(shape, distortion, rng_dist)
    boundaries = tuple(boundaries or ())
    if len(boundaries) > 3:
        raise ValueError(f"at most 3 boundaries per image, got {len(boundaries)}")
    lat, cell_domain, lines = _domain_lattice(mat, shape, pixel_size, rotation_deg, origin, boundaries,
                                              KERNEL_RADIUS_A + 1.0, drift)
    n = len(lat.ij)
    if labels is None:
        labels = place_defects(n, defect_fraction, class_weights, rng_def)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (n,):
        raise ValueError(f"labels must have one entry per lattice cell ({n}), got {labels.shape}")
    in_vacuum, inside = None, None
    if vacuum is not None:
        # its own stream, so that adding a vacuum changes nothing else in the scene
        rng_vac = np.random.default_rng(np.random.SeedSequence(seed_seq.entropy, spawn_key=(7919,)))
        inside = vacuum_region(vacuum, shape, rng_vac)
        in_vacuum = inside(0.5 * (lat.x_site + lat.m_site))
    comp = material if isinstance(material, Composition) else parse_composition(
        material.name if isinstance(material, Material) else str(material))
    # its own stream, so that a binary's frames do not change
    rng_sp = np.random.default_rng(np.random.SeedSequence(seed_seq.entropy, spawn_key=(104729,)))
    m_z, x_z = place_species(comp, labels, rng_sp)
    return _Scene(
        material=mat,
        shape=shape,
        pixel_size=float(pixel_size),
        rotation_deg=float(rotation_deg),
        origin=origin,
        lattice=lat,
        labels=labels,
        row_offsets=offsets,
        drift=drift,
        rng_noise=rng_noise,
        seed_seq=seed_seq,
        vacuum=in_vacuum,
        vacuum_inside=inside,
        cell_domain=cell_domain,
        boundaries=boundaries,
        lines=lines,
        composition=comp,
        m_z=m_z,
        x_z=x_z,
    )


def _scene_sites(scene: _Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``x_site, m_site, cell box, hexagon centre, hexagon box`` as imaged (row jitter applied)."""
    lat, offsets, shape = scene.lattice, scene.row_offsets, scene.shape
    if not np.any(offsets):
        return lat.x_site, lat.m_site, lat.box, lat.hex_center, lat.hex_box

    def shift(p):
        p = np.array(p, dtype=float)
        p[..., 0] += np.interp(p[..., 1], np.arange(shape[0]), offsets)
        return p

    x_site, m_site = shift(lat.x_site), shift(lat.m_site)
    box = lat.box + np.interp((lat.box[:, 1] + lat.box[:, 3]) / 2, np.arange(shape[0]), offsets)[:, None] * [1, 0, 1, 0]
    hcen = shift(lat.hex_center)
    hbox = lat.hex_box + (hcen[:, 0] - lat.hex_center[:, 0])[:, None] * [1, 0, 1, 0]
    return x_site, m_site, box, hcen, hbox


def _ground_truth(scene: _Scene, params: dict[str, Any]) -> GroundTruth:
    """Ground truth of a scene: the cells and hexagons whose boxes lie inside the image."""
    lat, shape = scene.lattice, scene.shape
    x_site, m_site, box, hcen, hbox = _scene_sites(scene)
    inside = geo.inside_boxes(box, shape)
    hin = geo.inside_boxes(hbox, shape)
    if scene.vacuum is not None:
        inside &= ~scene.vacuum
        hin &= ~scene.vacuum_inside(lat.hex_center)
    dom = scene.cell_domain if scene.cell_domain is not None else np.zeros(len(lat.ij), np.int64)
    near = np.zeros(len(lat.ij), bool)
    lines = []
    if scene.lines:
        centre = 0.5 * (lat.x_plain + lat.m_plain)
        for ln in scene.lines:
            near |= ln.distance(centre) < BOUNDARY_HALF_WIDTH_A * lat.a_px
            lines.append(_imaged_line(scene, ln))
    return GroundTruth(
        material=scene.composition.formula if scene.composition is not None else scene.material.name,
        pixel_size=scene.pixel_size,
        shape=shape,
        rotation_deg=scene.rotation_deg,
        a_px=float(lat.a_px),
        cell_ij=lat.ij[inside],
        cell_x_site=x_site[inside],
        cell_m_site=m_site[inside],
        cell_box=box[inside],
        cell_label=scene.labels[inside],
        hex_ij=lat.ij[hin],
        hex_center=hcen[hin],
        hex_box=hbox[hin],
        params=params,
        cell_domain=dom[inside],
        cell_boundary=near[inside],
        boundary_lines=[ln for ln in lines if len(ln) > 1],
        cell_m_z=None if scene.m_z is None else scene.m_z[inside],
        cell_x_z=None if scene.x_z is None else scene.x_z[inside],
    )


def _imaged_line(scene: _Scene, line: _Line) -> np.ndarray:
    """The part of a boundary line inside the image, as imaged (scan distortion applied), px."""
    h, w = scene.shape
    step = 0.25 * scene.lattice.a_px
    t = np.arange(-math.hypot(h, w), math.hypot(h, w), step)
    p = line.point[None] + t[:, None] * line.direction[None]
    if scene.drift is not None:
        p = scene.drift(p)
    if np.any(scene.row_offsets):
        p[:, 0] += np.interp(p[:, 1], np.arange(h), scene.row_offsets)
    inside = (p[:, 0] >= 0) & (p[:, 0] <= w - 1) & (p[:, 1] >= 0) & (p[:, 1] <= h - 1)
    return p[inside]


def _render_in_strips(xy: np.ndarray, wts: np.ndarray, shape: tuple[int, int], pixel_size: float, optics: Optics,
                      ref: float, noise: Noise, rng: np.random.Generator, strip_rows: int,
                      row_jitter: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(image, clean)`` float32 of :func:`simulate`, rendered ``strip_rows`` rows at a time.

    Each strip renders the columns within the probe's reach of it (:func:`render_columns`
    keeps those on its padded canvas), so the clean image matches the whole-frame render;
    the noise is drawn strip after strip from ``rng``.
    """
    if strip_rows < 1:
        raise ValueError(f"strip_rows must be a positive number of rows, got {strip_rows}")
    if row_jitter:
        raise ValueError("strip_rows needs a frame without row jitter (the rows are shifted with a 2-D spline)")
    if noise.contamination > 0 or noise.subtract_background or noise.jpeg_quality:
        raise ValueError("strip_rows needs pixel-independent noise (no contamination, background subtraction "
                         "or JPEG): those act on the whole frame")
    h, w = shape
    image = np.empty((h, w), np.float32)
    clean = np.empty((h, w), np.float32)
    reach = KERNEL_RADIUS_A / pixel_size + 2.0  # px: columns further from a strip add nothing to it
    for r0 in range(0, h, strip_rows):
        r1 = min(h, r0 + strip_rows)
        # one more row on either side: render_columns' own edge rows miss the columns
        # just beyond its canvas
        lo, hi = max(0, r0 - 1), min(h, r1 + 1)
        near = (xy[:, 1] >= lo - reach) & (xy[:, 1] <= hi - 1 + reach)
        part = render_columns(xy[near] - [0.0, lo], wts[near], (hi - lo, w), pixel_size, optics, ref)
        part = part[r0 - lo : r1 - lo]
        clean[r0:r1] = part
        image[r0:r1] = apply_noise(part, noise, rng, pixel_size)
    return image, clean


def simulate(
    material: str | Material = "MoTe2",
    shape: int | tuple[int, int] = 512,
    pixel_size: float = 0.12,
    rotation_deg: float = 0.0,
    defect_fraction: float = 0.1,
    class_weights: Sequence[float] | None = None,
    labels: np.ndarray | None = None,
    optics: Optics | None = None,
    noise: Noise | None = None,
    distortion: Distortion | None = None,
    origin: tuple[float, float] | None = None,
    seed: int | None = 0,
    vacuum: Vacuum | None = None,
    boundaries: Sequence[Boundary] = (),
    strip_rows: int | None = None,
) -> SimulatedImage:
    """Simulate a HAADF-STEM image of a 2H-MX2 monolayer with point defects.

    Parameters
    ----------
    material : str
        ``"MoTe2"`` (default), ``"MoS2"``, ``"MoSe2"``, ``"WS2"``, ``"WSe2"``, or an alloy or
        doped formula with its fractions (``"Mo0.8W0.2Te2"``, ``"WS1.4Se0.6"``,
        ``"MoS2:Re0.02"``; see :func:`~.materials.parse_composition` and
        :func:`place_species`); the truth records the atoms on every site.
    shape : int or (rows, cols)
        Image size in px.
    pixel_size : float
        Sampling in Å/px (the paper's 2048² frames are 0.03 Å/px; its 512² network
        input 0.12 Å/px).
    rotation_deg : float
        In-plane rotation of the lattice, degrees counter-clockwise as displayed.
        Rotations 120° apart give the same lattice; it is reduced to (-60, 60], which
        fixes which M neighbour is each X column's cell partner (the canonical up-right
        one, rotated) and is what the ground truth records.
    defect_fraction, class_weights
        Defect placement, see :func:`place_defects`. Ignored if ``labels`` is given.
    labels : array, optional
        Explicit class id for every generated cell, in the order of
        :func:`build_lattice`'s output.
    optics, noise, distortion
        See :class:`Optics`, :class:`Noise`, :class:`Distortion`; ``noise=None`` uses the
        paper's defaults (lambda = 12, mu = 20); pass ``Noise(None, 0)`` for a clean image.
    origin : (x, y), optional
        Position of cell (0, 0)'s X column before rotation, px.
    seed : int
        Seed of every random choice (defects, noise, distortions).
    vacuum : Vacuum, optional
        A hole or an edge of the film in the field of view (see :class:`Vacuum`).
    boundaries : sequence of Boundary
        Domain boundaries (grain, mirror twin, inversion, translation; see
        :class:`Boundary`); the ground truth marks the cells next to them and holds the
        boundary lines.
    strip_rows : int, optional
        Render and add the noise ``strip_rows`` rows at a time (one lattice, one ground
        truth): the memory of a strip instead of the whole oversampled canvas, for very
        large frames (an 8192² frame at 0.1 Å/px needs ~14 GB at once, ~0.3 GB in
        512-row strips plus the two float32 outputs). The noise-free image equals the
        whole-frame one up to float rounding; the noise has the same distribution but
        other draws. Only for pixel-independent noise and no row jitter
        (``ValueError`` otherwise).

    Returns
    -------
    SimulatedImage
    """
    optics = optics or Optics()
    noise = noise if noise is not None else Noise()
    distortion = distortion or Distortion()
    scene = _prepare_scene(
        material, shape, pixel_size, rotation_deg, defect_fraction, class_weights, labels,
        distortion, origin, seed, vacuum, boundaries,
    )
    mat, shape, lat, offsets = scene.material, scene.shape, scene.lattice, scene.row_offsets

    x_w, m_w = species_weights(scene.m_z, scene.x_z, optics.z_exponent, optics.x1_fraction, optics.voltage_kv)
    if scene.vacuum is not None:
        x_w[scene.vacuum] = 0.0
        m_w[scene.vacuum] = 0.0
    if lat.shared is not None:
        x_w[lat.shared[:, 0]] = 0.0
        m_w[lat.shared[:, 1]] = 0.0
    ref = max(2 * float(mat.z_chalcogen) ** optics.z_exponent, float(mat.z_metal) ** optics.z_exponent)
    xy = np.concatenate([lat.x_site, lat.m_site])
    wts = np.concatenate([x_w, m_w])
    if lat.lone_xy is not None and len(lat.lone_xy):
        full_x, _ = column_weights(mat, np.zeros(1, np.int64), optics.z_exponent, optics.x1_fraction)
        _, full_m = column_weights(mat, np.zeros(1, np.int64), optics.z_exponent, optics.x1_fraction)
        xy = np.concatenate([xy, lat.lone_xy])
        wts = np.concatenate([wts, np.where(lat.lone_is_x, full_x[0], full_m[0])])
    if strip_rows is not None:
        image, clean = _render_in_strips(xy, wts, shape, pixel_size, optics, ref, noise, scene.rng_noise,
                                         int(strip_rows), bool(np.any(offsets)))
    elif np.any(offsets):
        # render on a canvas wide enough for the row shifts, then shift each row
        pad = int(math.ceil(np.abs(offsets).max())) + 2
        clean = render_columns(xy + [pad, 0], wts, (shape[0], shape[1] + 2 * pad), pixel_size, optics, ref)
        rows = np.arange(shape[0])[:, None] * np.ones((1, shape[1]))
        cols = np.arange(shape[1])[None, :] + pad - offsets[:, None]
        clean = ndi.map_coordinates(clean, [rows, cols], order=3, mode="nearest")
    else:
        clean = render_columns(xy, wts, shape, pixel_size, optics, ref)
    if strip_rows is None:
        image = apply_noise(clean, noise, scene.rng_noise, pixel_size)
    truth = _ground_truth(
        scene,
        _params_dict(
            model="incoherent",
            seed=seed,
            defect_fraction=defect_fraction,
            class_weights=None if class_weights is None else list(class_weights),
            optics=optics,
            noise=noise,
            distortion=distortion,
            vacuum=vacuum,
            boundaries=[asdict(b) for b in scene.boundaries],
        ),
    )
    return SimulatedImage(image=image, clean=clean.astype(np.float32), truth=truth)
