"""The result of :func:`~.pipeline.analyze`: cells, classes, counts, concentrations, files.

:class:`Result` holds every cell (its X and M sites, domain, class, confidence) with the
site model behind it (:class:`~.sites.SiteModel`: all sites, domains, boundaries), and
writes ``cells.csv``, ``summary.json`` and an overlay PNG. Pure numpy: no Qt here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .io import atomic_write
from .geometry import is_exact_counts
from .materials import N_CLASSES, get_material
from .sites import SiteModel

__all__ = ["BOUNDARY", "Result", "UNCLASSIFIED", "dark_level", "pixel_size_text", "prepare_image", "unread_cells"]

#: Label of cells that were not classified.
UNCLASSIFIED = -1
#: Label of cells on a domain boundary (grain, twin or inversion boundary, dislocation core):
#: not a point defect, left out of the counts, the area and the concentrations.
BOUNDARY = -2
#: Pixel sizes (Å/px) the models were trained for; outside it a warning is given.
TRAINED_PIXEL_SIZES = (0.02, 0.16)
#: Shot-noise levels (counts at the brightest column) covered by training.
NOISE_LAMBDA_RANGE = (4.0, 60.0)
#: Material the shipped networks were trained on; images of other materials are shown to
#: them with its contrast (:mod:`.contrast`).
MODEL_MATERIAL = "MoTe2"
#: Minimum lattice-peak strength of :func:`geometry.estimate_lattice` to trust a lattice.
MIN_LATTICE_STRENGTH = 4.5
#: How a result's ``pixel_size_source`` reads (picture titles, the napari docks).
PIXEL_SIZE_SOURCE_TEXT = {
    "given": "given", "metadata": "file metadata", "file metadata": "file metadata",
    "lattice": "from the lattice; the given value disagreed", "estimated": "estimated from the lattice",
    "estimated from the lattice": "estimated from the lattice", "unknown": "unknown", "": "unknown",
}


def pixel_size_text(pixel_size: float | None, source: str) -> str:
    """``"0.09 Å/px (file metadata)"``; ``"pixel size unknown"`` when there is none."""
    if pixel_size is None or not np.isfinite(pixel_size) or pixel_size <= 0:
        return "pixel size unknown"
    return f"{pixel_size:.4g} Å/px ({PIXEL_SIZE_SOURCE_TEXT.get((source or '').strip(), source)})"


def unread_cells(labels: np.ndarray, x_unresolved: np.ndarray, site_states=None,
                 x_index: np.ndarray | None = None) -> np.ndarray:
    """(N,) bool: counted cells (``labels >= 0``) whose chalcogen column could not be read
    (``x_unresolved``), other than those whose column (``x_index`` into the sites of
    ``site_states``; -1: none) the site reading found full (two atoms at its posterior): a
    chalcogen vacancy the classifier called there was overruled by the column's
    intensity, not left unread."""
    out = (np.asarray(labels) >= 0) & np.asarray(x_unresolved, bool)
    if site_states is not None and x_index is not None:
        x_index = np.asarray(x_index)
        ok = x_index >= 0
        full = np.zeros(len(x_index), bool)
        full[ok] = np.asarray(site_states.atoms)[x_index[ok]] == 2
        out &= ~full
    return out


def _label_name(k: int, names) -> str:
    if 0 <= k < N_CLASSES:
        return names[k]
    return "boundary" if k == BOUNDARY else "unclassified"


@dataclass
class Result:
    """Everything :func:`~.pipeline.analyze` found in one image. Coordinates in px (x = column).

    Per-cell arrays (length N): ``boxes`` (N, 4) ``x_min, y_min, x_max, y_max`` (the
    axis-aligned bounds of the cell's crop, which follows the local lattice: see
    ``frames``); ``x_sites``, ``m_sites`` (N, 2) the X and M sites (on their columns, or
    where the neighbours put a missing one); ``ij`` the X site's fine-lattice indices in its
    domain; ``domain`` domain id; ``placed`` 1 = X site placed from its neighbours (no
    column found), 2 = M site placed, 3 = both; ``support`` number of detected hexagons
    (CNN-1) centred on the two hollows next to the cell (0-2; -1 = not searched, outside
    the tiles of ``analyze(hexagons="sample")``); ``labels`` class ids
    (-1 = unclassified, -2 = boundary); ``confidence`` softmax probability of the label;
    ``probabilities`` (N, 6) or None; ``flagged`` cells to review (low confidence or a
    plausibility warning); ``corrected`` cells whose class a user set by hand; ``frames``
    (N, 2, 3) affine maps from the canonical cell (lattice-constant units) to px;
    ``x_unresolved`` cells whose chalcogen state the frame is too noisy to read (their
    chalcogen vacancies are not counted; ``checks`` says which).

    ``sites`` is the site model (all sites, domains, boundary lines); ``hexagon_boxes``
    the detector's hexagons (bounding boxes in the image). ``vacuum_mask`` marks a hole or
    an edge of the film, ``inset_mask`` a pasted inset; cells there are not reported.
    ``checks`` holds the plausibility measures (defect fraction, largest same-class
    cluster, detector/column agreement, ...).
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
    domain: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    placed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    frames: np.ndarray = field(default_factory=lambda: np.zeros((0, 2, 3)))
    sites: SiteModel | None = None
    #: cells whose chalcogen state the frame cannot resolve (not counted as X vacancies)
    x_unresolved: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    low_confidence: float = 0.6
    lattice_rotation_deg: float = 0.0
    noise: dict[str, float] = field(default_factory=dict)
    #: vacuum (hole, edge) found in the image, px mask of the image's shape, or None
    vacuum_mask: np.ndarray | None = None
    #: cells in the vacuum left out of the counts and the area
    n_excluded_vacuum: int = 0
    #: an inset pasted into the frame (an FFT, a zoomed view: :func:`.exports.inset_mask`),
    #: px mask of the image's shape, or None; no column is read there and its cells are left out
    inset_mask: np.ndarray | None = None
    checks: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: every site's state read from its column (:class:`~.states.SiteStates`), or None
    site_states: Any = None
    #: the class and confidence each cell had from the analysis, before corrections
    #: (setting a cell back to its machine class clears ``corrected``)
    machine_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    machine_confidence: np.ndarray = field(default_factory=lambda: np.zeros(0))

    #: Per-cell arrays kept aligned by :meth:`remove_cells` / :meth:`insert_cells`
    #: (``probabilities`` too, when there are any).
    CELL_FIELDS = ("boxes", "x_sites", "m_sites", "ij", "support", "labels", "confidence", "flagged",
                   "corrected", "domain", "placed", "frames", "x_unresolved", "machine_labels",
                   "machine_confidence")

    def __post_init__(self):
        n = len(self.boxes)
        if len(self.machine_labels) != n:
            self.machine_labels = np.asarray(self.labels, dtype=np.int64).copy()
        if len(self.machine_confidence) != n:
            self.machine_confidence = np.asarray(self.confidence, dtype=float).copy()
        if len(self.domain) != n:
            self.domain = np.zeros(n, np.int64)
        if len(self.placed) != n:
            self.placed = np.zeros(n, np.int64)
        if len(self.x_unresolved) != n:
            self.x_unresolved = np.zeros(n, bool)
        if len(self.frames) != n:
            from .lattice.cells import cell_frames
            from .sites import CANONICAL_HOLLOW, CANONICAL_PARTNER

            a = get_material(self.material).a / self.pixel_size if self.pixel_size == self.pixel_size else 1.0
            self.frames = cell_frames(self.x_sites, self.m_sites, np.tile(CANONICAL_PARTNER * a, (n, 1)),
                                      np.tile(CANONICAL_HOLLOW * a, (n, 1))) if n else np.zeros((0, 2, 3))

    # ------------------------------------------------------------------ summaries
    @property
    def n_cells(self) -> int:
        return int(len(self.boxes))

    @property
    def class_names(self) -> tuple[str, ...]:
        return get_material(self.material).class_names

    @property
    def boundary(self) -> np.ndarray:
        """Cells on a domain boundary (label :data:`BOUNDARY`)."""
        return np.asarray(self.labels) == BOUNDARY

    def label_names(self) -> list[str]:
        """Class name of every cell (``"unclassified"``, ``"boundary"`` where not a class)."""
        names = self.class_names
        return [_label_name(int(k), names) for k in self.labels]

    def counts(self) -> dict[str, int]:
        """Cells per class (classified cells only; boundary cells are not counted)."""
        lab = self.labels[self.labels >= 0]
        c = np.bincount(lab, minlength=N_CLASSES)
        return {n: int(k) for n, k in zip(self.class_names, c)}

    def counts_unread_as_classified(self) -> dict[str, int] | None:
        """Cells per class with every counted cell whose chalcogen column could not be read
        (``x_unresolved``) given the classifier's chalcogen state (its metal state as read):
        the other end of the range that :meth:`counts` leaves open from below for the classes
        with a chalcogen vacancy. A cell whose column the site reading found full keeps its
        class (a vacancy the classifier called there was overruled by the column's intensity,
        :meth:`unread_cells`), and so does a cell corrected by hand; None without the
        classifier's probabilities."""
        lab = np.asarray(self.labels)
        if self.probabilities is None or len(self.probabilities) != len(lab):
            return None
        unread = self.unread_cells()
        out = lab.copy()
        if unread.any():
            top = np.argmax(np.asarray(self.probabilities)[unread], axis=1)
            out[unread] = top % 3 + 3 * (lab[unread] // 3)  # class id = X atoms missing + 3 x metal missing
        c = np.bincount(out[out >= 0], minlength=N_CLASSES)
        return {n: int(k) for n, k in zip(self.class_names, c)}

    def unread_cells(self) -> np.ndarray:
        """(N,) bool: the cells whose chalcogen vacancies the counts may lack
        (:func:`unread_cells`: unread columns, not those the site reading found full), less
        those corrected by hand."""
        idx = self._cell_sites()
        out = unread_cells(self.labels, self.x_unresolved, self.site_states if idx is not None else None,
                           None if idx is None else idx[0])
        return out & ~np.asarray(self.corrected, bool)

    @property
    def n_counted(self) -> int:
        """Cells in the area: all but boundary cells."""
        return int(np.sum(np.asarray(self.labels) != BOUNDARY))

    @property
    def area_nm2(self) -> float:
        """Analysed area: cells off the boundaries times the unit-cell area (√3/2 a²), nm²."""
        return self.n_counted * get_material(self.material).cell_area_nm2

    @property
    def domains(self) -> list[dict[str, Any]]:
        """Each domain: id, orientation, cells, area (nm²), sublattice levels."""
        if self.sites is None:
            return []
        area = get_material(self.material).cell_area_nm2
        return [d.to_dict(area) for d in self.sites.domains]

    @property
    def boundary_length_nm(self) -> float:
        """Total length of the domain boundaries, nm."""
        if self.sites is None or self.pixel_size != self.pixel_size:
            return 0.0
        return float(self.sites.boundary_length_px * self.pixel_size / 10.0)

    def noise_text(self) -> str:
        """One line on the image's estimated noise and how it compares with the training range."""
        if not self.noise:
            return "noise: not estimated"
        lam, mu, snr = (self.noise.get(k, float("nan")) for k in ("poisson_lambda", "gaussian_mu", "snr"))
        lo, hi = NOISE_LAMBDA_RANGE
        if self.noise.get("poisson_limited") is False:
            return (f"noise: not Poisson-limited (no measurable shot noise; λ ≥ {lam:.3g} counts), Gaussian "
                    f"μ ≈ {mu:.3g} grey levels (peak = 255), SNR ≈ {snr:.3g}; fine for the models")
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

    def counts_uncertainty(self) -> dict[str, float]:
        """One-sigma uncertainty of every class count: counting statistics (√n) and the
        classification's own doubt (``sqrt(Σ p (1 - p))`` over the cells, from the class
        probabilities) added in quadrature."""
        counts = self.counts()
        lab = np.asarray(self.labels)
        out = {}
        for k, (name, c) in enumerate(counts.items()):
            var = float(c)
            if self.probabilities is not None and len(self.probabilities) == len(lab):
                p = self.probabilities[lab >= 0, k]
                var += float(np.sum(p * (1.0 - p)))
            out[name] = math.sqrt(var)
        return out

    def _cell_sites(self) -> tuple[np.ndarray, np.ndarray] | None:
        st, model = self.site_states, self.sites
        if st is None or model is None or len(model.cells) != self.n_cells:
            return None
        return model.cells.x, model.cells.m  # -1: a cell added by hand off the site model

    def site_state_counts(self) -> dict[str, dict[str, int]]:
        """Sites of every state per sublattice (cells off the boundaries): ``{"M": {"W": 812,
        "Mo": 90, "vacant": 3, "unresolved": 4}, "X": {"SeSe": ...}}``."""
        idx = self._cell_sites()
        if idx is None:
            return {}
        keep = np.asarray(self.labels) != BOUNDARY
        out = {}
        for role, k in (("M", idx[1]), ("X", idx[0])):
            names, cnt = np.unique(self.site_states.state[k[keep & (k >= 0)]].astype(str), return_counts=True)
            out[role] = {str(a): int(b) for a, b in sorted(zip(names, cnt), key=lambda t: -t[1])}
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (what ``summary.json`` holds)."""
        area_cm2 = self.area_nm2 * 1e-14
        unc = self.counts_uncertainty()
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
            "n_cells_counted": self.n_counted,
            "n_cells_boundary": int(np.sum(self.boundary)),
            "n_cells_placed_site": int(np.sum(self.placed > 0)),
            "n_flagged": int(np.sum(self.flagged)),
            "n_corrected": int(np.sum(self.corrected)),
            "counts": self.counts(),
            "area_nm2": round(self.area_nm2, 4),
            "concentration_cm2": {k: float(f"{v:.4g}") for k, v in self.concentrations_cm2().items()},
            "counts_uncertainty": {k: round(v, 2) for k, v in unc.items()},
            "counts_unread_as_classified": self.counts_unread_as_classified(),
            "concentration_uncertainty_cm2": {k: float(f"{(v / area_cm2 if area_cm2 > 0 else 0.0):.3g}")
                                              for k, v in unc.items()},
            "site_states": self.site_state_counts(),
            "site_reading": self.site_states.to_dict() if self.site_states is not None else {},
            "n_domains": len(self.domains),
            "domains": self.domains,
            "boundary_length_nm": round(self.boundary_length_nm, 3),
            "low_confidence_threshold": self.low_confidence,
            "noise_estimate": self.noise,
            "vacuum_fraction_of_image": round(self.vacuum_fraction, 4),
            "n_cells_excluded_in_vacuum": int(self.n_excluded_vacuum),
            "checks": self.checks,
            "models": self.models,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "warnings": list(self.warnings),
        }

    # ------------------------------------------------------------------ edits
    def set_label(self, index: int | np.ndarray, label: int) -> None:
        """Set the class of cell(s) by hand (a correction): confidence 1, not flagged.

        A corrected cell set back to the class the analysis gave it is no longer
        ``corrected``: it gets the analysis' confidence (and flag) back. Setting a cell
        that shows its analysis class to that class confirms it (a correction).
        """
        if not 0 <= int(label) < N_CLASSES:
            raise ValueError(f"label must be a class id 0..{N_CLASSES - 1}, got {label}")
        idx = np.atleast_1d(np.arange(self.n_cells)[index])
        back = self.returns_to_machine(idx, label)
        self.labels[idx] = int(label)
        self.confidence[idx] = 1.0
        self.flagged[idx] = False
        self.corrected[idx] = True
        self.confidence[back] = self.machine_confidence[back]
        self.corrected[back] = False
        self.flagged[back] = self.confidence[back] < self.low_confidence

    def returns_to_machine(self, index, label: int) -> np.ndarray:
        """Those of cells ``index`` that setting to ``label`` returns to the class the
        analysis gave them (they show another class now)."""
        idx = np.atleast_1d(np.arange(self.n_cells)[index])
        return idx[(self.machine_labels[idx] == int(label)) & (self.labels[idx] != int(label))]

    # ------------------------------------------------------------------ cell edits
    def _cell_fields(self) -> list[str]:
        n = self.n_cells
        extra = ["probabilities"] if self.probabilities is not None and len(self.probabilities) == n else []
        return [*self.CELL_FIELDS, *extra]

    def _site_cells(self):
        """The site model's cells when they are aligned with this result's cells, else None."""
        model = self.sites
        return model.cells if model is not None and len(model.cells) == self.n_cells else None

    def _recount_domains(self) -> None:
        if self.sites is None:
            return
        for d in self.sites.domains:
            d.n_cells = int(np.sum((self.domain == d.id) & (self.labels != BOUNDARY)))

    def remove_cells(self, index) -> dict[str, Any]:
        """Remove cells (indices) from the result and its site model's cells.

        Returns a record of them that :meth:`insert_cells` puts back in place.

        Raises
        ------
        IndexError
            For indices outside ``0..n_cells - 1``.
        """
        idx = np.unique(np.atleast_1d(np.asarray(index, dtype=np.int64)))
        n = self.n_cells
        if len(idx) and (idx[0] < 0 or idx[-1] >= n):
            raise IndexError(f"cell indices must lie in 0..{n - 1}, got {idx.tolist()}")
        fields = self._cell_fields()
        rec: dict[str, Any] = {"index": idx, "cells": {k: np.asarray(getattr(self, k))[idx].copy() for k in fields}}
        keep = np.ones(n, bool)
        keep[idx] = False
        cells = self._site_cells()
        if cells is not None:
            rec["sites"] = cells.subset(idx)
            self.sites = replace(self.sites, cells=cells.subset(keep))  # the model may be shared (recast)
        for k in fields:
            setattr(self, k, np.asarray(getattr(self, k))[keep])
        self._recount_domains()
        return rec

    def insert_cells(self, record: dict[str, Any]) -> np.ndarray:
        """Put cells back (a record of :meth:`remove_cells` or :meth:`new_cell`) at their
        indices; returns the indices."""
        idx = np.asarray(record["index"], dtype=np.int64)
        vals = record["cells"]
        pos = idx - np.arange(len(idx))  # positions in the array without them
        if len(idx) and (pos.min() < 0 or pos.max() > self.n_cells):
            raise IndexError(f"cannot insert cells at {idx.tolist()} into {self.n_cells} cells")
        cells = self._site_cells()
        for k in self._cell_fields():
            v = vals.get(k)
            if v is None and k == "probabilities":
                lab = np.asarray(vals["labels"])
                v = np.full((len(idx), N_CLASSES), np.nan)
                v[lab >= 0] = np.eye(N_CLASSES)[lab[lab >= 0]]
            setattr(self, k, np.insert(np.asarray(getattr(self, k)), pos, v, axis=0))
        if cells is not None and "sites" in record:
            from .sites import CellSites

            s = record["sites"]
            self.sites = replace(self.sites, cells=CellSites(*(
                np.insert(getattr(cells, f), pos, getattr(s, f), axis=0)
                for f in ("x", "m", "domain", "frame", "boundary", "boxes"))))
        self._recount_domains()
        return idx

    def new_cell(self, frame: np.ndarray, probabilities: np.ndarray | None = None, *, domain: int = 0,
                 x_site: int = -1, m_site: int = -1, ij=(-1, -1)) -> dict[str, Any]:
        """A record of one new cell (for :meth:`insert_cells`, appended at the end).

        ``frame`` (2, 3) maps the canonical cell (lattice-constant units) to px;
        ``probabilities`` (6,) the classifier's (None: unclassified); ``x_site``,
        ``m_site`` the indices of its sites in the site model (-1: none, a placed site).
        """
        from .lattice.cells import frame_boxes
        from .sites import CANONICAL_PARTNER, CellSites, canonical_cell_box

        fr = np.asarray(frame, dtype=float).reshape(1, 2, 3)
        box = frame_boxes(fr, canonical_cell_box(self.alpha, self.beta))
        xy = fr[0, :, 2]
        m_xy = fr[0, :, :2] @ CANONICAL_PARTNER + xy
        if self.sites is not None and x_site >= 0:
            xy = self.sites.sites.xy[x_site]
        if self.sites is not None and m_site >= 0:
            m_xy = self.sites.sites.xy[m_site]
        if probabilities is not None:
            p = np.asarray(probabilities, dtype=float).reshape(N_CLASSES)
            label, conf = int(np.argmax(p)), float(np.max(p))
        else:
            p, label, conf = None, UNCLASSIFIED, 0.0
        placed = int(x_site < 0 or self.sites.sites.placed[x_site]) + 2 * int(
            m_site < 0 or self.sites.sites.placed[m_site])
        cells = {
            "boxes": box, "x_sites": xy[None], "m_sites": m_xy[None], "ij": np.array([ij], np.int64),
            "support": np.zeros(1, np.int64), "labels": np.array([label]), "confidence": np.array([conf]),
            "flagged": np.array([label >= 0 and conf < self.low_confidence]), "corrected": np.zeros(1, bool),
            "domain": np.array([domain], np.int64), "placed": np.array([placed], np.int64), "frames": fr,
            "x_unresolved": np.zeros(1, bool), "machine_labels": np.array([label], np.int64),
            "machine_confidence": np.array([conf]),
        }
        if p is not None:
            cells["probabilities"] = p[None]
        rec: dict[str, Any] = {"index": np.array([self.n_cells]), "cells": cells}
        if self._site_cells() is not None:
            rec["sites"] = CellSites(np.array([x_site]), np.array([m_site]), np.array([domain]), fr,
                                     np.zeros(1, bool), box)
        return rec

    def recast(self, alpha: float, beta: float, image: np.ndarray | None = None) -> "Result":
        """The same cells with crop boxes cast with new ratios α, β from their hexagons.

        The crop of a cell is the upper-left cast (2DIP-Net, Fig. 2b) of the hexagon
        around the hollow next to it, in the cell's own frame; α = 0.65, β = 0.5 give the
        canonical cell box. Cells, sites and classes are kept (``image`` is accepted for
        compatibility and not needed).
        """
        from .lattice.cells import frame_boxes
        from .sites import canonical_cell_box

        box = canonical_cell_box(alpha, beta)
        boxes = frame_boxes(self.frames, box) if self.n_cells else np.zeros((0, 4))
        return replace(self, alpha=alpha, beta=beta, boxes=boxes, labels=self.labels.copy(),
                       confidence=self.confidence.copy(), flagged=self.flagged.copy(),
                       corrected=self.corrected.copy(), warnings=list(self.warnings))

    def cells_at(self, x: float, y: float) -> np.ndarray:
        """Indices of the cells whose crop box (in its own frame) holds the point (x, y) px."""
        if not self.n_cells:
            return np.zeros(0, np.int64)
        from .sites import canonical_cell_box

        lin = self.frames[:, :, :2]
        u = np.einsum("nij,nj->ni", np.linalg.inv(lin), np.array([x, y], float)[None] - self.frames[:, :, 2])
        x0, y0, x1, y1 = canonical_cell_box(self.alpha, self.beta)
        return np.flatnonzero((u[:, 0] >= x0) & (u[:, 0] <= x1) & (u[:, 1] >= y0) & (u[:, 1] <= y1))

    def cell_outlines(self) -> np.ndarray:
        """Corners ``(N, 4, 2)`` (x, y px) of every cell's crop box in its own frame."""
        from .sites import canonical_cell_box, cell_box_corners

        c = cell_box_corners(canonical_cell_box(self.alpha, self.beta))
        return np.einsum("nij,kj->nki", self.frames[:, :, :2], c) + self.frames[:, None, :, 2]

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
            "domain": self.domain,
            "x_placed": (self.placed & 1).astype(int), "m_placed": ((self.placed & 2) > 0).astype(int),
            "x_state": np.where(self.x_unresolved, "unresolved", "resolved").tolist(),
        }
        idx = self._cell_sites()
        if idx is not None:
            st = self.site_states

            def at(values, k, fill):  # cells added by hand off the site model: fill
                return np.where(k >= 0, np.asarray(values)[np.maximum(k, 0)], fill)

            cols["m_state"] = at(st.state, idx[1], "unresolved").astype(str).tolist()
            cols["m_z_eff"] = np.round(at(st.z_eff, idx[1], np.nan).astype(float), 1)
            cols["m_probability"] = np.round(at(st.probability, idx[1], np.nan).astype(float), 4)
            cols["x_column"] = at(st.state, idx[0], "unresolved").astype(str).tolist()
            cols["x_atoms"] = at(st.atoms, idx[0], -1)
            cols["x_probability"] = np.round(at(st.probability, idx[0], np.nan).astype(float), 4)
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

    def overlay(self, image: np.ndarray) -> np.ndarray:
        """RGB overlay (:func:`.visualization.result_overlay`): cells in their lattice frames
        coloured by class, boundaries, site states, legend with counts, scale bar, title."""
        from .visualization import result_overlay

        return result_overlay(self, image)

    def sites_in_cells(self) -> np.ndarray:
        """(S,) bool: sites of the site model that belong to a cell off the boundaries (the
        sites the counts speak of; columns cut by the frame's edge or in no cell are not)."""
        model = self.sites
        if model is None:
            return np.zeros(0, bool)
        out = np.zeros(len(model.sites), bool)
        idx = self._cell_sites() if self.site_states is not None else None
        if idx is None:
            cells = model.cells if len(model.cells) == self.n_cells else None
            idx = (cells.x, cells.m) if cells is not None else None
        if idx is None:
            return ~model.sites.boundary
        keep = np.asarray(self.labels) != BOUNDARY
        for k in idx:
            k = np.asarray(k)
            out[k[keep & (k >= 0)]] = True
        return out

    def state_rings(self) -> dict[str, tuple[np.ndarray, tuple[int, int, int]]]:
        """Sites of the cells (off the boundaries) whose state is read and is not the host's, by sublattice
        and state: ``{"M W": (xy px, RGB)}`` for the overlay (the napari ``[site states]``
        colours; ``unresolved`` sites are left out of the picture, the summary counts them)."""
        st, model = self.site_states, self.sites
        if st is None or model is None or len(st.state) != len(model.sites):
            return {}
        s = model.sites
        show = st.off_host(s.role) & ~st.unresolved & ~s.boundary & self.sites_in_cells()
        from .visualization import state_colors

        names = st.state[show].astype(str)
        roles = np.where(s.role[show] == 1, "M", "X")
        cols = state_colors(names)
        out = {}
        for role, name in dict.fromkeys(zip(roles.tolist(), names.tolist())):
            sel = (names == name) & (roles == role)
            out[f"{role} {name}"] = (s.xy[show][sel], tuple(int(255 * c) for c in cols[np.flatnonzero(sel)[0], :3]))
        return out

    def save(self, out_dir: str | Path, image: np.ndarray | None = None, stem: str = "") -> dict[str, Path]:
        """Write ``cells.csv``, ``summary.json`` and (with ``image``) ``overlay.png``.

        ``stem`` prefixes the file names (``<stem>_cells.csv``) for batches.
        """
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
            with atomic_write(p) as fh:
                Image.fromarray(self.overlay(image)).save(fh, format="PNG")
            paths["overlay"] = p
        return paths


