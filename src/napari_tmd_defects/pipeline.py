"""``analyze(image, pixel_size=...)``: image -> sites -> cells -> classes -> counts.

The stages, in order (each a function below, on the data model of :mod:`.sites`):

1. :func:`check_image`      validate the image, find its lattice constant (FFT, then the
                            columns), settle the pixel size; :func:`check_export`
                            fills burned-in scale bars and labels, warns of dark
                            columns (:mod:`.exports`);
2. :func:`estimate_noise`   shot and read noise of the frame;
3. :func:`find_sites`       columns -> local lattice -> domains -> sites -> cells
                            (:mod:`.lattice`), boundaries;
4. :func:`find_vacuum`      holes and film edges, whose cells are left out;
                            :func:`remeasure_heights` reads the columns against the
                            film's hollows, not the vacuum;
5. :func:`detect_hexagons`  CNN-1 hexagons, checked against the sites (support, votes);
6. :func:`classify_cells`   CNN-2 on every cell, cropped in its own frame (other
                            materials contrast-matched to the networks' one);
7. :func:`read_states`      every site's state from its column intensity (vacant, host,
                            substituent with its effective Z, chalcogen atoms and species,
                            or ``unresolved``) and the frame's detection limits
                            (:mod:`.states`); the cell classes become a view of them;
8. :func:`check_plausibility` warnings and flags where the output does not fit the image.

Pure numpy/torch: no Qt here; the napari widgets and the CLI call :func:`analyze`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import (
    BOUNDARY,
    MIN_LATTICE_STRENGTH,
    MODEL_MATERIAL,
    NOISE_LAMBDA_RANGE,
    TRAINED_PIXEL_SIZES,
    UNCLASSIFIED,
    Result,
    dark_level,
    empty_result,
    prepare_image,
    unread_cells,
)
from .materials import CLASS_VACANCIES, N_CLASSES, get_material, parse_composition
from .runtime import CancelCallback, ProgressCallback, check_cancel, release_memory
from .sites import ROLE_M, ROLE_X, SiteModel

__all__ = ["analyze", "check_pixel_size", "Frame", "PixelSizeCheck"]

#: A given (typed or file metadata) pixel size that disagrees with the one the image's
#: lattice implies by more than this (relative) is replaced by the lattice's, unless trusted.
PIXEL_SIZE_TOLERANCE = 0.10
#: Where a result's pixel size came from: typed by the user or passed in, the file's
#: metadata, the lattice (a given value that disagreed with it was replaced), or estimated
#: from the lattice (none was given).
PIXEL_SIZE_SOURCES = ("given", "metadata", "lattice", "estimated")
#: Domains turned by more than this (degrees) are shown to the detector turned canonical
#: (it finds hexagons up to ~10° off its training orientation).
ROTATION_TOLERANCE_DEG = 8.0
#: A nominally pure frame reported more defective than this is flagged.
MAX_PLAUSIBLE_DEFECT_FRACTION = 0.2
#: More adjacent cells than this sharing one defect class are flagged.
MAX_PLAUSIBLE_CLUSTER = 12
#: A frame whose metal/chalcogen column ratio lies more than this factor outside the range
#: its composition's end members give (:func:`column_ratio_range`) is warned of: 29 real
#: monolayer frames from 12 repositories stood within 2.2x of it (the farthest a 100 kV WSe2
#: frame with faint Se columns; docs/reports/real_frames.md); in a 2H-stacked bilayer every
#: column holds a metal and two chalcogens.
MAX_COLUMN_RATIO_FACTOR = 3.0
#: The detector's hexagons must sit on hollow sites at least this often ...
MIN_HEXAGONS_ON_HOLLOWS = 0.7
#: ... and cast at least this share of the cells, or its output is set aside.
MIN_CELLS_WITH_HEXAGON = 0.6
#: A column state is resolved when the intensity step to the next state is this many
#: times the spread of full columns.
MIN_LEVEL_SIGMAS = 3.0
#: A called column state this far (fraction of a full column) from the measured intensity,
#: with another state nearer, contradicts the image.
MAX_STATE_MISMATCH = 0.3
#: A binary's metal vacancy is counted only where the column reading gives the site at
#: least this probability of being empty (else the classifier's call is flagged, not counted).
MIN_EMPTY_PROBABILITY = 0.5
#: ... unless the classifier gives the metal vacancy at least this probability and its odds
#: times the reading's odds of an empty site still favour the vacancy.
SURE_METAL_VACANCY = 0.98
#: A binary's metal vacancy on a site where a column peak was found and whose reading is
#: ``unresolved`` is counted only where the reading gives the site at least this
#: probability of being empty.
MIN_EMPTY_ON_FOUND_COLUMN = 0.9
#: ... where the peak stands on the site: no farther from where its neighbours put it than
#: this many times the position scatter (Rayleigh σ) of the frame's found metal columns.
#: A peak farther off is a noise maximum among an empty site's neighbours' tails, not its
#: column (a column's peak lies farther than 3 σ from its site in 1 % of cases).
MAX_FOUND_PEAK_OFFSET_SIGMAS = 3.0
#: A binary's metal site with no column found that the reading calls vacant is a metal
#: vacancy even where the classifier missed it, but not within this distance (lattice
#: constants) of vacuum: at the film's edge an empty site may be the hole's.
VACANCY_VACUUM_MARGIN_A = 1.0
#: Where the column reading sets a cell's class, its confidence is calibrated
#: (:func:`reading_confidence`): the reading's posteriors assume its level model exact, and
#: blurred or alloyed frames are not (an empty column raised by its neighbours' tails reads
#: as full), so the confidence depends on how well the frame separates its levels
#: (:func:`reading_features`). The map's constants are fitted (negative log-likelihood) on
#: validation frames with their own seeds, none a held-out report frame, and written to
#: this file by ``benchmarks/calibrate_reading.py``.
READING_CALIBRATION_PATH = Path(__file__).with_name("data") / "reading_calibration.json"
#: The one temperature of the reading's log-odds where no calibration file is found (and
#: the baseline the calibration is compared with).
READING_TEMPERATURE = 1.8
#: Intensity of a chalcogen column with one atom of two left (incoherent 0.5; multislice
#: channelling ~0.44, docs/multislice.md).
X1_LEVEL = 0.47


@dataclass
class Frame:
    """What the stages know about one image (filled in as they run). ``material`` is a
    binary's name or an alloy's formula (:func:`~.materials.get_material` gives its host)."""

    #: the image, read only: float32, or 8/16-bit counts as they came (each stage reads
    #: them as float32 a band or a crop at a time; :func:`~.analysis.prepare_image`)
    image: np.ndarray
    material: str
    pixel_size: float | None
    pixel_size_source: str
    a_px: float = float("nan")
    lattice: Any = None
    noise: dict[str, float] = field(default_factory=dict)
    #: the frame's pixel noise model (:class:`~.noise.NoiseEstimate`), None where not estimated
    noise_model: Any = None
    noise_sigma: float = float("nan")
    work: Any = None
    state: Any = None
    model: SiteModel | None = None
    vacuum: np.ndarray | None = None
    n_vacuum: int = 0
    #: the columns' polarity (:func:`~.exports.column_polarity`: positive for bright columns)
    column_polarity: float = float("nan")
    #: power between the lattice's Fourier reflections over theirs
    #: (:func:`~.exports.between_reflections_power`: almost none in a Fourier-filtered frame)
    between_reflections: float = float("nan")
    #: pixels that show no crystal: burned-in annotations (scale bar, labels) and non-finite
    #: pixels, grown by half a lattice constant; their cells are left out as the vacuum's are
    #: (:mod:`.exports`); None when there are none
    masked: np.ndarray | None = None
    #: an inset's pixels (:func:`.exports.inset_mask`), filled with the crystal continued
    #: (:func:`.exports.fill_inset`): no column is read there, its cells are left out
    inset: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    #: the site states (:class:`~.states.SiteStates`), once read
    states: Any = None
    #: keep a given pixel size that disagrees with the lattice (else the lattice's is used)
    trust_pixel_size: bool = False
    #: the pixel size (Å/px) the lattice implies for the material; None before / without a lattice
    pixel_size_lattice: float | None = None
    #: the pixel size (Å/px) given by the caller (typed or file metadata), None when none was
    pixel_size_given: float | None = None
    #: the site-state head (:class:`~.sitehead.SiteHead`) whose column intensities an
    #: alloy's or doped layer's metal sites are read from; None: the column heights
    site_head: Any = None


#: Weaker lattice reflections accepted when the lattice constant fits the given pixel size.
MIN_LATTICE_STRENGTH_AT_HINT = 3.0
#: ... within this relative tolerance.
HINT_TOLERANCE = 0.1
#: Where no lattice stands out but a pixel size is given, its lattice constant is taken when
#: the frame's {100} and {110} rings (averaged round the ring: several domains and a scan's
#: bending spread the reflections round them) both stand at least this far above the power
#: beside them, one of them this far (:func:`.geometry.ring_contrast`; on 116 held-out and
#: structure frames at least 1.3 and 1.9, on noise at most 1.8 and 1.4) ...
MIN_RING_CONTRAST_AT_HINT = (1.2, 2.0)
#: ... and more clearly than for a lattice constant sqrt(3) larger or smaller (the rings of
#: those share one ring with the right one).


@dataclass(frozen=True)
class PixelSizeCheck:
    """A given pixel size (Å/px) against the one the image's lattice implies for a material.

    ``source`` says where ``given`` came from (``"given"``: typed or passed in,
    ``"metadata"``: the file's); ``lattice`` is None when the image shows no lattice.
    """

    material: str
    given: float | None
    lattice: float | None
    source: str = "given"

    @property
    def deviation(self) -> float:
        """given / lattice - 1 (nan when either is missing)."""
        if self.given is None or self.lattice is None:
            return float("nan")
        return self.given / self.lattice - 1.0

    @property
    def disagrees(self) -> bool:
        """The two differ by more than :data:`PIXEL_SIZE_TOLERANCE`."""
        return bool(abs(self.deviation) > PIXEL_SIZE_TOLERANCE)

    def describe(self) -> str:
        """One sentence naming both values, e.g. for a warning or a question to the user."""
        what = "the file's" if self.source == "metadata" else "the given"
        return (f"{what} pixel size {self.given:.4g} Å/px disagrees with the lattice in the image, which implies "
                f"{self.lattice:.4g} Å/px for {self.material} ({100 * self.deviation:+.0f} %)")


def _find_lattice(img: np.ndarray, material: str, pixel_size: float | None):
    """The image's lattice (:func:`.geometry.estimate_lattice`, hinted by the pixel size,
    else by what its tiles agree on: :func:`.geometry.tile_lattice_constant`), or None when
    there is none clear enough."""
    from .geometry import autocorrelation_lattice, estimate_lattice, tile_lattice_constant

    def found(lat, a_hint) -> bool:
        # several grains or heavy noise spread the reflections: a weaker lattice is taken
        # when it has the lattice constant expected (noise rarely does both)
        return lat is not None and (
            lat.strength >= MIN_LATTICE_STRENGTH
            or (a_hint is not None and lat.strength >= MIN_LATTICE_STRENGTH_AT_HINT
                and abs(lat.a_px / a_hint - 1.0) < HINT_TOLERANCE))

    a_hint = None if pixel_size is None else get_material(material).a / pixel_size
    lat = first = estimate_lattice(img, a_hint=a_hint)
    if a_hint is not None and lat is not None and abs(lat.a_px / a_hint - 1.0) >= HINT_TOLERANCE:
        # the lattice found is not the one expected, so the hint told nothing: it only chose
        # among candidates (a weaker ring of another grain, refined a few % off its own
        # lattice); the frame's strongest lattice, as without a pixel size, where stronger
        free = estimate_lattice(img)
        if free is not None and free.strength > lat.strength:
            lat = first = free
    if found(lat, a_hint):
        return lat
    # a weak lattice off the expected size: in a frame a few cells across its reflections
    # lie a few Fourier pixels out and their radius can be 10-15 % off; measured again in
    # real space (the autocorrelation), it may have the size expected
    if a_hint is not None and lat is not None and lat.strength >= MIN_LATTICE_STRENGTH_AT_HINT:
        measured = autocorrelation_lattice(img, lat)
        if found(measured, a_hint):
            return measured
    # none clear enough in the whole frame: a weaker one that its tiles (each holding fewer
    # grains) show too, or else the lattice constant the tiles agree on is the expectation,
    # as a pixel size would be
    if lat is not None and lat.strength >= MIN_LATTICE_STRENGTH_AT_HINT and (
            tile_lattice_constant(img, MIN_LATTICE_STRENGTH_AT_HINT, min_tiles=4, near=lat.a_px) is not None):
        return lat
    a_tiles = tile_lattice_constant(img, MIN_LATTICE_STRENGTH)
    if a_tiles is not None:
        lat = estimate_lattice(img, a_hint=a_tiles)
        if found(lat, a_tiles):
            return lat
    return _lattice_from_rings(img, a_hint, first) if a_hint is not None else None


def _lattice_from_rings(img: np.ndarray, a_hint: float, weak):
    """The lattice of the given pixel size (``a_hint``, px) where the frame's rings show it
    (:data:`MIN_RING_CONTRAST_AT_HINT`) though no reflections stand out; its orientation
    that of the weak estimate ``weak`` when that is within 20 % of the size, else 0°. Its
    ``strength`` stays below :data:`MIN_LATTICE_STRENGTH_AT_HINT` (what
    :func:`check_image` warns of); None where the rings do not show it."""
    from .geometry import LatticeEstimate, lattice_vectors, ring_contrast

    sqrt3 = math.sqrt(3.0)
    rings = ring_contrast(img, (a_hint, a_hint * sqrt3, a_hint / sqrt3))
    s, s_larger, s_smaller = (math.log(max(c100, 1e-12)) + math.log(max(c110, 1e-12)) for c100, c110 in rings)
    lo, hi = MIN_RING_CONTRAST_AT_HINT
    if min(rings[0]) < lo or max(rings[0]) < hi or s < s_larger or s < s_smaller:
        return None
    if weak is not None and abs(weak.a_px / a_hint - 1.0) < 0.2:
        f = a_hint / weak.a_px
        return LatticeEstimate(a_px=a_hint, rotation_deg=weak.rotation_deg, a1=weak.a1 * f, a2=weak.a2 * f,
                               strength=min(weak.strength, 0.99 * MIN_LATTICE_STRENGTH_AT_HINT))
    a1, a2 = lattice_vectors(a_hint)
    return LatticeEstimate(a_px=a_hint, rotation_deg=0.0, a1=a1, a2=a2, strength=0.0)


def check_pixel_size(image: np.ndarray, material: str = "MoTe2", pixel_size: float | None = None,
                     source: str = "given") -> PixelSizeCheck:
    """Compare ``pixel_size`` (Å/px) with the one the image's lattice implies for
    ``material`` (the lattice search :func:`analyze` makes first; ~0.03–0.1 s on 2 cores)."""
    img = prepare_image(image, copy=False)[0]
    mat = get_material(_formula(material))
    lat = _find_lattice(img, mat.name, pixel_size) if min(img.shape) >= 32 and np.ptp(img) > 0 else None
    return PixelSizeCheck(mat.name, None if pixel_size is None else float(pixel_size),
                          None if lat is None else float(mat.a / lat.a_px), source)


def image_checks(frame: Frame) -> dict[str, float]:
    """The given and the lattice-implied pixel sizes (Å/px), the columns' polarity and the
    power between the lattice's reflections (:func:`check_export`) for ``Result.checks``."""
    out = {"pixel_size_given_A": frame.pixel_size_given, "pixel_size_lattice_A": frame.pixel_size_lattice}
    out = {k: round(float(v), 6) for k, v in out.items() if v is not None}
    if math.isfinite(frame.column_polarity):
        out["column_polarity"] = round(frame.column_polarity, 3)
    if math.isfinite(frame.between_reflections):
        out["between_reflections_power"] = float(f"{frame.between_reflections:.3g}")
    return out


