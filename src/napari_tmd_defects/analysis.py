"""``analyze(image, pixel_size=...)``: image -> unit cells, classes, counts and concentrations.

The pipeline: validate the image, find the lattice (estimating the pixel size when it is
not given), detect hexagons (CNN-1), cast and deduplicate unit cells (hexagonal-net
casting, lattice completion), classify every cell (CNN-2), and report. Pure numpy/torch:
no Qt here; the napari widgets and the CLI call this function.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .geometry import estimate_lattice
from .io import atomic_write
from .materials import N_CLASSES, get_material
from .runtime import CancelCallback, ProgressCallback, check_cancel

__all__ = ["Result", "analyze", "prepare_image", "UNCLASSIFIED"]

#: Label of cells that were not classified.
UNCLASSIFIED = -1
#: Pixel sizes (Å/px) the models were trained for; outside it a warning is given.
TRAINED_PIXEL_SIZES = (0.02, 0.16)
#: Shot-noise levels (counts at the brightest column) covered by training.
NOISE_LAMBDA_RANGE = (4.0, 60.0)
#: Lattices turned by more than this (degrees) are analysed on a canonically turned copy.
ROTATION_TOLERANCE_DEG = 2.0
#: Material the shipped networks were trained on; images of other materials are shown to
#: them with its contrast (:mod:`.contrast`).
MODEL_MATERIAL = "MoTe2"
#: Below this fraction of the cells the lattice holds, the detector is taken to have failed.
FALLBACK_FRACTION = 0.7
#: Minimum lattice-peak strength of :func:`geometry.estimate_lattice` to trust a lattice.
MIN_LATTICE_STRENGTH = 4.5


@dataclass
class Result:
    """Everything :func:`analyze` found in one image. Coordinates in px (x = column).

    Per-cell arrays (length N): ``boxes`` (N, 4) ``x_min, y_min, x_max, y_max``;
    ``x_sites``, ``m_sites`` (N, 2) X- and M-column estimates; ``ij`` lattice indices;
    ``support`` number of detected hexagons that cast the cell (0 = recovered from the
    lattice); ``labels`` class ids (-1 = unclassified); ``confidence`` softmax probability
    of the label; ``probabilities`` (N, 6) or None; ``flagged`` low-confidence cells to
    review; ``corrected`` cells whose class a user set by hand.

    A lattice that is not in the canonical orientation is analysed on a copy turned by
    ``-lattice_rotation_deg``; ``canonical_hexagons`` keeps the hexagon boxes in that
    frame (``hexagon_boxes`` are their bounding boxes in the image).

    ``vacuum_mask`` marks a hole or an edge of the film (see :mod:`.vacuum`); cells whose
    centre lies there are not reported, so they count neither as defects nor in the area.
    """

    material: str
    pixel_size: float
    pixel_size_source: str
    image_shape: tuple[int, int]
    alpha: float
    beta: float
    hexagon_boxes: np.ndarray
    hexagon_scores: np.ndarray
    boxes: np.ndarray
    x_sites: np.ndarray
    m_sites: np.ndarray
    ij: np.ndarray
    support: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    probabilities: np.ndarray | None
    flagged: np.ndarray
    corrected: np.ndarray
    low_confidence: float = 0.6
    lattice_rotation_deg: float = 0.0
    canonical_hexagons: np.ndarray | None = None
    noise: dict[str, float] = field(default_factory=dict)
    #: vacuum (hole, edge) found in the image, px mask of the image's shape, or None
    vacuum_mask: np.ndarray | None = None
    #: cells cast in the vacuum and left out of the counts and the area
    n_excluded_vacuum: int = 0
    models: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ summaries
    @property
    def n_cells(self) -> int:
        return int(len(self.boxes))

    @property
    def class_names(self) -> tuple[str, ...]:
        return get_material(self.material).class_names

    def label_names(self) -> list[str]:
        """Class name of every cell (``"unclassified"`` where not classified)."""
        names = self.class_names
        return [names[k] if 0 <= k < N_CLASSES else "unclassified" for k in self.labels]

    def counts(self) -> dict[str, int]:
        """Cells per class (classified cells only)."""
        lab = self.labels[self.labels >= 0]
        c = np.bincount(lab, minlength=N_CLASSES)
        return {n: int(k) for n, k in zip(self.class_names, c)}

    @property
    def area_nm2(self) -> float:
        """Analysed area: number of cells times the unit-cell area (√3/2 a²), nm²."""
        return self.n_cells * get_material(self.material).cell_area_nm2

    def noise_text(self) -> str:
        """One line on the image's estimated noise and how it compares with the training range."""
        if not self.noise:
            return "noise: not estimated"
        lam, mu, snr = (self.noise.get(k, float("nan")) for k in ("poisson_lambda", "gaussian_mu", "snr"))
        lo, hi = NOISE_LAMBDA_RANGE
        if lam < lo:
            verdict = f"noisier than the training data (λ ≥ {lo:g}): check flagged cells"
        elif lam > hi:
            verdict = f"cleaner than most training data (λ ≤ {hi:g}); fine for the models"
        else:
            verdict = "within the training range"
        return (f"noise: Poisson λ ≈ {lam:.3g} counts at the brightest column, Gaussian μ ≈ {mu:.3g} "
                f"grey levels (peak = 255), SNR ≈ {snr:.3g}: {verdict}")

    @property
    def vacuum_fraction(self) -> float:
        """Share of the image area found to be vacuum (0 when none)."""
        return float(self.vacuum_mask.mean()) if self.vacuum_mask is not None else 0.0

    def concentrations_cm2(self) -> dict[str, float]:
        """Cells of each class per cm² of analysed area (1 nm² = 1e-14 cm²)."""
        area_cm2 = self.area_nm2 * 1e-14
        return {k: (v / area_cm2 if area_cm2 > 0 else 0.0) for k, v in self.counts().items()}

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (what ``summary.json`` holds)."""
        return {
            "software": f"napari-tmd-defects {__version__}",
            "material": self.material,
            "class_names": list(self.class_names),
            "image_shape": list(self.image_shape),
            "pixel_size_A": round(float(self.pixel_size), 6),
            "pixel_size_source": self.pixel_size_source,
            "alpha": self.alpha,
            "beta": self.beta,
            "n_hexagons": int(len(self.hexagon_boxes)),
            "n_cells": self.n_cells,
            "n_cells_recovered_from_lattice": int(np.sum(self.support == 0)),
            "n_flagged": int(np.sum(self.flagged)),
            "n_corrected": int(np.sum(self.corrected)),
            "counts": self.counts(),
            "area_nm2": round(self.area_nm2, 4),
            "concentration_cm2": {k: float(f"{v:.4g}") for k, v in self.concentrations_cm2().items()},
            "low_confidence_threshold": self.low_confidence,
            "noise_estimate": self.noise,
            "vacuum_fraction_of_image": round(self.vacuum_fraction, 4),
            "n_cells_excluded_in_vacuum": int(self.n_excluded_vacuum),
            "models": self.models,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "warnings": list(self.warnings),
        }

    # ------------------------------------------------------------------ edits
    def set_label(self, index: int | np.ndarray, label: int) -> None:
        """Set the class of cell(s) by hand (a correction): confidence 1, not flagged."""
        if not 0 <= int(label) < N_CLASSES:
            raise ValueError(f"label must be a class id 0..{N_CLASSES - 1}, got {label}")
        self.labels[index] = int(label)
        self.confidence[index] = 1.0
        self.flagged[index] = False
        self.corrected[index] = True

    def recast(self, alpha: float, beta: float, image: np.ndarray | None = None) -> "Result":
        """Cells re-cast from the same hexagons with new crop ratios (no re-detection).

        ``image`` (the analysed image) lets the columns refine the lattice as in
        :func:`analyze`. Classes are carried over to the cell at the same place (box
        centres within 0.3 a); new cells are unclassified.
        """
        from .evaluation import match_cells

        a_px = get_material(self.material).a / self.pixel_size
        hexes = self.canonical_hexagons if self.canonical_hexagons is not None else self.hexagon_boxes
        work = None
        if image is not None:
            work, _ = prepare_image(image)
            if get_material(self.material).name != MODEL_MATERIAL:
                from .contrast import match_contrast

                matched = match_contrast(work, a_px, self.material, MODEL_MATERIAL)
                work = matched.image if matched is not None else work
            if self.lattice_rotation_deg:
                from .geometry import RotationFrame

                frame = RotationFrame.for_image(self.image_shape, self.lattice_rotation_deg)
                work = frame.warp(work, fill=float(np.median(work)))
        cells = _cells_in_image(hexes, self.hexagon_scores, self.image_shape, a_px, alpha, beta,
                                self.lattice_rotation_deg, work)
        cells, _ = _drop_vacuum_cells(cells, self.vacuum_mask)
        new_i, old_i, _ = match_cells(cells.boxes, self.boxes, a_px)
        pick = np.full(len(cells.boxes), -1, dtype=int)
        pick[new_i] = old_i
        have = pick >= 0

        def carry(arr, fill):
            if arr is None:
                return None
            out = np.full((len(pick),) + arr.shape[1:], fill, dtype=arr.dtype)
            out[have] = arr[pick[have]]
            return out

        return replace(
            self,
            alpha=alpha,
            beta=beta,
            boxes=cells.boxes,
            x_sites=cells.x_sites,
            m_sites=cells.m_sites,
            ij=cells.ij,
            support=cells.support,
            labels=carry(self.labels, UNCLASSIFIED),
            confidence=carry(self.confidence, 0.0),
            probabilities=carry(self.probabilities, 0.0),
            flagged=carry(self.flagged, False),
            corrected=carry(self.corrected, False),
            warnings=list(self.warnings),
        )

    # ------------------------------------------------------------------ output
    def table(self) -> dict[str, np.ndarray | list]:
        """Per-cell columns, in the order of ``cells.csv``."""
        cols: dict[str, Any] = {
            "x_min": self.boxes[:, 0], "y_min": self.boxes[:, 1],
            "x_max": self.boxes[:, 2], "y_max": self.boxes[:, 3],
            "defect": self.label_names(), "confidence": self.confidence,
            "x_site_x": self.x_sites[:, 0], "x_site_y": self.x_sites[:, 1],
            "m_site_x": self.m_sites[:, 0], "m_site_y": self.m_sites[:, 1],
            "class_id": self.labels, "flagged": self.flagged.astype(int),
            "corrected": self.corrected.astype(int), "support": self.support,
            "i": self.ij[:, 0], "j": self.ij[:, 1],
        }
        if self.probabilities is not None:
            for k, name in enumerate(self.class_names):
                cols[f"p_{name}"] = self.probabilities[:, k]
        return cols

    def write_csv(self, path: str | Path) -> Path:
        """Write the per-cell table (pixel coordinates of the input image)."""
        cols = self.table()
        names = list(cols)
        fmt = {
            "x_min": "{:.2f}", "y_min": "{:.2f}", "x_max": "{:.2f}", "y_max": "{:.2f}",
            "x_site_x": "{:.2f}", "x_site_y": "{:.2f}", "m_site_x": "{:.2f}", "m_site_y": "{:.2f}",
            "confidence": "{:.4f}",
        }
        with atomic_write(path, "w") as fh:
            fh.write(",".join(names) + "\n")
            for r in range(self.n_cells):
                vals = []
                for n in names:
                    v = cols[n][r]
                    f = fmt.get(n, "{:.4f}" if n.startswith("p_") else "{}")
                    vals.append(f.format(v))
                fh.write(",".join(vals) + "\n")
        return Path(path)

    def save(self, out_dir: str | Path, image: np.ndarray | None = None, stem: str = "") -> dict[str, Path]:
        """Write ``cells.csv``, ``summary.json`` and (with ``image``) ``overlay.png``.

        ``stem`` prefixes the file names (``<stem>_cells.csv``) for batches.
        """
        from .visualization import overlay_rgb

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        pre = f"{stem}_" if stem else ""
        paths = {"cells": self.write_csv(out / f"{pre}cells.csv")}
        p = out / f"{pre}summary.json"
        with atomic_write(p, "w") as fh:
            json.dump(self.summary(), fh, indent=2)
        paths["summary"] = p
        if image is not None:
            from PIL import Image

            p = out / f"{pre}overlay.png"
            lab = np.where(self.labels >= 0, self.labels, 0) if np.any(self.labels >= 0) else None
            rgb = overlay_rgb(image, boxes=self.boxes, labels=lab, material=self.material)
            with atomic_write(p) as fh:
                Image.fromarray(rgb).save(fh, format="PNG")
            paths["overlay"] = p
        return paths


def _cells_in_image(hex_boxes, scores, shape, a_px, alpha, beta, rotation_deg, work_image=None):
    """Cells cast from hexagon boxes given in the canonical frame, in image coordinates.

    ``work_image`` is the (turned) image the hexagons were found in; with it the columns
    refine the fitted lattice (see :func:`geometry.cells_from_hexagons`).
    """
    from dataclasses import replace as dc_replace

    from .geometry import RotationFrame, cells_from_hexagons, inside_boxes, rotated_cell_box

    if not rotation_deg:
        return cells_from_hexagons(hex_boxes, scores, shape, a_px, alpha, beta, image=work_image)
    frame = RotationFrame.for_image(shape, rotation_deg)
    c = cells_from_hexagons(hex_boxes, scores, frame.out_shape, a_px, alpha, beta, image=work_image)
    x = frame.from_canvas(c.x_sites)
    m = frame.from_canvas(c.m_sites)
    boxes = rotated_cell_box(x, m, a_px, rotation_deg)
    keep = inside_boxes(boxes, shape)
    return dc_replace(c, boxes=boxes[keep], x_sites=x[keep], m_sites=m[keep], ij=c.ij[keep],
                      support=c.support[keep], scores=c.scores[keep])


def _subset_cells(cells, keep: np.ndarray):
    """The cells where ``keep`` is True (a :class:`~.geometry.CellSet`)."""
    from dataclasses import replace as dc_replace

    return dc_replace(cells, boxes=cells.boxes[keep], x_sites=cells.x_sites[keep], m_sites=cells.m_sites[keep],
                      ij=cells.ij[keep], support=cells.support[keep], scores=cells.scores[keep])


def _drop_vacuum_cells(cells, mask: np.ndarray | None):
    """``(cells without those centred in the vacuum mask, number dropped)``."""
    if mask is None or not len(cells.boxes) or not mask.any():
        return cells, 0
    from .geometry import nearest_pixel

    keep = ~mask[nearest_pixel(0.5 * (cells.x_sites + cells.m_sites), mask.shape)]
    if keep.all():
        return cells, 0
    return _subset_cells(cells, keep), int((~keep).sum())


def _orientation(img: np.ndarray, a_px: float, material: str) -> float:
    """Lattice rotation reduced to (-60, 60] from the sublattice fit on a ~30 px/a copy."""
    from scipy import ndimage as ndi

    from .classical import fit_sublattices

    zoom = min(1.0, 30.0 / a_px)
    small = ndi.zoom(img, zoom, order=1) if zoom < 0.99 else img
    fit = fit_sublattices(small, a_px * zoom, material)
    return fit.rotation_deg if fit is not None else 0.0


def _empty_result(shape, material, pixel_size, source, alpha, beta, warnings, low_confidence) -> Result:
    z4, z2 = np.zeros((0, 4)), np.zeros((0, 2))
    return Result(
        material=material, pixel_size=float(pixel_size) if pixel_size else float("nan"),
        pixel_size_source=source, image_shape=tuple(shape), alpha=alpha, beta=beta,
        hexagon_boxes=z4, hexagon_scores=np.zeros(0), boxes=z4, x_sites=z2, m_sites=z2,
        ij=np.zeros((0, 2), int), support=np.zeros(0, int), labels=np.zeros(0, int),
        confidence=np.zeros(0), probabilities=np.zeros((0, N_CLASSES)), flagged=np.zeros(0, bool),
        corrected=np.zeros(0, bool), low_confidence=low_confidence, warnings=list(warnings),
    )


def prepare_image(image: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Validate an input image -> (2-D float32 copy, warnings).

    RGB(A) images are converted to grey; a few non-finite pixels (≤ 5 %) are replaced by
    the median.

    Raises
    ------
    ValueError
        For non-numeric data, anything but 2-D/RGB, or mostly non-finite images.
    """
    warnings: list[str] = []
    a = np.asarray(image)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"image must be numeric, got dtype {a.dtype}")
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        warnings.append("RGB image converted to grey")
    if a.ndim != 2:
        raise ValueError(
            f"image must be 2-D (rows, cols) or RGB, got shape {a.shape}; "
            "for a stack analyse each frame or sum aligned frames"
        )
    a = a.astype(np.float32, copy=True)
    bad = ~np.isfinite(a)
    if bad.any():
        frac = bad.mean()
        if frac > 0.05:
            raise ValueError(f"{frac:.0%} of the image is NaN or infinite; cannot analyse it")
        a[bad] = np.median(a[~bad])
        warnings.append(f"{int(bad.sum())} NaN/inf pixels replaced by the median")
    return a, warnings