def empty_result(shape, material, pixel_size, source, alpha, beta, warnings, low_confidence) -> Result:
    """A result without cells (nothing to analyse), keeping the warnings that say why."""
    z4, z2 = np.zeros((0, 4)), np.zeros((0, 2))
    return Result(
        material=material, pixel_size=float(pixel_size) if pixel_size else float("nan"),
        pixel_size_source=source, image_shape=tuple(shape), alpha=alpha, beta=beta,
        hexagon_boxes=z4, hexagon_scores=np.zeros(0), boxes=z4, x_sites=z2, m_sites=z2,
        ij=np.zeros((0, 2), int), support=np.zeros(0, int), labels=np.zeros(0, int),
        confidence=np.zeros(0), probabilities=np.zeros((0, N_CLASSES)), flagged=np.zeros(0, bool),
        corrected=np.zeros(0, bool), low_confidence=low_confidence, warnings=list(warnings),
    )


#: :func:`prepare_image`: non-finite pixels up to this share of the image are dead pixels
#: (replaced by the median); more, up to :data:`MAX_NONFINITE_FRACTION`, a region (filled
#: with the dark level, left out); more than that, an error.
DEAD_PIXEL_FRACTION = 0.05
MAX_NONFINITE_FRACTION = 0.5


def dark_level(image: np.ndarray, exclude: np.ndarray) -> float:
    """The frame's dark level: the 1st percentile of its pixels outside ``exclude`` (what a
    NaN border or a vacuum region is filled with: flat, so no column is found there)."""
    return float(np.percentile(image[~exclude], 1.0))