# --------------------------------------------------------------------------- stages
def _finite_window(missing: np.ndarray) -> tuple[slice, slice] | None:
    """The rows and columns of an image that are (nearly: < 5 %) free of ``missing``
    pixels, as one window (an aligned stack's NaN border cut away); None when it is small."""
    cols = np.flatnonzero(missing.mean(axis=0) < 0.5)  # then rows, then columns, each within the other
    if len(cols) < 32:
        return None
    rows = np.flatnonzero(missing[:, cols[0]:cols[-1] + 1].mean(axis=1) < 0.05)
    if len(rows) < 32:
        return None
    cols = np.flatnonzero(missing[rows[0]:rows[-1] + 1].mean(axis=0) < 0.05)
    if len(cols) < 32:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def check_image(frame: Frame, missing: np.ndarray | None = None) -> bool:
    """Lattice constant from the image and the pixel size; False when there is no lattice.
    ``missing``: pixels that were non-finite in the input (filled flat by
    :func:`~.analysis.prepare_image`): the lattice is sought in the window without them
    first (a filled border's straight edges swamp or mimic the reflections), in the whole
    frame where that window is small or shows none.

    A given pixel size that disagrees with the lattice by more than
    :data:`PIXEL_SIZE_TOLERANCE` is replaced by the lattice's (source ``"lattice"``, with a
    warning naming both) unless ``frame.trust_pixel_size``; the sites are found on the
    image's own lattice either way.
    """
    img = frame.image
    mat = get_material(frame.material)
    if min(img.shape) < 32 or np.ptp(img) == 0:
        frame.warnings.append("image too small or constant: no lattice to analyse")
        return False
    # a filled border's straight edges put power where the reflections are (no lattice, or a
    # wrong one: a real MoS2 frame with a NaN border read a lattice constant √3 too short):
    # the window without the missing pixels first, the whole frame where it shows none
    window = _finite_window(missing) if missing is not None and missing.any() else None
    lat = _find_lattice(img[window], frame.material, frame.pixel_size) if window is not None else None
    if lat is None:
        lat = _find_lattice(img, frame.material, frame.pixel_size)
    frame.lattice = lat
    if lat is None:
        frame.warnings.append("no crystal lattice found in the image" if frame.pixel_size is not None else
                              "no crystal lattice found, so the pixel size cannot be estimated")
        return False
    frame.a_px = float(lat.a_px)
    frame.pixel_size_lattice = float(mat.a / lat.a_px)
    if lat.strength < MIN_LATTICE_STRENGTH_AT_HINT:
        frame.warnings.append(
            f"no lattice reflections stand out (several domains, strong scan distortion?): the lattice constant "
            f"is the given pixel size's ({frame.pixel_size:.4g} Å/px), which the frame's lattice rings support but "
            "cannot confirm; check the pixel size")
    if frame.pixel_size is not None:
        chk = PixelSizeCheck(mat.name, frame.pixel_size, frame.pixel_size_lattice, frame.pixel_size_source)
        if chk.disagrees and frame.trust_pixel_size:
            frame.warnings.append(f"{chk.describe()}; kept as asked (trust_pixel_size): lengths in Å use it, "
                                  "the sites follow the image's own lattice")
        elif chk.disagrees:
            frame.warnings.append(
                f"PIXEL SIZE REPLACED: {chk.describe()}; the lattice value is used. Check the material, "
                "or keep the given value with trust_pixel_size=True (CLI: --trust-pixel-size)")
            frame.pixel_size, frame.pixel_size_source = frame.pixel_size_lattice, "lattice"
    if min(img.shape) < 2.5 * frame.a_px:
        frame.warnings.append(f"image ({img.shape[1]}x{img.shape[0]} px) holds fewer than 2.5 lattice constants")
        return False
    return True


def estimate_noise(frame: Frame) -> None:
    """Poisson λ and Gaussian μ of the frame (see :mod:`.noise`), with a warning when very noisy."""
    from .noise import estimate_noise as _estimate

    try:
        est = _estimate(frame.image, frame.a_px)
    except ValueError:
        return
    frame.noise_model = est
    frame.noise = {"poisson_lambda": round(est.poisson_lambda, 2), "gaussian_mu": round(est.gaussian_mu, 2),
                   "snr": round(est.snr, 2), "poisson_limited": bool(est.poisson_limited)}
    if est.poisson_lambda < NOISE_LAMBDA_RANGE[0] or est.snr < 1.5:
        frame.warnings.append(f"very noisy image ({est.describe()}); the models were trained down to "
                              f"λ = {NOISE_LAMBDA_RANGE[0]} counts: check flagged cells")


def find_domains(frame: Frame) -> None:
    """Columns, the local lattice and the domains with their roles (:func:`.lattice.find_domains`)."""
    from .lattice import find_domains as _find, work_image

    frame.work = work_image(frame.image, frame.a_px)
    frame.noise_sigma = frame.work.noise
    frame.state = _find(frame.image, frame.a_px, frame.material, work=frame.work, exclude=frame.inset)