def _resolve_model(model, kind: str, device: str):
    """A model object as given, or the one loaded from a path / the shipped weights."""
    if model is None or isinstance(model, (str, Path)):
        if kind == "detector":
            from .detection import load_detector as loader
        else:
            from .classification import load_classifier as loader
        return loader(model, device=device)
    return model


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
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> Result:
    """Find and classify every unit cell of a HAADF-STEM image.

    Parameters
    ----------
    image : (rows, cols) array
        Any numeric dtype; RGB is converted to grey.
    pixel_size : float, optional
        Å/px. When None it is estimated from the lattice (FFT) and the material's lattice
        constant, and the result says so.
    material : str
        ``"MoTe2"`` (default), ``"MoS2"``, ``"MoSe2"``, ``"WS2"``, ``"WSe2"``.
    alpha, beta : float
        Hexagonal-net casting crop ratios (paper: 0.65, 0.5).
    device : str
        ``"auto"`` (GPU when there is one), ``"cpu"`` or ``"cuda"``.
    detector, classifier : model object or path, optional
        Defaults: the shipped weights. Objects must follow the contracts in
        docs/architecture.md.
    classify : bool
        False: detect cells only (labels ``unclassified``).
    low_confidence : float
        Cells whose top probability is below this are flagged for review.
    exclude_vacuum : bool
        Find vacuum (a hole, the film's edge) from the local lattice amplitude and leave
        the cells there out (:mod:`.vacuum`); default True.
    progress : callable(done, total), optional
    cancel : callable() -> bool, optional
        Checked between stages; raises :class:`~.runtime.Cancelled`.

    Returns
    -------
    Result
    """
    t_start = time.perf_counter()
    mat = get_material(material)
    img, warnings = prepare_image(image)
    shape = img.shape
    timings: dict[str, float] = {}
    steps = 100  # progress in percent: lattice 0-10, detection 10-60, casting 60-70, classes 70-100

    def step(k):
        if progress:
            progress(k, steps)
        check_cancel(cancel)

    def sub(lo, hi):
        if progress is None:
            return None
        return lambda done, total: progress(lo + int((hi - lo) * done / max(total, 1)), steps)

    step(0)
    source = "given"
    if pixel_size is not None:
        pixel_size = float(pixel_size)
        if not math.isfinite(pixel_size) or pixel_size <= 0:
            raise ValueError(f"pixel_size must be a positive number of Å/px, got {pixel_size}")
    if min(shape) < 32 or np.ptp(img) == 0:
        warnings.append("image too small or constant: no lattice to analyse")
        return _empty_result(shape, mat.name, pixel_size, source, alpha, beta, warnings, low_confidence)

    t0 = time.perf_counter()
    lat = estimate_lattice(img)
    timings["lattice"] = time.perf_counter() - t0
    has_lattice = lat is not None and lat.strength >= MIN_LATTICE_STRENGTH
    if pixel_size is None:
        if not has_lattice:
            warnings.append("no crystal lattice found, so the pixel size cannot be estimated")
            return _empty_result(shape, mat.name, None, "unknown", alpha, beta, warnings, low_confidence)
        pixel_size = mat.a / lat.a_px
        source = "estimated from the lattice"
        warnings.append(f"pixel size estimated from the {mat.name} lattice: {pixel_size:.4f} Å/px")
    elif has_lattice:
        ratio = (mat.a / pixel_size) / lat.a_px
        if abs(ratio - 1.0) > 0.15:
            warnings.append(
                f"the given pixel size {pixel_size:.4g} Å/px disagrees with the lattice, which "
                f"suggests {mat.a / lat.a_px:.4g} Å/px for {mat.name}; check the pixel size or material"
            )
    else:
        warnings.append("no clear crystal lattice found in the image")
    if not TRAINED_PIXEL_SIZES[0] <= pixel_size <= TRAINED_PIXEL_SIZES[1]:
        warnings.append(
            f"pixel size {pixel_size:.4g} Å/px is outside the range the models were trained for "
            f"({TRAINED_PIXEL_SIZES[0]}–{TRAINED_PIXEL_SIZES[1]} Å/px)"
        )
    a_px = mat.a / pixel_size
    if min(shape) < 2.5 * a_px:
        warnings.append(f"image ({shape[1]}x{shape[0]} px) holds fewer than 2.5 lattice constants")
        return _empty_result(shape, mat.name, pixel_size, source, alpha, beta, warnings, low_confidence)

    noise: dict[str, float] = {}
    try:
        from .noise import estimate_noise

        est = estimate_noise(img, a_px)
        noise = {"poisson_lambda": round(est.poisson_lambda, 2), "gaussian_mu": round(est.gaussian_mu, 2),
                 "snr": round(est.snr, 2)}
        if est.poisson_lambda < NOISE_LAMBDA_RANGE[0] or est.snr < 1.5:
            warnings.append(f"very noisy image ({est.describe()}); the models were trained down to "
                            f"λ = {NOISE_LAMBDA_RANGE[0]} counts: check flagged cells")
    except ValueError:
        pass

    vac_mask = None
    if exclude_vacuum and has_lattice:
        from .vacuum import vacuum_mask

        t0 = time.perf_counter()
        vac_mask = vacuum_mask(img, lat)
        timings["vacuum"] = time.perf_counter() - t0
        if vac_mask.any():
            warnings.append(f"vacuum (a hole or an edge of the film) covers {100 * vac_mask.mean():.0f} % of the "
                            "image: cells there are left out of the counts and the area")
        else:
            vac_mask = None

    step(10)
    # the networks learnt MODEL_MATERIAL: other materials are shown to them with its contrast
    model_img, model_material = img, mat.name
    if has_lattice and mat.name != MODEL_MATERIAL:
        from .contrast import match_contrast

        t0 = time.perf_counter()
        matched = match_contrast(img, a_px, mat.name, MODEL_MATERIAL)
        timings["contrast"] = time.perf_counter() - t0
        if matched is None:
            warnings.append(f"the {mat.name} sublattices could not be told apart: the networks "
                            f"(trained on {MODEL_MATERIAL}) see the image as it is")
        else:
            model_img, model_material = matched.image, MODEL_MATERIAL
            warnings.append(matched.describe(mat.name, MODEL_MATERIAL))
            lam = noise.get("poisson_lambda")
            x_amp, m_amp = matched.x_level - matched.background, matched.m_level - matched.background
            if lam is not None and np.isfinite(lam) and max(x_amp, m_amp) > 0:
                lam_x = lam * x_amp / max(x_amp, m_amp)  # counts at a full chalcogen column
                if lam_x < NOISE_LAMBDA_RANGE[0]:
                    warnings.append(
                        f"the {mat.chalcogen} columns get only ~{lam_x:.2g} counts (Poisson), below the "
                        f"{NOISE_LAMBDA_RANGE[0]:g} the networks were trained for: chalcogen vacancies are "
                        "uncertain; check flagged cells or compare with the classical reference")
    # the orientation is geometry: found on the image as it is, with its own material
    rotation = _orientation(img, a_px, mat.name) if has_lattice else 0.0
    if abs(rotation) <= ROTATION_TOLERANCE_DEG:
        rotation = 0.0
    frame = None
    if rotation:
        from .geometry import RotationFrame

        frame = RotationFrame.for_image(shape, rotation)
        warnings.append(f"lattice turned by {rotation:.1f}°: analysed on a copy turned to the canonical orientation")

    def turned(image: np.ndarray) -> np.ndarray:
        """``image`` in the frame the lattice is analysed in (canonically turned when needed)."""
        return frame.warp(image, fill=float(np.median(image))) if frame is not None else image

    work = turned(model_img)  # what the networks see
    plain = work if model_img is img else None  # the image as it is, turned; made once when needed
    det = _resolve_model(detector, "detector", device)
    t0 = time.perf_counter()
    canon_hex, hex_scores = det.detect(work, pixel_size, material=mat.name, progress=sub(10, 60), cancel=cancel)
    canon_hex = np.asarray(canon_hex, float).reshape(-1, 4)
    timings["detection"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    step(60)
    cells = _cells_in_image(canon_hex, hex_scores, shape, a_px, alpha, beta, rotation, work)
    if has_lattice:
        # a strong lattice but far fewer cells than it holds: the detector failed on this
        # image (contrast it never saw); take the hexagons from the fitted lattice instead
        crystal = 1.0 - (float(vac_mask.mean()) if vac_mask is not None else 0.0)
        expected = crystal * (shape[0] - a_px) * (shape[1] - a_px) / (math.sqrt(3) / 2 * a_px**2)
        if expected >= 20 and len(cells.boxes) < FALLBACK_FRACTION * expected:
            from .classical import LatticeHexagonDetector

            if plain is None:
                plain = turned(img)
            lat_hex, lat_scores = LatticeHexagonDetector().detect(plain, pixel_size, material=mat.name)
            lat_cells = _cells_in_image(lat_hex, lat_scores, shape, a_px, alpha, beta, rotation, plain)
            if len(lat_cells.boxes) > len(cells.boxes):
                warnings.append(
                    f"the hexagon detector found {len(cells.boxes)} cells where the lattice holds about "
                    f"{expected:.0f}: hexagons taken from the fitted lattice (classical) instead; check the map"
                )
                canon_hex, hex_scores, cells = np.asarray(lat_hex, float).reshape(-1, 4), lat_scores, lat_cells
                det = LatticeHexagonDetector()
    cells, n_vacuum = _drop_vacuum_cells(cells, vac_mask)
    if rotation:
        from .geometry import bbox_of_points, box_corners

        hex_boxes = bbox_of_points(frame.from_canvas(box_corners(canon_hex))) if len(canon_hex) else canon_hex
        cls_boxes = rotated_cell_box_canvas(frame, cells, a_px)
    else:
        hex_boxes, cls_boxes = canon_hex, cells.boxes
    timings["casting"] = time.perf_counter() - t0
    models = {"detector": _card_summary(getattr(det, "card", {}))}

    step(70)
    n = len(cells.boxes)
    probs = None
    labels = np.full(n, UNCLASSIFIED, dtype=int)
    conf = np.zeros(n)
    if classify and n:
        clf = _resolve_model(classifier, "classifier", device)
        clf_material = get_material(getattr(clf, "material", mat.name)).name
        cls_img, cls_material, cls_ps = work, mat.name, pixel_size
        if clf_material != mat.name and clf_material == model_material:
            # contrast-matched image; the pixel size that gives the reference material the same a in px
            cls_material, cls_ps = clf_material, pixel_size * get_material(clf_material).a / mat.a
        elif clf_material == mat.name and model_material != mat.name:
            cls_img = plain if plain is not None else turned(img)
        if clf_material != cls_material:
            warnings.append(f"the classifier was trained for {clf_material} and the {mat.name} image could not "
                            f"be matched to it: cells left unclassified")
        else:
            t0 = time.perf_counter()
            probs = np.asarray(
                clf.predict(cls_img, cls_boxes, cls_ps, material=cls_material, progress=sub(70, 100), cancel=cancel),
                dtype=float,
            )
            timings["classification"] = time.perf_counter() - t0
            labels = probs.argmax(axis=1)
            conf = probs.max(axis=1)
            models["classifier"] = _card_summary(getattr(clf, "card", {}))
    if vac_mask is not None and probs is not None and n:
        # empty cells (no X, no M) touching the vacuum are part of it
        from .vacuum import grow_into_empty_cells

        centres = 0.5 * (cells.x_sites + cells.m_sites)
        vac_mask, taken = grow_into_empty_cells(vac_mask, centres, labels == N_CLASSES - 1, a_px)
        if taken.any():
            keep = ~taken
            cells = _subset_cells(cells, keep)
            probs, labels, conf = probs[keep], labels[keep], conf[keep]
            n_vacuum += int(taken.sum())
            n = len(cells.boxes)
    flagged = (conf < low_confidence) & (labels >= 0)
    step(steps)
    timings["total"] = time.perf_counter() - t_start
    if n == 0:
        warnings.append("no unit cells found")
    return Result(
        material=mat.name, pixel_size=float(pixel_size), pixel_size_source=source, image_shape=tuple(shape),
        alpha=alpha, beta=beta, hexagon_boxes=np.asarray(hex_boxes, float).reshape(-1, 4),
        lattice_rotation_deg=float(rotation), canonical_hexagons=canon_hex if rotation else None,
        hexagon_scores=np.asarray(hex_scores, float).reshape(-1), boxes=cells.boxes, x_sites=cells.x_sites,
        m_sites=cells.m_sites, ij=cells.ij, support=cells.support, labels=labels, confidence=conf,
        probabilities=probs, flagged=flagged, corrected=np.zeros(n, bool), low_confidence=low_confidence,
        noise=noise, vacuum_mask=vac_mask, n_excluded_vacuum=n_vacuum, models=models, timings=timings,
        warnings=warnings,
    )


def rotated_cell_box_canvas(frame, cells, a_px: float) -> np.ndarray:
    """Canonical cell boxes, on the turned canvas, of cells given in image coordinates."""
    from .geometry import cell_box

    return cell_box(frame.to_canvas(cells.x_sites), frame.to_canvas(cells.m_sites), a_px)


def _card_summary(card: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "version", "config", "trained", "input_size", "channels", "a_px", "sha256")
    return {k: card[k] for k in keys if k in card}