def prepare_image(image: np.ndarray, copy: bool = True) -> tuple[np.ndarray, list[str]]:
    """Validate an input image -> (2-D float32 copy, warnings).

    RGB(A) images are converted to grey (a false-coloured one read back through its colour
    map, :func:`~.exports.rgb_to_grey`); a few non-finite pixels (≤ 5 %: dead pixels) are
    replaced by the median, larger non-finite regions (up to half the image: the border of
    an aligned stack) by the frame's dark level (its 1st percentile: flat, so no column is
    found there; the frame's own pixels drawn at random let the column finder build
    spurious domains in a third of a real frame and read its V dopants as vacancies), so
    they read as vacuum (:func:`~.pipeline.analyze` also leaves their cells out).
    ``copy=False``: a C-contiguous image that is float32 with all pixels finite, or
    8/16-bit integers (counts, exact in float32: :func:`is_exact_counts`),
    comes back as a read-only view of itself (no second full-size array; nothing can write
    into the caller's data; the stages read integers as float32 a band or crop at a time);
    any other image is converted as with ``copy=True``.

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
        from .exports import false_colour_note, rgb_to_grey

        a, cmap = rgb_to_grey(a)
        warnings.append("RGB image converted to grey" if cmap is None else f"RGB image {false_colour_note(cmap)}")
    if a.ndim != 2:
        raise ValueError(
            f"image must be 2-D (rows, cols) or RGB, got shape {a.shape}; "
            "for a series of frames analyse each frame, or align and average them (stacks.align_and_sum)"
        )
    maybe_bad = a.dtype.kind == "f"  # integers convert to finite values
    if not copy and a.flags.c_contiguous and (
            is_exact_counts(a) or (a.dtype == np.float32 and np.isfinite(a.sum(dtype=np.float64)))):
        view = a.view()
        view.flags.writeable = False
        return view, warnings
    a = a.astype(np.float32, copy=True)
    # a finite sum means every pixel is finite: the per-pixel mask only when it is not
    bad = ~np.isfinite(a) if maybe_bad and not np.isfinite(a.sum(dtype=np.float64)) else None
    if bad is not None and bad.any():
        frac = bad.mean()
        if frac > MAX_NONFINITE_FRACTION:
            raise ValueError(f"{frac:.0%} of the image is NaN or infinite; cannot analyse it")
        if frac > DEAD_PIXEL_FRACTION:
            a[bad] = dark_level(a, bad)
            warnings.append(f"{100 * frac:.0f} % of the image is NaN or infinite (an aligned stack's border?): "
                            "masked, the cells there left out")
        else:
            a[bad] = np.median(a[~bad])
            warnings.append(f"{int(bad.sum())} NaN/inf pixels replaced by the median")
    return a, warnings