def complete_sites(frame: Frame) -> None:
    """Sites with local gap filling, cells and boundaries (:func:`.lattice.complete_sites`);
    the pixel size from the measured lattice when none was given."""
    from .lattice import brighter_ambiguous, x_brighter
    from .lattice import complete_sites as _complete

    mat = get_material(frame.material)
    if frame.model is None or any(d.roles_from_hexagons for d in frame.state.domains):
        frame.model = _complete(frame.state)
    model = frame.model
    if model.a_px > 0 and len(model.sites) >= 12:
        frame.a_px = float(model.a_px)
    frame.pixel_size_lattice = mat.a / frame.a_px  # from the sites: finer than the FFT's
    if frame.pixel_size is None:
        frame.pixel_size = frame.pixel_size_lattice
        frame.pixel_size_source = "estimated"
        frame.warnings.append(f"pixel size estimated from the {mat.name} lattice: {frame.pixel_size:.4f} Å/px")
    elif frame.pixel_size_source == "lattice":
        frame.pixel_size = frame.pixel_size_lattice
    if not TRAINED_PIXEL_SIZES[0] <= frame.pixel_size <= TRAINED_PIXEL_SIZES[1]:
        frame.warnings.append(
            f"pixel size {frame.pixel_size:.4g} Å/px is outside the range the models were trained for "
            f"({TRAINED_PIXEL_SIZES[0]}–{TRAINED_PIXEL_SIZES[1]} Å/px)")
    frame.warnings.extend(model.notes)
    doms = model.domains
    if len(doms) > 1:
        big = [d for d in doms if d.n_sites >= 12]
        frame.warnings.append(
            f"{len(big)} domains (grains, twin or inversion domains) with boundaries "
            f"{model.boundary_length_px * frame.pixel_size / 10:.1f} nm long: cells on the boundaries are classed "
            "'boundary' and left out of the concentrations")
    big = [d for d in doms if d.n_sites >= 40]
    if brighter_ambiguous(frame.material) and big and not any(d.roles_from_spread for d in big):
        frame.warnings.append(
            f"which sublattice is the metal is a guess: the end members of {frame.material} differ in which column "
            "is brighter and the frame's columns do not show which sublattice is alloyed; the roles follow the "
            f"equal-share prior (the metal column {'dimmer' if x_brighter(frame.material) else 'brighter'}). Near an "
            "end member give its formula (e.g. MoSe2, Mo0.9W0.1Se2)")
    else:
        for d in big:
            if d.contrast < 0.1 and not d.roles_from_spread:
                frame.warnings.append(
                    f"domain {d.id}: metal and chalcogen columns are about equally bright (contrast "
                    f"{d.contrast:.2f}); which sublattice is the metal follows the {mat.name} prior and may be wrong")
                break


def check_export(frame: Frame, rgb: np.ndarray | None = None, missing: np.ndarray | None = None) -> None:
    """What the export added (:mod:`.exports`; ``rgb``: the RGB original of a converted
    frame): a warning where the columns look dark (bright field, ABF, inverted contrast),
    and where the frame holds almost no power between its lattice's Fourier reflections
    (a Fourier-filtered frame: vacancies and dopants painted over);
    burned-in scale bars and labels filled with the frame's other pixels drawn at random in
    a copy of the image, so no column is found on them, and their cells left out, as those
    of the ``missing`` pixels (non-finite in the input, filled by
    :func:`~.analysis.prepare_image`); an inset (a pasted FFT or panel) filled with the
    crystal continued from elsewhere in the frame, its columns not read and its cells left
    out (:func:`locate_cells`)."""
    from .exports import (DARK_COLUMNS_POLARITY, FOURIER_FILTERED_POWER, annotation_mask, between_reflections_power,
                          column_polarity, exclusion_zone, fill_annotations, fill_inset, inset_mask)

    frame.column_polarity = polarity = column_polarity(frame.image, frame.a_px)
    if polarity < DARK_COLUMNS_POLARITY:
        frame.warnings.append(
            f"DARK COLUMNS: the atomic columns look darker than the space between them (polarity {polarity:+.2f}; "
            "HAADF frames read +0.3 or more): a bright-field or ABF image, or inverted contrast? The analysis "
            "assumes HAADF (Z-contrast, columns bright): invert the image (maximum minus image) or do not trust "
            "these cells")
    if frame.lattice is not None:
        frame.between_reflections = power = between_reflections_power(frame.image, frame.lattice)
        if power < FOURIER_FILTERED_POWER:
            frame.warnings.append(
                f"FOURIER FILTERED? almost no power between the lattice's Fourier reflections ({power:.1e} of theirs; "
                f"raw frames read 5e-5 or more): a filter that keeps only the reflections replaces every column by "
                f"the lattice's average and paints over vacancies and dopants, so the cells read perfect. Analyse "
                f"the unfiltered frame (a defect-free crystal imaged at a high dose can also read so)")
    mask = annotation_mask(frame.image, frame.a_px, rgb)
    if mask is not None:
        frame.image, frame.masked = fill_annotations(frame.image, mask, frame.a_px)
        frame.warnings.append(
            f"burned-in annotation (a scale bar, label or marks: flat regions at the brightest or darkest grey level, or "
            f"coloured pixels) covers {100 * mask.mean():.1f} % of the image: masked, the cells on it left out")
    inset = inset_mask(frame.image, frame.lattice) if frame.lattice is not None else None
    if inset is not None:
        # (filled with the crystal continued, not masked as vacuum: the cells next to it are
        # read as next to crystal; its own cells are left out in locate_cells)
        frame.image = fill_inset(frame.image, inset, frame.lattice)
        frame.inset = inset
        frame.warnings.append(
            f"an inset (a pasted panel: an FFT, a zoomed view; a rectangle in a corner without the frame's lattice) "
            f"covers {100 * inset.mean():.1f} % of the image: no column is read there and its cells are left out")
    if missing is not None and missing.any():
        lost = exclusion_zone(missing, frame.a_px)
        frame.masked = lost if frame.masked is None else frame.masked | lost


def find_vacuum(frame: Frame) -> None:
    """Vacuum from the local lattice amplitude of every domain orientation, and flat dark
    regions (padding, a black canvas: :func:`.vacuum.flat_vacuum`) (:mod:`.vacuum`)."""
    from .vacuum import domain_lattices, flat_vacuum, vacuum_mask

    model = frame.model
    lattices = domain_lattices(model) if model is not None and model.domains else [frame.lattice]
    mask = vacuum_mask(frame.image, lattices)
    flat = flat_vacuum(frame.image, frame.a_px)
    if flat is not None:
        mask |= flat
    if not mask.any():
        return
    frame.vacuum = mask
    frame.warnings.append(f"vacuum (a hole or an edge of the film) covers {100 * mask.mean():.0f} % of the "
                          "image: cells there are left out of the counts and the area")


def remeasure_heights(frame: Frame) -> None:
    """The sites' column heights measured again with the vacuum (and the masked pixels,
    which :func:`locate_cells` adds to it) left out of the background
    (:func:`.lattice.work_image`): next to a hole the background was the vacuum's, darker
    than the film's hollows, and the columns within two lattice constants of it read
    30-40 % too bright (a real V-doped MoS2 frame with a black border then read most of its
    metal sites as V)."""
    from .lattice import work_image

    if frame.vacuum is None or frame.model is None or not len(frame.model.sites):
        return
    s = frame.model.sites
    s.height = work_image(frame.image, frame.a_px, exclude=frame.vacuum).sample(s.xy).astype(s.height.dtype)


#: ``analyze(hexagons=...)``: CNN-1 over every domain ("frame"), or over one tile of
#: :data:`SAMPLE_TILE_PX` per domain ("sample": enough hexagons to check each domain's hollow
#: sites; cells outside the tiles have support -1).
HEXAGON_COVERAGES = ("frame", "sample")
#: "sample": the side of a domain's tile, px at the detector's sampling (``A_PX`` px per
#: lattice constant: ~11 a, ~120 hexagons; a turned domain's shrinks to ~65).
SAMPLE_TILE_PX = 320
#: "sample": at most this many tiles (the largest domains first).
MAX_SAMPLE_TILES = 8
#: "sample": domains with fewer sites than this get no tile of their own.
MIN_SAMPLE_SITES = 30


def _by_size(state) -> list:
    """The lattice state's domains, the largest (sites, else columns) first."""
    return sorted(state.domains, key=lambda d: -d.n_sites if d.n_sites else -int(np.sum(state.domain == d.id)))


def _orientation_groups(domains: list) -> list[list]:
    """Domains of one orientation (within :data:`ROTATION_TOLERANCE_DEG`, mod 120°), in
    the order given: each group is turned canonical once."""
    groups: list[list] = []
    for d in domains:
        for g in groups:
            if abs((d.rotation_deg - g[0].rotation_deg + 60.0) % 120.0 - 60.0) < ROTATION_TOLERANCE_DEG:
                g.append(d)
                break
        else:
            groups.append([d])
    return groups


def _hexagon_windows(frame: Frame, coverage: str) -> list[tuple[tuple[int, int, int, int], list[int]]]:
    """The crops ``((x0, y0, x1, y1) px, domain ids)`` CNN-1 is run on: each orientation
    group's bounding box ("frame"), or one tile of :data:`SAMPLE_TILE_PX` centred in each domain ("sample";
    a tile of a turned domain shrinks so that the turned crop still fits one tile)."""
    from .detection import A_PX

    state = frame.state
    a_px = frame.a_px
    h, w = frame.image.shape
    out = []
    domains = _by_size(state)
    groups = _orientation_groups(domains)
    if coverage == "frame":
        for group in groups:
            ids = [d.id for d in group]
            pts = state.graph.xy[np.isin(state.domain, ids)]
            if len(pts) < 3:
                continue
            m = 1.5 * a_px
            x0, y0 = (max(0, int(np.floor(v - m))) for v in pts.min(axis=0))
            x1, y1 = int(min(w, np.ceil(pts[:, 0].max() + m))), int(min(h, np.ceil(pts[:, 1].max() + m)))
            out.append(((x0, y0, x1, y1), ids))
        return out
    group_of = {d.id: [e.id for e in g] for g in groups for d in g}
    side0 = SAMPLE_TILE_PX * a_px / A_PX  # a domain's tile, in image px
    for d in domains:
        if len(out) >= MAX_SAMPLE_TILES:
            break
        pts = state.graph.xy[state.domain == d.id]
        if len(pts) < MIN_SAMPLE_SITES:
            continue
        # the domain's column nearest its centroid (a domain need not be convex)
        c = pts[np.argmin(np.sum((pts - pts.mean(axis=0)) ** 2, axis=1))]
        if any(r[0] <= c[0] < r[2] and r[1] <= c[1] < r[3] and d.id in ids for r, ids in out):
            continue
        rot = math.radians(d.rotation_deg)
        turned = abs(d.rotation_deg) > ROTATION_TOLERANCE_DEG
        side = side0 / (abs(math.cos(rot)) + abs(math.sin(rot))) if turned else side0
        side = min(side, w, h)
        x0 = int(np.clip(round(c[0] - side / 2), 0, w - side))
        y0 = int(np.clip(round(c[1] - side / 2), 0, h - side))
        out.append(((x0, y0, x0 + int(side), y0 + int(side)), group_of[d.id]))
    return out


def detect_hexagons(frame: Frame, detector, image: np.ndarray, progress=None, cancel=None,
                    coverage: str = "frame"):
    """CNN-1 hexagons, domain by domain: each group of domains of one orientation is cropped
    and turned to the canonical orientation the detector learnt (``coverage="frame"``), or
    one tile per domain is (``"sample"``, :data:`HEXAGON_COVERAGES`).

    Returns ``(boxes (K, 4) in the image, scores (K,), centres (K, 2) px, windows)``: a box
    is the bounding box of the detected hexagon box turned back; only hexagons whose
    nearest column belongs to the crop's domains are kept (crops overlap). ``windows`` are
    the crops ``((x0, y0, x1, y1), domain ids)`` that were searched.
    """
    from scipy.spatial import cKDTree

    from .geometry import RotationFrame, bbox_of_points, box_corners
    from .runtime import check_cancel

    if coverage not in HEXAGON_COVERAGES:
        raise ValueError(f"hexagons must be one of {HEXAGON_COVERAGES}, got {coverage!r}")
    state = frame.state
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros((0, 2)), [])
    if state is None or not state.domains:
        return empty
    mat = get_material(frame.material)
    rotation = {d.id: d.rotation_deg for d in state.domains}
    windows = [(r, ids) for r, ids in _hexagon_windows(frame, coverage) if min(r[2] - r[0], r[3] - r[1]) >= 64]
    on = np.flatnonzero(state.domain >= 0)
    tree = cKDTree(state.graph.xy[on])
    all_b, all_s, all_c = [], [], []
    for gi, ((x0, y0, x1, y1), ids) in enumerate(windows):
        check_cancel(cancel)
        crop = image[y0:y1, x0:x1]
        rot = rotation[ids[0]]
        turned = RotationFrame.for_image(crop.shape, rot) if abs(rot) > ROTATION_TOLERANCE_DEG else None
        work = turned.warp(crop, fill=float(np.median(crop))) if turned else crop
        sub = None
        if progress is not None:
            def sub(done, total, gi=gi):
                progress(gi * 100 + int(100 * done / max(total, 1)), 100 * len(windows))
        # the detector rescales by the material's lattice constant: give it the one measured here
        boxes, scores = detector.detect(work, mat.a / frame.a_px, material=mat.name, progress=sub, cancel=cancel)
        boxes = np.asarray(boxes, float).reshape(-1, 4)
        scores = np.asarray(scores, float).reshape(-1)
        if not len(boxes):
            continue
        corners = box_corners(boxes)
        if turned is not None:
            corners = turned.from_canvas(corners)
        corners = corners + np.array([x0, y0])
        centres = corners.mean(axis=1)
        _, k = tree.query(centres)
        mine = np.isin(state.domain[on[k]], ids)
        all_b.append(bbox_of_points(corners[mine]))
        all_s.append(scores[mine])
        all_c.append(centres[mine])
    if not all_b:
        return (*empty[:3], windows)
    return np.concatenate(all_b), np.concatenate(all_s), np.concatenate(all_c), windows


def hexagon_support(model: SiteModel, centres: np.ndarray, windows: list | None = None) -> np.ndarray:
    """Detected hexagons centred on the two hollows next to each cell's X-M bond (0-2),
    i.e. the hexagons that cast the cell in 2DIP-Net (within 0.35 of a bond length).

    Given the searched ``windows`` (``detect_hexagons``), cells that no window covered
    (both hollows at least one lattice constant inside it, in one of its domains) get -1:
    not checked."""
    from scipy.spatial import cKDTree

    n = len(model.cells)
    hollows = hexagon_hollows(model)
    out = np.zeros(n, np.int64)
    if n and len(centres):
        a_f = model.a_px / math.sqrt(3.0)
        d, _ = cKDTree(centres).query(hollows.reshape(-1, 2), distance_upper_bound=0.35 * a_f)
        out = np.isfinite(d).reshape(-1, 2).sum(axis=1)
    if windows is not None and n:
        checked = np.zeros(n, bool)
        m = model.a_px
        lo, hi = hollows.min(axis=1), hollows.max(axis=1)
        for (x0, y0, x1, y1), ids in windows:
            checked |= (np.isin(model.cells.domain, ids) & (lo[:, 0] >= x0 + m) & (lo[:, 1] >= y0 + m)
                        & (hi[:, 0] <= x1 - 1 - m) & (hi[:, 1] <= y1 - 1 - m))
        out = np.where(checked, out, -1)
    return out


def hexagon_hollows(model: SiteModel) -> np.ndarray:
    """The centres ``(N, 2, 2)`` px of the two hexagons that cast each cell (2DIP-Net):
    the hollows on both sides of its X-M bond."""
    from .sites import CANONICAL_HOLLOW, CANONICAL_PARTNER

    c = model.cells
    if len(c) == 0:
        return np.zeros((0, 2, 2))
    lin = c.frame[:, :, :2]
    x = model.sites.xy[c.x]
    p = lin @ CANONICAL_PARTNER
    h = lin @ CANONICAL_HOLLOW
    return np.stack([x + h, x + p - h], axis=1)


def hexagon_check(frame: Frame, centres: np.ndarray, support: np.ndarray) -> dict[str, Any]:
    """How the detector's hexagons fit the sites: the share of hexagon centres on hollow
    sites (the rest on columns or off the lattice) and the share of cells cast by at least
    one hexagon. A detector that returns garbage fails one of the two. Cells no searched
    window covered (``support`` -1) are left out of the second."""
    from .lattice.cells import point_roles

    model = frame.model
    out: dict[str, Any] = {"n_hexagons": int(len(centres))}
    if model is None or not len(model.sites):
        return out
    if len(centres):
        role = point_roles(model.sites, model.domains, centres)
        out["hexagons_on_hollows"] = round(float(np.mean(role == 2)), 3)
        out["hexagons_on_columns"] = round(float(np.mean((role == 0) | (role == 1))), 3)
    checked = support >= 0
    if checked.any():
        out["cells_with_hexagon"] = round(float(np.mean(support[checked] > 0)), 3)
    return out


def classify_cells(frame: Frame, classifier, cls_image: np.ndarray, cls_material: str, alpha: float, beta: float,
                   progress=None, cancel=None) -> np.ndarray:
    """CNN-2 probabilities ``(N, 6)`` of every cell, cropped in its own frame."""
    from .sites import canonical_cell_box

    c = frame.model.cells
    # the pixel size at which the model's material has the lattice constant measured here
    ps = get_material(cls_material).a / frame.a_px
    return np.asarray(classifier.predict(cls_image, None, ps, material=cls_material, frames=c.frame,
                                         box=canonical_cell_box(alpha, beta), progress=progress, cancel=cancel),
                      dtype=float)


def classifier_input(classifier, image: np.ndarray, material: str, model_image: np.ndarray,
                     model_material: str) -> tuple[np.ndarray | None, str]:
    """The image the classifier is shown and the material it then shows: the
    contrast-matched ``model_image`` (of ``model_material``), or the image as it is for a
    classifier trained on ``material`` itself. ``(None, the classifier's material)`` when
    neither fits it."""
    clf_material = get_material(getattr(classifier, "material", material)).name
    if clf_material == material and model_material != material:
        return image, material
    if clf_material != model_material:
        return None, clf_material
    return model_image, model_material


def largest_cluster(xy: np.ndarray, labels: np.ndarray, a_px: float) -> tuple[int, int]:
    """``(size, class)`` of the largest group of adjacent cells (centres within 1.2 a) sharing
    one defect class (labels 1..5)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    best = (0, -1)
    for k in range(1, N_CLASSES):
        idx = np.flatnonzero(labels == k)
        if len(idx) <= best[0]:
            continue
        pairs = cKDTree(xy[idx]).query_pairs(1.2 * a_px, output_type="ndarray")
        g = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(idx),) * 2)
        _, comp = connected_components(g, directed=False)
        size = int(np.bincount(comp).max())
        if size > best[0]:
            best = (size, k)
    return best


def _relative_spread(h: np.ndarray) -> float:
    """Robust relative spread of column intensities: the MAD of the brighter half about the
    median, over the median (the width of the full-column level)."""
    h = np.asarray(h, float)
    if len(h) < 20:
        return float("nan")
    med = float(np.median(h))
    if med <= 0:
        return float("inf")
    r = h / med
    up = r[r >= 1.0]
    return float(1.4826 * np.median(np.abs(up - 1.0)))


def column_ratios(model: SiteModel) -> tuple[np.ndarray, np.ndarray]:
    """Intensity of every cell's X and M column over the median found column of its
    sublattice in its domain (1 = a full column, 0.5 = one chalcogen of two, 0 = none)."""
    s, c = model.sites, model.cells
    rx, rm = np.ones(len(c)), np.ones(len(c))
    for d in model.domains:
        sel = c.domain == d.id
        for r, idx in ((rx, c.x), (rm, c.m)):
            found = s.height[idx[sel & ~s.placed[idx]]]
            if len(found):
                r[sel] = s.height[idx[sel]] / max(float(np.median(found)), 1e-12)
    return rx, rm


def check_states(frame: Frame, labels: np.ndarray, flagged: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Check the classifier's column states against the image; what the frame cannot show is
    ``unresolved``, not a vacancy.

    * **Resolution.** The spread ``s`` of the chalcogen column intensities (relative to
      their median, on the brighter half, so vacancies do not widen it) says how well one
      column can be read: one chalcogen of two missing lowers it by 0.5, both by 1. Where
      ``0.5 / s`` is below :data:`MIN_LEVEL_SIGMAS` single vacancies (V_X1) are unresolved,
      where ``1 / s`` is, double ones (V_X2) too.
    * **Contradiction.** A cell whose called chalcogen state is more than
      :data:`MAX_STATE_MISMATCH` away from the intensity measured at its X site, while
      another state fits it better (e.g. V_X1 called on a column as bright as a full one),
      is flagged and its chalcogen vacancy not counted; a metal called missing where its
      column stands at more than ``0.5 + MAX_STATE_MISMATCH`` of the metal level is
      flagged and not counted as missing; one called present at a column below half the
      level is flagged.

    Cells whose chalcogen vacancy is not counted keep their metal state (Perfect or V_M)
    and are marked ``x_unresolved``. Updates ``flagged``; returns ``(labels, x_unresolved,
    info)``.
    """
    model = frame.model
    c = model.cells
    n = len(c)
    x_unres = np.zeros(n, bool)
    info: dict[str, Any] = {}
    if not n:
        return labels, x_unres, info
    rx, rm = column_ratios(model)
    counted = ~c.boundary
    vac = np.asarray(CLASS_VACANCIES)
    lab = labels.copy()
    ok = lab >= 0
    nx = np.where(ok, vac[np.clip(lab, 0, N_CLASSES - 1), 0], 0)
    nm = np.where(ok, vac[np.clip(lab, 0, N_CLASSES - 1), 1], 0)
    spread = _relative_spread(rx[counted]) if counted.sum() >= 20 else float("nan")
    info["chalcogen_spread"] = round(spread, 3) if spread == spread else None
    single = double = True
    if spread == spread:
        single = 0.5 / spread >= MIN_LEVEL_SIGMAS
        double = 1.0 / spread >= MIN_LEVEL_SIGMAS
    info["single_chalcogen_vacancies"] = "resolved" if single else "unresolved"
    info["double_chalcogen_vacancies"] = "resolved" if double else "unresolved"
    # the classifier's chalcogen state against the intensity at the site
    x1 = X1_LEVEL
    levels = np.array([1.0, x1, 0.0])
    expect = levels[np.clip(nx, 0, 2)]
    nearest = np.argmin(np.abs(rx[:, None] - levels[None]), axis=1)
    x_contra = ok & counted & (np.abs(rx - expect) > MAX_STATE_MISMATCH) & (nearest != nx)
    m_present = ok & counted & (nm == 1) & (rm > 0.5 + MAX_STATE_MISMATCH)  # a column stands there
    m_contra = (ok & counted & (nm == 0) & (rm < 0.5)) | m_present
    unres = ok & (((nx == 1) & (not single)) | ((nx == 2) & (not double)))
    drop = (unres | x_contra) & (nx > 0)
    nx_out = np.where(drop, 0, nx)  # no chalcogen vacancy where it is not resolved or contradicted
    nm_out = np.where(m_present, 0, nm)  # no metal vacancy on a metal column
    lab = np.where(ok, nx_out + 3 * nm_out, lab)
    x_unres[drop] = True
    if not (single and double):
        x_unres[ok & counted] = True
    flagged |= (x_contra | m_contra) & ok
    info["cells_contradicting_image"] = int(np.sum((x_contra | m_contra) & ok))
    mat = get_material(frame.material)
    if not (single and double):
        what = f"single {mat.chalcogen} vacancies (V_{mat.chalcogen}1)" if double else f"{mat.chalcogen} vacancies"
        frame.warnings.append(
            f"the {mat.chalcogen} columns are too noisy to read one by one (their intensities spread by "
            f"{100 * spread:.0f} %): {what} are reported as unresolved, not counted ({int(np.sum(unres))} cells "
            "called so by the classifier)")
        info["cells_unresolved"] = int(np.sum(unres))
    if x_contra.any() or m_contra.any():
        frame.warnings.append(
            f"{int(np.sum(x_contra | m_contra))} cells' classes contradict the column intensities measured at "
            f"their sites ({int(x_contra.sum())} {mat.chalcogen}, {int(m_contra.sum())} {mat.metal}): flagged for "
            "review; their chalcogen vacancies are not counted"
            + (f", nor {int(m_present.sum())} {mat.metal} vacancies called on a standing {mat.metal} column"
               if m_present.any() else ""))
    return lab, x_unres, info


def column_ratio_range(material: str, voltage_kv: float = 80.0) -> tuple[float, float]:
    """The lowest and highest metal/chalcogen column signal ratio of ``material``'s end
    members (each listed metal over each pair of listed chalcogens, dopants left out; the
    calibrated Z-contrast, :mod:`.zcontrast`)."""
    from .materials import CHALCOGENS, METALS
    from .zcontrast import chalcogen_signal, metal_signal

    comp = parse_composition(material)
    xs = [CHALCOGENS[x] for x, _ in comp.chalcogens]
    r = [float(metal_signal(METALS[m], voltage_kv)) / float(chalcogen_signal(z1, z2, voltage_kv))
         for m, _ in comp.metals for z1 in xs for z2 in xs]
    return min(r), max(r)


def check_plausibility(frame: Frame, labels: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    """Warnings (and flags on the cells concerned) where the result does not fit the image."""
    model = frame.model
    checks: dict[str, Any] = {}
    c = model.cells
    s = model.sites
    counted = labels >= 0
    n = int(counted.sum())
    if n:
        frac = float(np.mean(labels[counted] > 0))
        checks["defect_fraction"] = round(frac, 4)
        if frac > MAX_PLAUSIBLE_DEFECT_FRACTION:
            frame.warnings.append(
                f"{100 * frac:.0f} % of the cells are called defective: more than a nominally pure frame "
                "holds; check the material, the pixel size and the map before trusting the counts")
        centres = 0.5 * (s.xy[c.x] + s.xy[c.m])
        size, k = largest_cluster(centres, labels, frame.a_px)
        checks["largest_same_class_cluster"] = size
        if size > MAX_PLAUSIBLE_CLUSTER:
            names = get_material(frame.material).class_names
            frame.warnings.append(
                f"{size} adjacent cells are all {names[k]}: a region, not point defects? (a wrong sublattice "
                "assignment, a boundary or contamination): the cells are flagged")

            idx = np.flatnonzero(labels == k)
            flagged[idx] = True
    # sites on intensity maxima: found columns of the brighter sublattice should be brighter
    found = ~s.placed
    if found.any():
        xb = np.array([d.levels["X"] >= d.levels["M"] for d in model.domains])[s.domain]
        bright = np.where(xb, s.role == ROLE_X, s.role == ROLE_M)
        hb, hd = s.height[found & bright], s.height[found & ~bright]
        if len(hb) and len(hd):
            checks["bright_sublattice_brighter"] = round(float(np.median(hb) > np.median(hd)), 3)
        # the columns' ratio against the material's: a bilayer, a thick region or another material
        hm, hx = (s.height[found & ~s.boundary & (s.role == r)] for r in (ROLE_M, ROLE_X))
        if min(len(hm), len(hx)) >= 20 and np.median(hx) > 0 and np.median(hm) > 0:
            ratio = float(np.median(hm) / np.median(hx))
            lo, hi = column_ratio_range(frame.material)
            checks["metal_chalcogen_ratio"] = round(ratio, 3)
            if not lo / MAX_COLUMN_RATIO_FACTOR <= ratio <= hi * MAX_COLUMN_RATIO_FACTOR:
                frame.warnings.append(
                    f"the metal/chalcogen column ratio {ratio:.2f} is far from {frame.material}'s "
                    f"({lo:.2f}" + (f"-{hi:.2f}" if hi > lo * 1.01 else "") + " calibrated): a bilayer or thicker "
                    "region (stacked layers put metal and chalcogen atoms in the same columns), another material, or "
                    "a very different detector? The classes assume a monolayer of the given material")
    return checks


def _formula(material: str) -> str:
    """The material as it is reported: a binary's canonical name, an alloy's formula."""
    comp = parse_composition(str(material))
    return comp.host.name if comp.is_binary else comp.formula


def reading_features(states, cells) -> np.ndarray:
    """How well the frame separates its column levels, from the frame alone (no truth), over
    the sites of the cells off the boundaries (:data:`READING_FEATURES`):

    * ``log_sep_x``, ``log_sep_m``: log of the step from an empty column to a full one in
      host-column noise σ per sublattice, ``(1 - empty level) / σ`` (blur raises the empty
      level, noise and contamination widen σ);
    * ``doubt_x``: share of the chalcogen columns whose count the reading gives less than
      0.99 (columns near a decision boundary: there the posteriors already doubt);
    * ``empty_fitted_x``: 1 where the frame showed enough empty chalcogen columns for the
      fit to place their level, 0 where it assumed it at 0 (a blurred frame's raised empty
      columns then read as full, with confidence).
    """
    keep = ~np.asarray(cells.boundary, bool)
    xs = np.unique(np.asarray(cells.x)[keep])
    sep = []
    for role in ("X", "M"):
        sd = float(states.sigma.get(role, np.nan))
        e = float(states.empty_level.get(role, 0.0))
        sep.append(math.log(max(1.0 - e, 1e-3) / max(sd, 1e-3)) if np.isfinite(sd) else 0.0)
    cp = np.asarray(states.count_probability)
    doubt_x = float(np.mean(cp[xs] < 0.99)) if len(xs) else 0.0
    return np.array([sep[0], sep[1], doubt_x, float(states.empty_level.get("X", 0.0) != 0.0)])


#: Names of :func:`reading_features`, in order.
READING_FEATURES = ("log_sep_x", "log_sep_m", "doubt_x", "empty_fitted_x")


def load_reading_calibration(path: str | Path | None = None) -> dict[str, Any] | None:
    """The fitted calibration of the reading's confidence (None where the file is missing)."""
    import json

    p = Path(path) if path is not None else READING_CALIBRATION_PATH
    if not p.exists():
        return None
    cal = json.loads(p.read_text())
    if tuple(cal.get("features", ())) != READING_FEATURES or len(cal.get("temperature", ())) != len(READING_FEATURES) + 1:
        raise ValueError(f"{p.name}: calibrated on features {cal.get('features')}, the code computes "
                         f"{list(READING_FEATURES)}; rerun benchmarks/calibrate_reading.py")
    return cal


_READING_CALIBRATION: dict[str, Any] | None = None


def _reading_calibration() -> dict[str, Any] | None:
    global _READING_CALIBRATION
    if _READING_CALIBRATION is None:
        _READING_CALIBRATION = load_reading_calibration() or {}
    return _READING_CALIBRATION or None


def reading_temperature(features: np.ndarray, calibration: dict[str, Any] | None) -> float:
    """The frame's temperature of the reading's log-odds, ``exp(a · [1, features])`` (within
    e^±3); :data:`READING_TEMPERATURE` without a calibration."""
    if not calibration:
        return READING_TEMPERATURE
    z = float(np.dot(calibration["temperature"], np.r_[1.0, np.asarray(features, float)]))
    return math.exp(float(np.clip(z, -3.0, 3.0)))


def calibrated_reading(p_m: np.ndarray, p_x: np.ndarray, temperature: float) -> np.ndarray:
    """``t(p_m) · t(p_x)``: each probability with its log-odds divided by ``temperature``."""
    def temper(p):
        p = np.clip(p, 1e-12, 1 - 1e-12)
        return 1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) / temperature))

    return temper(p_m) * temper(p_x)


def reading_probabilities(states, cells, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The column reading's probabilities (untempered) of each cell's class: of its metal
    site's count (the class's: vacant or not) and of its chalcogen column's (its read
    count, or empty for a class with both atoms missing)."""
    vac = np.asarray(CLASS_VACANCIES)
    lab = np.clip(np.asarray(labels, int), 0, N_CLASSES - 1)
    p_empty_m = states.empty_probability[cells.m]
    p_m = np.where(vac[lab, 1] == 1, p_empty_m, 1.0 - p_empty_m)
    p_x = np.where(vac[lab, 0] == 2, states.empty_probability[cells.x], states.count_probability[cells.x])
    return p_m, p_x


def reading_confidence(states, cells, labels: np.ndarray, temperature: float | None = None,
                       calibration: dict[str, Any] | None = None) -> np.ndarray:
    """Probability (0-1) that the cells' classes are right by the column reading: its
    probability of the metal site's count times the chalcogen column's, each with its
    log-odds divided by the frame's temperature (:func:`reading_temperature` of
    :func:`reading_features`: the worse the frame separates its levels, the higher; the
    constants fitted by ``benchmarks/calibrate_reading.py``). The metal count is the
    class's (vacant or not); the chalcogen column's is its read count (or empty, for a
    class with both atoms missing). ``temperature``: this one instead (no frame dependence).
    """
    p_m, p_x = reading_probabilities(states, cells, labels)
    if temperature is None:
        cal = calibration if calibration is not None else _reading_calibration()
        temperature = reading_temperature(reading_features(states, cells) if cal else (), cal)
    return np.where(np.asarray(labels) >= 0, calibrated_reading(p_m, p_x, temperature), 0.0)


def head_image(image: np.ndarray, vacuum: np.ndarray) -> np.ndarray:
    """A copy of ``image`` with the ``vacuum`` (and masked) pixels at the film's dark level
    (:func:`~.analysis.dark_level`, as a NaN border is filled) for the site-state head: each
    of its patches subtracts its own low level, which a patch reaching into a black border
    takes from the border, reading the columns next to it too bright."""
    if vacuum.all():
        return image
    out = np.array(image, dtype=np.float32, copy=True)
    out[vacuum] = np.float32(dark_level(image, vacuum))
    return out


def read_states(frame: Frame, labels: np.ndarray, flagged: np.ndarray,
                probabilities: np.ndarray | None = None,
                x_unresolved: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Stage 7: read every site's state (:func:`.states.read_site_states`) and make the cell
    classes a view of them where the classifier cannot know.

    * An alloy or doped layer (the classifier learnt binaries): the classes come from the
      sites. A metal vacancy is counted only where the metal site reads ``vacant`` (a
      column of a lighter or heavier metal is a substituent, not a vacancy); the chalcogen
      vacancies are the atoms the X column misses (``2 - atoms``).
    * A binary: a metal vacancy called where the column reads as another metal (an
      unlisted lighter or heavier substituent) is a substituent; one the classifier is not
      sure of (< :data:`SURE_METAL_VACANCY`) where the reading finds the site more likely
      occupied than empty is not counted, nor one it is sure of where the classifier's odds
      times the reading's odds of an empty site fall below one, nor one on a site where a
      column peak was found on the site (:data:`MAX_FOUND_PEAK_OFFSET_SIGMAS`) and the
      reading is ``unresolved`` (unless it gives the site
      :data:`MIN_EMPTY_ON_FOUND_COLUMN`), nor a chalcogen vacancy called on a column that
      reads full, nor a one-atom chalcogen vacancy (V_X1) on a column the reading finds
      empty (the two disagree on the count: the column's state is doubtful, marked in
      ``x_unresolved``); the cells are flagged. A metal site where no column was found
      and that the reading calls ``vacant`` is a metal vacancy whatever the classifier
      called (flagged), unless vacuum lies within :data:`VACANCY_VACUUM_MARGIN_A`.
    * An ``unresolved`` chalcogen column does not count as a vacancy, nor (in an alloy) an
      ``unresolved`` metal site; the cell is flagged if the classifier called one there
      (in a binary the classifier's metal vacancy stands, flagged, but for one on a found
      column peak, see above).

    Returns the labels, the cells whose class the reading changed, and the numbers for
    ``checks``.
    """
    from .states import MIN_POSTERIOR, read_site_states

    model = frame.model
    c, n = model.cells, len(model.cells)
    image = frame.image
    if frame.site_head is not None and frame.vacuum is not None and frame.vacuum.any():
        image = head_image(frame.image, frame.vacuum)
    st = read_site_states(model, frame.material, image=image, site_head=frame.site_head, noise=frame.noise_model)
    frame.states = st
    info: dict[str, Any] = {}
    if not n:
        return labels, np.zeros(0, bool), info
    comp = parse_composition(frame.material)
    vac = np.asarray(CLASS_VACANCIES)
    ok = labels >= 0
    lab = np.clip(labels, 0, N_CLASSES - 1)
    nx, nm = np.where(ok, vac[lab, 0], 0), np.where(ok, vac[lab, 1], 0)
    ms, xs = st.state[c.m], st.state[c.x]
    m_unres, x_unres = ms == "unresolved", xs == "unresolved"
    sub = np.isin(ms, ["heavier", "lighter"]) | (~np.isin(ms, ["vacant", "unresolved", "metal?",
                                                               st.host.get("M", "")]))
    if not comp.is_binary:
        nm_new = np.where(ms == "vacant", 1, 0)
        nx_new = np.where(x_unres, 0, np.clip(2 - st.atoms[c.x], 0, 2))
    else:
        # a metal vacancy the classifier is not sure of needs the column reading to give the
        # site a fair chance of being empty
        p_vm = np.zeros(n)
        if probabilities is not None and len(probabilities) == n:
            p_vm = np.clip(probabilities[:, vac[:, 1] == 1].sum(axis=1), 1e-9, 1 - 1e-9)
        p_empty = np.clip(st.empty_probability[c.m], 1e-12, 1 - 1e-12)
        odds = p_vm / (1 - p_vm) * p_empty / (1 - p_empty)
        m_full = (p_empty < MIN_EMPTY_PROBABILITY) & ((p_vm < SURE_METAL_VACANCY) | (odds < 1.0))
        # a column peak stands on the site and its reading cannot tell; the peak's offset
        # (px) from its position averaged with where its neighbours put it (``fitted``),
        # against the found metal columns' scatter (a dim column found by its intensity
        # where the lattice puts it has none)
        s = model.sites
        offset = np.hypot(*(s.xy - s.fitted).T)
        ref = (s.role == ROLE_M) & ~s.placed & ~s.boundary & (offset > 0)
        on_site = ~s.placed
        if ref.sum() >= 30:  # enough columns to measure the scatter
            sigma = float(np.median(offset[ref])) / math.sqrt(2.0 * math.log(2.0))  # Rayleigh
            on_site &= offset <= MAX_FOUND_PEAK_OFFSET_SIGMAS * sigma
        m_full |= on_site[c.m] & m_unres & (p_empty < MIN_EMPTY_ON_FOUND_COLUMN)
        # no column was found on the site and its reading calls it vacant: a metal vacancy
        # the classifier missed
        m_empty = s.placed[c.m] & (ms == "vacant")
        if frame.vacuum is not None and m_empty.any():
            from .vacuum import distance_to_mask

            hh, ww = frame.vacuum.shape
            at = np.flatnonzero(m_empty)
            xy = np.rint(s.xy[c.m[at]]).astype(np.intp)
            d = distance_to_mask(frame.vacuum, np.clip(xy[:, 1], 0, hh - 1), np.clip(xy[:, 0], 0, ww - 1))
            m_empty[at[d <= VACANCY_VACUUM_MARGIN_A * model.a_px]] = False
        nm_new = np.where(sub | m_full, 0, np.where(m_empty, 1, nm))
        info["metal_vacancies_read_not_classified"] = int(np.sum(ok & m_empty & (nm == 0) & ~c.boundary))
        # a chalcogen vacancy is counted where the column reading agrees: not on a column
        # that reads full, not where the column cannot be read
        x_full = (st.atoms[c.x] == 2) & (st.count_probability[c.x] >= MIN_POSTERIOR)
        # one atom missing where the reading finds none: which count is right is doubtful
        x_other = ok & (nx == 1) & (st.atoms[c.x] == 0)
        nx_new = np.where(((nx > 0) & (x_full | x_unres)) | x_other, 0, nx)
        if x_unresolved is not None:
            x_unresolved |= x_other
        info["chalcogen_counts_disputed"] = int(np.sum(x_other & ~c.boundary))
    changed = ok & ((nm_new != nm) | (nx_new != nx))
    doubt = ok & ((m_unres & (nm == 1)) | (x_unres & (nx > 0)))
    flagged |= (changed & comp.is_binary) | doubt
    out = np.where(ok, nx_new + 3 * nm_new, labels)
    info["cells_changed_by_site_states"] = int(np.sum(changed))
    info["metal_substituent_sites"] = int(np.sum(sub & ~c.boundary))
    mat = get_material(frame.material)
    if comp.is_binary and np.any(changed & sub):
        frame.warnings.append(
            f"{int(np.sum(changed & sub))} {mat.metal} vacancies called on columns that read as another metal "
            f"(effective Z from the column intensity): counted as substituents, flagged for review")
    n_sub = int(np.sum(sub & ~c.boundary))
    if comp.is_binary and n_sub > 0.02 * max(n, 1):
        frame.warnings.append(
            f"{n_sub} metal columns read as another element than {mat.metal} ({100 * n_sub / n:.1f} % of the "
            "cells): an alloy or dopant? give the composition (e.g. Mo0.8W0.2S2, MoS2:Re) to count them")
    frame.warnings.extend(st.notes)
    return out, changed, info


# --------------------------------------------------------------------------- shared runs
def _non_finite(image) -> np.ndarray | None:
    """The non-finite pixels of a 2-D float image (None where every pixel is finite)."""
    a = np.asarray(image)
    if a.ndim != 2 or a.dtype.kind != "f" or np.isfinite(a.sum(dtype=np.float64)):
        return None
    return ~np.isfinite(a)


def locate_cells(image: np.ndarray, pixel_size: float | None, material: str, exclude_vacuum: bool = True,
                 timings: dict[str, float] | None = None, hexagons=None, *, pixel_size_source: str = "given",
                 trust_pixel_size: bool = False, progress: ProgressCallback | None = None,
                 cancel: CancelCallback | None = None, keep_state: bool = True) -> Frame:
    """Stages 1-5 (image, noise, domains, sites, vacuum): the cells of an image, unclassified.

    The network pipeline (:func:`analyze`) and the baselines (:mod:`.classical`,
    :mod:`.fcn`) all start here. ``hexagons(frame) -> (K, 2) px`` (optional) returns
    hexagon centres once the domains are known; they check each domain's hollow sites
    (:meth:`.lattice.LatticeState.check_hollows`). ``frame.model`` is None when the image
    has no lattice (the warnings say why); cells whose centre lies in the vacuum are
    dropped.

    ``pixel_size_source`` (``"given"`` or ``"metadata"``) says where ``pixel_size`` came
    from; ``trust_pixel_size`` keeps it when it disagrees with the lattice (see
    :func:`check_image`). ``progress(done, 100)`` reports the stages in :func:`analyze`'s
    percent (lattice 5, noise 8, domains 18); ``cancel()`` is checked between them.
    ``keep_state=False`` drops the lattice search's working image and column graph
    (``frame.work``, ``frame.state``) once the sites are complete.
    """
    if pixel_size is not None:
        pixel_size = float(pixel_size)
        if not math.isfinite(pixel_size) or pixel_size <= 0:
            raise ValueError(f"pixel_size must be a positive number of Å/px, got {pixel_size}")
    if pixel_size_source not in ("given", "metadata"):
        raise ValueError(f"pixel_size_source must be 'given' or 'metadata', got {pixel_size_source!r}")
    img, warnings = prepare_image(image, copy=False)  # float32 or 8/16-bit input: read in place, not copied
    frame = Frame(image=img, material=_formula(material), pixel_size=pixel_size,
                  pixel_size_source=pixel_size_source if pixel_size is not None else "unknown", warnings=warnings,
                  trust_pixel_size=bool(trust_pixel_size), pixel_size_given=pixel_size)
    if timings is not None:
        frame.timings = timings

    def timed(name, fn, *args, done=None):
        t0 = time.perf_counter()
        out = fn(*args)
        frame.timings[name] = frame.timings.get(name, 0.0) + time.perf_counter() - t0
        if progress is not None and done is not None:
            progress(done, 100)
        check_cancel(cancel)
        return out

    missing = _non_finite(image)
    if not timed("lattice", check_image, frame, missing, done=5):
        return frame
    timed("lattice", check_export, frame, image if np.ndim(image) == 3 else None, missing)
    timed("noise", estimate_noise, frame, done=8)
    timed("sites", find_domains, frame, done=18)
    if hexagons is not None:
        centres = hexagons(frame)
        if centres is not None and len(centres):
            frame.state.check_hollows(centres)
    timed("sites", complete_sites, frame)
    if not keep_state:
        # the lattice search's working image (a quarter of the frame at 0.1 Å/px) and column
        # graph are not read past the sites: not held through the vacuum and later stages
        frame.work = frame.state = None
        release_memory()
    if exclude_vacuum:
        timed("vacuum", find_vacuum, frame)
    if frame.masked is not None:
        frame.vacuum = frame.masked if frame.vacuum is None else frame.vacuum | frame.masked
    timed("vacuum", remeasure_heights, frame)
    model = frame.model
    if (frame.vacuum is not None or frame.inset is not None) and len(model.cells):
        from .exports import exclusion_zone
        from .geometry import nearest_pixel

        centres = 0.5 * (model.sites.xy[model.cells.x] + model.sites.xy[model.cells.m])
        px = nearest_pixel(centres, frame.image.shape)
        keep = np.ones(len(model.cells), bool)
        if frame.vacuum is not None:
            keep &= ~frame.vacuum[px]
            frame.n_vacuum = int((~keep).sum())
        if frame.inset is not None:  # (not vacuum: its cells are not counted as the vacuum's)
            keep &= ~exclusion_zone(frame.inset, frame.a_px)[px]
        model.cells = model.cells.subset(keep)
    return frame


def unresolved_chalcogen_warning(frame: Frame, labels: np.ndarray, x_unresolved: np.ndarray,
                                 probabilities: np.ndarray | None) -> None:
    """Warn where counted cells' chalcogen columns could not be read (``x_unresolved``):
    their chalcogen vacancies are not in the counts, which are then lower bounds for the
    classes with one (the unread columns are mostly the doubtful ones, so a frame's V_X1
    count can fall well short); says how many of them the classifier called such a class.
    Cells whose column the reading found full are not among them (a vacancy the classifier
    called there was overruled, :func:`~.analysis.unread_cells`; the contradiction is warned
    of and flagged by :func:`check_states`)."""
    counted = unread_cells(labels, x_unresolved, frame.states,
                           frame.model.cells.x if frame.model is not None else None)
    k = int(counted.sum())
    if not k:
        return
    x_vac = np.asarray(CLASS_VACANCIES)[:, 0] > 0
    called = ""
    if probabilities is not None and len(probabilities) == len(labels):
        top = np.argmax(np.asarray(probabilities)[counted], axis=1)
        called = f"; the classifier called {int(np.sum(x_vac[top]))} of them a chalcogen vacancy"
    mat = get_material(frame.material)
    frame.warnings.append(
        f"{k} cells' {mat.chalcogen} columns could not be read (unresolved): their {mat.chalcogen} vacancies are not "
        f"counted, so the counts of the classes with one are lower bounds{called} (counts_unread_as_classified in "
        "the summary counts them so)")


def make_result(frame: Frame, labels: np.ndarray, confidence: np.ndarray, probabilities: np.ndarray | None,
                *, alpha: float = 0.65, beta: float = 0.5, low_confidence: float = 0.6,
                hexagons: tuple[np.ndarray, np.ndarray] | None = None, support: np.ndarray | None = None,
                checks: dict[str, Any] | None = None) -> Result:
    """A :class:`~.analysis.Result` of the frame's cells with the given classes (boundary
    cells get :data:`~.analysis.BOUNDARY`), checked for plausibility."""
    model = frame.model
    if model is None:
        return empty_result(frame.image.shape, frame.material, frame.pixel_size, frame.pixel_size_source,
                            alpha, beta, frame.warnings, low_confidence)
    cells, s = model.cells, model.sites
    n = len(cells)
    labels = np.where(cells.boundary, BOUNDARY, labels).astype(int) if n else np.zeros(0, int)
    confidence = np.where(cells.boundary, 0.0, confidence) if n else np.zeros(0)
    checks = dict(checks or {})
    x_unresolved = np.zeros(n, bool)
    flagged = (confidence < low_confidence) & (labels >= 0)
    binary = parse_composition(frame.material).is_binary
    if n and np.any(labels >= 0) and binary:  # alloys: the site states decide (read_states)
        labels, x_unresolved, info = check_states(frame, labels, flagged)
        checks.update(info)
    if n:
        t0 = time.perf_counter()
        labels, changed, info = read_states(frame, labels, flagged, probabilities, x_unresolved)
        checks.update(info)
        st = frame.states
        if probabilities is not None and changed.any():
            # a class the column reading set: the reading's confidence
            confidence = np.where(changed, reading_confidence(st, cells, labels), confidence)
        x_unresolved |= st.state[cells.x] == "unresolved"
        if not binary and np.any(labels >= 0):
            # the classifier learnt binaries: here the confidence is the site reading's
            confidence = reading_confidence(st, cells, labels)
            flagged[:] = (labels >= 0) & ((confidence < low_confidence) | (st.state[cells.m] == "unresolved")
                                          | (st.state[cells.x] == "unresolved"))
        frame.timings["states"] = time.perf_counter() - t0
    if n:
        checks.update(check_plausibility(frame, labels, flagged))
        if "cells_unresolved" not in checks:  # else the frame-wide warning of check_states says it
            unresolved_chalcogen_warning(frame, labels, x_unresolved, probabilities)
    else:
        frame.warnings.append("no unit cells found")
    for d in model.domains:
        d.n_cells = int(np.sum((cells.domain == d.id) & ~cells.boundary))
    placed = (s.placed[cells.x].astype(np.int64) + 2 * s.placed[cells.m].astype(np.int64)) if n else np.zeros(0, int)
    rotation = float(max(model.domains, key=lambda d: d.n_cells).rotation_deg) if model.domains else 0.0
    hex_boxes, hex_scores = hexagons if hexagons is not None else (np.zeros((0, 4)), np.zeros(0))
    return Result(
        material=frame.material, pixel_size=float(frame.pixel_size), pixel_size_source=frame.pixel_size_source,
        image_shape=tuple(frame.image.shape), alpha=alpha, beta=beta,
        hexagon_boxes=np.asarray(hex_boxes, float).reshape(-1, 4), hexagon_scores=np.asarray(hex_scores, float).reshape(-1),
        boxes=cells.boxes if n else np.zeros((0, 4)),
        x_sites=s.xy[cells.x] if n else np.zeros((0, 2)), m_sites=s.xy[cells.m] if n else np.zeros((0, 2)),
        ij=s.nm[cells.x] if n else np.zeros((0, 2), int),
        support=np.zeros(n, np.int64) if support is None else support, labels=labels, confidence=confidence,
        probabilities=probabilities, flagged=flagged, corrected=np.zeros(n, bool), domain=cells.domain.copy(),
        placed=placed, frames=cells.frame.copy(), sites=model, x_unresolved=x_unresolved,
        low_confidence=low_confidence,
        lattice_rotation_deg=rotation, noise=frame.noise, vacuum_mask=frame.vacuum, n_excluded_vacuum=frame.n_vacuum,
        inset_mask=frame.inset,
        checks=checks, models=frame.models, timings=frame.timings, warnings=frame.warnings,
        site_states=frame.states,
    )


# --------------------------------------------------------------------------- analyze
def _model_image(frame: Frame, positions: np.ndarray, roles: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, str]:
    """The image as the networks should see it, and the material it then shows: other
    materials contrast-matched to :data:`MODEL_MATERIAL` (:func:`.contrast.match_contrast`)."""
    from .contrast import match_contrast

    mat = get_material(frame.material)
    if mat.name == MODEL_MATERIAL:
        return frame.image, mat.name
    matched = match_contrast(frame.image, positions, roles, found, frame.a_px, mat.name, MODEL_MATERIAL)
    if matched is None:
        note = (f"the {mat.name} sublattices could not be measured: the networks (trained on {MODEL_MATERIAL}) "
                "see the image as it is")
        if note not in frame.warnings:
            frame.warnings.append(note)
        return frame.image, mat.name
    note = matched.describe(mat.name, MODEL_MATERIAL)
    if not any(w.startswith(f"{mat.name} contrast matched") for w in frame.warnings):
        frame.warnings.append(note)
        lam = frame.noise.get("poisson_lambda")
        x_amp, m_amp = matched.x_level - matched.background, matched.m_level - matched.background
        if lam is not None and np.isfinite(lam) and max(x_amp, m_amp) > 0:
            lam_x = lam * x_amp / max(x_amp, m_amp)  # counts at a full chalcogen column
            if lam_x < NOISE_LAMBDA_RANGE[0]:
                frame.warnings.append(
                    f"the {mat.chalcogen} columns get only ~{lam_x:.2g} counts (Poisson), below the "
                    f"{NOISE_LAMBDA_RANGE[0]:g} the networks were trained for: chalcogen vacancies are "
                    "uncertain; check flagged cells or compare with the classical reference")
    return matched.image, MODEL_MATERIAL


#: Networks loaded by :func:`_resolve_model`: ``(kind, weights file, device)`` ->
#: ``((mtime ns, size), model)``; a file written since is loaded again.
_LOADED: dict[tuple[str, str, str], tuple[tuple[int, int], Any]] = {}


def _weights_file(model: str | Path | None, kind: str) -> Path:
    """The weights file a name or path stands for (None: the shipped default)."""
    if kind == "classifier":
        from .classification import classifier_weights

        return classifier_weights(model)
    if kind == "site_head":
        from .sitehead import site_head_weights

        return site_head_weights(model)
    from .runtime import default_weights

    return default_weights(kind) if model is None else Path(model)


def _resolve_model(model, kind: str, device: str):
    """A model object as given, or the one loaded from a path / the shipped weights: loaded
    once per file and device (a frame after frame, or a dock's every run, does not read the
    weights again), again when the file has changed since."""
    if model is not None and not isinstance(model, (str, Path)):
        return model
    if kind == "detector":
        from .detection import load_detector as loader
    elif kind == "site_head":
        from .sitehead import load_site_head

        def loader(path, device):  # the head runs on the CPU
            return load_site_head(path)
    else:
        from .classification import load_classifier as loader
    path = _weights_file(model, kind)
    try:
        stat = path.stat()
    except OSError:
        return loader(model, device=device)  # the loader's error names the missing file
    key, signature = (kind, str(path.resolve()), device), (stat.st_mtime_ns, stat.st_size)
    hit = _LOADED.get(key)
    if hit is not None and hit[0] == signature:
        return hit[1]
    loaded = loader(model, device=device)
    _LOADED[key] = (signature, loaded)
    return loaded


def _card_summary(card: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "model", "version", "config", "trained", "input_size", "channels", "a_px", "sha256")
    return {k: card[k] for k in keys if k in card}


def analyze(
    image: np.ndarray,
    pixel_size: float | None = None,
    material: str = "MoTe2",
    alpha: float = 0.65,
    beta: float = 0.5,
    device: str = "auto",
    detector=None,
    classifier=None,
    classify: bool = True,
    low_confidence: float = 0.6,
    exclude_vacuum: bool = True,
    use_detector: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
    pixel_size_source: str = "given",
    trust_pixel_size: bool = False,
    hexagons: str = "frame",
    site_head="default",
) -> Result:
    """Find and classify every unit cell of a HAADF-STEM image.

    Parameters
    ----------
    image : (rows, cols) array
        Any numeric dtype; RGB is converted to grey.
    pixel_size : float, optional
        Å/px. When None it is estimated from the lattice found in the image and the
        material's lattice constant (``Result.pixel_size_source == "estimated"``). A given
        value that disagrees with the lattice by more than :data:`PIXEL_SIZE_TOLERANCE`
        (10 %) is replaced by the lattice's (source ``"lattice"``), with a warning naming
        both, unless ``trust_pixel_size``.
    material : str
        ``"MoTe2"`` (default), ``"MoS2"``, ``"MoSe2"``, ``"WS2"``, ``"WSe2"``, or an alloy or
        doped formula (``"Mo0.8W0.2Te2"``, ``"WS2(1-x)Se2x"``, ``"MoS2:Re"``; see
        :func:`~.materials.parse_composition`): the networks run on the host binary, the
        site states tell the species apart.
    alpha, beta : float
        Hexagonal-net casting crop ratios (paper: 0.65, 0.5): the crop of each cell.
    device : str
        ``"auto"`` (GPU when there is one), ``"cpu"`` or ``"cuda"``.
    detector, classifier : model object or path, optional
        Defaults: the shipped weights. Objects must follow the contracts in
        docs/architecture.md.
    classify : bool
        False: find cells only (labels ``unclassified``).
    low_confidence : float
        Cells whose top probability is below this are flagged for review.
    exclude_vacuum : bool
        Find vacuum (a hole, the film's edge) and leave the cells there out.
    use_detector : bool
        Run CNN-1 (hexagons). The cells come from the sites either way; the hexagons give
        each cell its support and are checked against the sites.
    hexagons : str
        Where CNN-1 looks (:data:`HEXAGON_COVERAGES`): ``"frame"`` every domain, all of it
        (the hexagons layer covers the image); ``"sample"`` one tile per domain
        (at most :data:`MAX_SAMPLE_TILES`), enough to check each domain's hollow sites at
        a fraction of the cost; cells outside the tiles get support -1 (not checked).
    site_head : SiteHead, str, Path or None
        An alloy's or doped layer's metal sites are read from the column intensities the
        site-state head measures (:mod:`.sitehead`; ``"default"`` the shipped one, or a
        weights file), not from the column heights: on blurred, low-dose Mo–W alloys and
        heavy dopants it tells vacancies from substituents far better
        (docs/reports/site_head.md). None: the heights. Binaries, and layers listing a
        light (3d) metal (the head reads those as vacancies), are read from the heights
        either way (the head is not loaded for a binary).
    progress : callable(done, total), optional
        Percent done: lattice and sites 0–20, hexagons (CNN-1, per tile) 20–60, classes
        (CNN-2, per batch) 60–100.
    cancel : callable() -> bool, optional
        Checked between stages; raises :class:`~.runtime.Cancelled`.
    pixel_size_source : str
        Where ``pixel_size`` came from: ``"given"`` (typed, passed in) or ``"metadata"``
        (the file's); the result reports it, or ``"lattice"`` when it was replaced.
    trust_pixel_size : bool
        Keep a given pixel size that disagrees with the lattice (a warning says so).

    Returns
    -------
    Result
    """
    t_start = time.perf_counter()
    if hexagons not in HEXAGON_COVERAGES:
        raise ValueError(f"hexagons must be one of {HEXAGON_COVERAGES}, got {hexagons!r}")
    from .states import head_reads

    if not head_reads(parse_composition(material)):
        site_head = None  # a binary, or a light 3d metal listed: read from the heights, the head not loaded
    if site_head is not None:  # a missing or corrupt head fails before any work
        site_head = _resolve_model(site_head, "site_head", device)
    mat = get_material(material)
    steps = 100  # progress in percent: sites 0-20, hexagons 20-60, classes 60-100

    def step(k):
        if progress:
            progress(k, steps)
        check_cancel(cancel)

    def sub(lo, hi):
        if progress is None:
            return None
        return lambda done, total: progress(lo + int((hi - lo) * done / max(total, 1)), steps)

    step(0)
    found: dict[str, Any] = {}

    def find_hexagons(frame: Frame):
        """CNN-1 on the image (other materials: contrast-matched from the columns found)."""
        from .contrast import model_positions
        from .lattice import complete_sites as _complete

        found["det"] = _resolve_model(detector, "detector", device)
        # the sites as the intensities have them (kept unless the hexagons change a domain's roles)
        t0 = time.perf_counter()
        frame.model = _complete(frame.state)
        frame.timings["sites"] = frame.timings.get("sites", 0.0) + time.perf_counter() - t0
        found["det_image"] = _model_image(frame, *model_positions(frame.model))
        release_memory()
        t0 = time.perf_counter()
        boxes, scores, centres, windows = detect_hexagons(frame, found["det"], found["det_image"][0], sub(20, 60),
                                                          cancel, coverage=hexagons)
        frame.timings["detection"] = time.perf_counter() - t0
        release_memory()  # the detector's freed bands and tiles, ahead of the vacuum's full-size arrays
        found["hexagons"] = (boxes, scores, centres, windows if hexagons == "sample" else None)
        return centres

    frame = locate_cells(image, pixel_size, material, exclude_vacuum, hexagons=find_hexagons if use_detector else None,
                         pixel_size_source=pixel_size_source, trust_pixel_size=trust_pixel_size,
                         progress=progress, cancel=cancel, keep_state=False)
    frame.site_head = site_head
    if site_head is not None:
        frame.models["site_head"] = _card_summary(getattr(site_head, "card", {}))
    img = frame.image

    def timed(name, fn, *args, **kw):
        release_memory()  # the freed temporaries of the stages before, ahead of this one's full-size arrays
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        frame.timings[name] = frame.timings.get(name, 0.0) + time.perf_counter() - t0
        return out

    model = frame.model
    if model is None:
        return make_result(frame, np.zeros(0, int), np.zeros(0), None, alpha=alpha, beta=beta,
                           low_confidence=low_confidence)
    step(60)
    # the networks learnt MODEL_MATERIAL: other materials are shown to them with its contrast,
    # matched on every site (placed ones included: a faint sublattice is mostly placed)
    if "det_image" in found and not any(d.roles_from_hexagons for d in model.domains):
        model_img, model_material = found["det_image"]
    else:
        from .contrast import model_positions

        model_img, model_material = timed("contrast", _model_image, frame, *model_positions(model))
    cells = model.cells
    n = len(cells)
    hexagons_out = None
    support = np.zeros(n, np.int64)
    checks: dict[str, Any] = image_checks(frame)
    if use_detector and "hexagons" in found:
        det = found["det"]
        hex_boxes, hex_scores, centres, windows = found["hexagons"]
        hexagons_out = (hex_boxes, hex_scores)
        support = hexagon_support(model, centres, windows)
        checks.update(hexagon_check(frame, centres, support))
        checks["hexagons"] = hexagons
        if windows is not None:
            checks["hexagon_windows"] = [[int(v) for v in r] for r, _ in windows]
        frame.models["detector"] = _card_summary(getattr(det, "card", {}))
        on = checks.get("hexagons_on_hollows", 0.0)
        cast = checks.get("cells_with_hexagon", 0.0)
        n_checked = int(np.sum(support >= 0))
        consistent = not (n_checked >= 20 and (on < MIN_HEXAGONS_ON_HOLLOWS or cast < MIN_CELLS_WITH_HEXAGON))
        checks["detector_consistent"] = consistent
        if not consistent:
            frame.warnings.append(
                f"the hexagon detector (CNN-1) does not fit the columns found in the image: {len(hex_boxes)} "
                f"hexagons, {100 * on:.0f} % of them on hollow sites, {100 * cast:.0f} % of the cells cast by one; "
                "its output is not used")
            support = np.minimum(support, 0)  # unchecked cells stay -1
    step(60)
    probs = None
    labels = np.full(n, UNCLASSIFIED, dtype=int)
    conf = np.zeros(n)
    if classify and n:
        clf = _resolve_model(classifier, "classifier", device)
        cls_img, cls_material = classifier_input(clf, img, mat.name, model_img, model_material)
        if cls_img is None:
            frame.warnings.append(f"the classifier was trained for {cls_material} and the {mat.name} image could "
                                  "not be matched to it: cells left unclassified")
        else:
            probs = timed("classification", classify_cells, frame, clf, cls_img, cls_material, alpha, beta,
                          sub(60, 100), cancel)
            labels = probs.argmax(axis=1)
            conf = probs.max(axis=1)
            frame.models["classifier"] = _card_summary(getattr(clf, "card", {}))
    # the networks' (contrast-matched, full-size) image is not needed from here on
    found.pop("det_image", None)
    model_img = cls_img = None  # noqa: F841
    if frame.vacuum is not None and probs is not None and n:
        # empty cells (no X, no M) touching the vacuum are part of it
        from .vacuum import grow_into_empty_cells

        centres = 0.5 * (model.sites.xy[cells.x] + model.sites.xy[cells.m])
        frame.vacuum, taken = grow_into_empty_cells(frame.vacuum, centres, labels == N_CLASSES - 1, frame.a_px)
        if taken.any():
            keep = ~taken
            model.cells = cells.subset(keep)
            probs, labels, conf, support = probs[keep], labels[keep], conf[keep], support[keep]
            frame.n_vacuum += int(taken.sum())
    step(steps)
    res = make_result(frame, labels, conf, probs, alpha=alpha, beta=beta, low_confidence=low_confidence,
                      hexagons=hexagons_out, support=support, checks=checks)
    res.timings["total"] = time.perf_counter() - t_start
    return res
