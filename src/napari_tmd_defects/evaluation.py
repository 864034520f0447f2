"""Score analysis results against simulated ground truth; Markdown reports.

Cells are matched one-to-one by the distance between box centres (below 0.3 a; the
nearest other cell centre is a away), which works at any lattice rotation. For each match
the box IoU is also recorded, giving the paper's "unit cells with IoU > 0.5" accuracy.

Which of its three metal neighbours an X column is paired with is a convention (the
partner bond closest to 30°, :data:`.sites.CANONICAL_PARTNER`); a domain turned close to
±60° may be paired the other way than the simulator paired it. Such cells still match
when their X and M sites are the truth's (:func:`match_sites`), and are scored against
the truth's site states in that pairing. Vacancy sites are scored site by site.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .geometry import box_iou, inside_boxes
from .materials import CLASS_VACANCIES, N_CLASSES, get_material

__all__ = ["CellScore", "match_cells", "match_result_cells", "match_sites", "score_result", "aggregate", "format_report"]


def match_cells(pred_boxes: np.ndarray, gt_boxes: np.ndarray, a_px: float, max_dist: float = 0.3):
    """One-to-one matching of predicted to true cells by box-centre distance.

    Returns
    -------
    pred_idx, gt_idx : int arrays of matched pairs
    n_duplicates : int
        Unmatched predictions lying within ``max_dist * a_px`` of an already matched true
        cell (the same cell reported twice).
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial import cKDTree

    p = np.asarray(pred_boxes, float).reshape(-1, 4)
    g = np.asarray(gt_boxes, float).reshape(-1, 4)
    if len(p) == 0 or len(g) == 0:
        return np.zeros(0, int), np.zeros(0, int), 0
    pc = (p[:, :2] + p[:, 2:]) / 2
    gc = (g[:, :2] + g[:, 2:]) / 2
    r = max_dist * a_px
    pairs = cKDTree(pc).query_ball_tree(cKDTree(gc), r)
    rows, cols, cost = [], [], []
    for i, js in enumerate(pairs):
        for j in js:
            rows.append(i)
            cols.append(j)
            cost.append(float(np.linalg.norm(pc[i] - gc[j])))
    if not rows:
        return np.zeros(0, int), np.zeros(0, int), 0
    big = 1e6
    m = np.full((len(p), len(g)), big)
    m[rows, cols] = cost
    ri, ci = linear_sum_assignment(m)
    keep = m[ri, ci] < big
    ri, ci = ri[keep], ci[keep]
    matched_pred = np.zeros(len(p), bool)
    matched_pred[ri] = True
    near = np.array([len(js) > 0 for js in pairs])
    n_dup = int(np.sum(near & ~matched_pred))
    return ri, ci, n_dup


def match_sites(pred: np.ndarray, true: np.ndarray, a_px: float, max_dist: float = 0.3) -> np.ndarray:
    """Index of the true site each predicted site ``(N, 2)`` stands on (within ``max_dist * a_px``
    px, mutual nearest neighbours), or -1."""
    from scipy.spatial import cKDTree

    p = np.asarray(pred, float).reshape(-1, 2)
    t = np.asarray(true, float).reshape(-1, 2)
    out = np.full(len(p), -1)
    if len(p) == 0 or len(t) == 0:
        return out
    d, j = cKDTree(t).query(p)
    back = cKDTree(p).query(t)[1]
    ok = (d <= max_dist * a_px) & (back[j] == np.arange(len(p)))
    out[ok] = j[ok]
    return out


#: Equal-width confidence bins of the reliability table and the calibration error.
CALIBRATION_BINS = 10


@dataclass
class CellScore:
    """Counts accumulated over one or more images."""

    n_true: int = 0
    n_pred: int = 0
    n_matched: int = 0
    n_duplicates: int = 0
    n_iou50: int = 0
    iou_sum: float = 0.0
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((N_CLASSES, N_CLASSES), int))
    true_counts: np.ndarray = field(default_factory=lambda: np.zeros(N_CLASSES, int))
    pred_counts: np.ndarray = field(default_factory=lambda: np.zeros(N_CLASSES, int))
    seconds: float = 0.0
    n_images: int = 0
    #: per vacancy site type (V_M, V_X1, V_X2): true positives, false negatives, false
    #: positives among cells in domain interiors
    site_tp: np.ndarray = field(default_factory=lambda: np.zeros(3, int))
    site_fn: np.ndarray = field(default_factory=lambda: np.zeros(3, int))
    site_fp: np.ndarray = field(default_factory=lambda: np.zeros(3, int))
    #: points along the true boundaries (every a/4), and those found within 1 a
    boundary_points: int = 0
    boundary_found: int = 0
    #: points along the reported boundaries, and those within 1 a of a true one
    reported_boundary_points: int = 0
    reported_boundary_true: int = 0
    #: cells reported as boundary
    n_boundary_cells: int = 0
    #: largest cluster of adjacent cells wrongly called the same defect class (max over images)
    largest_fake_cluster: int = 0
    #: images with a fake-defect cluster of more than 12 cells
    n_fake_clusters: int = 0
    #: matched cells whose chalcogen state the result reports as unresolved
    n_unresolved: int = 0
    #: reliability bins (:data:`CALIBRATION_BINS` of the reported confidence): scored cells,
    #: their summed confidence, and how many were right
    calib_n: np.ndarray = field(default_factory=lambda: np.zeros(CALIBRATION_BINS, int))
    calib_conf: np.ndarray = field(default_factory=lambda: np.zeros(CALIBRATION_BINS))
    calib_right: np.ndarray = field(default_factory=lambda: np.zeros(CALIBRATION_BINS, int))

    def add(self, other: "CellScore") -> None:
        for k in ("n_true", "n_pred", "n_matched", "n_duplicates", "n_iou50", "iou_sum", "seconds", "n_images",
                  "boundary_points", "boundary_found", "reported_boundary_points", "reported_boundary_true",
                  "n_boundary_cells", "n_fake_clusters", "n_unresolved"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.confusion += other.confusion
        self.true_counts += other.true_counts
        self.pred_counts += other.pred_counts
        self.site_tp += other.site_tp
        self.site_fn += other.site_fn
        self.site_fp += other.site_fp
        self.calib_n += other.calib_n
        self.calib_conf += other.calib_conf
        self.calib_right += other.calib_right
        self.largest_fake_cluster = max(self.largest_fake_cluster, other.largest_fake_cluster)

    def site_recall(self) -> np.ndarray:
        """Recall of V_M, V_X1, V_X2 sites in domain interiors (NaN where none are true)."""
        n = self.site_tp + self.site_fn
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, self.site_tp / np.maximum(n, 1), np.nan)

    def site_precision(self) -> np.ndarray:
        """Precision of V_M, V_X1, V_X2 calls in domain interiors (NaN where none are made)."""
        n = self.site_tp + self.site_fp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, self.site_tp / np.maximum(n, 1), np.nan)

    @property
    def boundary_recall(self) -> float:
        """Share of the true boundary length found within one lattice constant."""
        return self.boundary_found / self.boundary_points if self.boundary_points else float("nan")

    @property
    def boundary_precision(self) -> float:
        """Share of the reported boundary length within one lattice constant of a true one."""
        if not self.reported_boundary_points:
            return float("nan")
        return self.reported_boundary_true / self.reported_boundary_points

    @property
    def recall(self) -> float:
        return self.n_matched / self.n_true if self.n_true else float("nan")

    @property
    def precision(self) -> float:
        return self.n_matched / self.n_pred if self.n_pred else float("nan")

    @property
    def duplicate_rate(self) -> float:
        return self.n_duplicates / self.n_pred if self.n_pred else float("nan")

    @property
    def accuracy_iou50(self) -> float:
        """Fraction of true cells matched with IoU > 0.5 (the paper's detection accuracy)."""
        return self.n_iou50 / self.n_true if self.n_true else float("nan")

    @property
    def mean_iou(self) -> float:
        return self.iou_sum / self.n_matched if self.n_matched else float("nan")

    @property
    def class_accuracy(self) -> float:
        tot = self.confusion.sum()
        return float(np.trace(self.confusion) / tot) if tot else float("nan")

    @property
    def ece(self) -> float:
        """Expected calibration error of the reported confidence: the cell-weighted mean
        gap between confidence and accuracy over :data:`CALIBRATION_BINS` equal bins."""
        n = self.calib_n.sum()
        if not n:
            return float("nan")
        nz = self.calib_n > 0
        gap = np.abs(self.calib_right[nz] / self.calib_n[nz] - self.calib_conf[nz] / self.calib_n[nz])
        return float(np.sum(self.calib_n[nz] * gap) / n)

    def reliability(self) -> list[tuple[float, float, int, float, float]]:
        """Per non-empty bin: ``(low, high, cells, mean confidence, accuracy)``."""
        edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
        return [(edges[b], edges[b + 1], int(self.calib_n[b]), self.calib_conf[b] / self.calib_n[b],
                 self.calib_right[b] / self.calib_n[b]) for b in range(CALIBRATION_BINS) if self.calib_n[b]]

    def per_class_accuracy(self) -> np.ndarray:
        """Recall of each true class among matched cells (NaN where absent)."""
        rows = self.confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(rows > 0, np.diag(self.confusion) / np.maximum(rows, 1), np.nan)


#: Sites farther than this from a true boundary line (lattice constants) are "interior".
INTERIOR_MARGIN_A = 1.5


def _line_points(lines, step: float) -> np.ndarray:
    """Points every ``step`` px along polylines ``[(K, 2), ...]``."""
    out = []
    for ln in lines:
        p = np.asarray(ln, float).reshape(-1, 2)
        if len(p) < 2:
            continue
        seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
        t = np.concatenate([[0.0], np.cumsum(seg)])
        if t[-1] <= 0:
            continue
        u = np.arange(0.0, t[-1] + 1e-9, step)
        out.append(np.stack([np.interp(u, t, p[:, 0]), np.interp(u, t, p[:, 1])], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2))


def _site_states(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(chalcogens missing 0/1/2, metal missing) of class ids; -1 / False for no class."""
    lab = np.asarray(labels, int)
    vac = np.asarray(CLASS_VACANCIES)
    ok = (lab >= 0) & (lab < N_CLASSES)
    x = np.where(ok, vac[np.clip(lab, 0, N_CLASSES - 1), 0], -1)
    m = np.where(ok, vac[np.clip(lab, 0, N_CLASSES - 1), 1] == 1, False)
    return x, m


def match_result_cells(result, truth):
    """Pair a result's cells with the true cells as :func:`score_result` scores them.

    Cells are matched by box centres (:func:`match_cells`); a cell left unmatched whose X
    and M sites both lie on true sites (paired with another metal neighbour than the
    truth's) is matched to the true cell of its X site. Returns ``(pi, gi, duplicates,
    on_x, on_m, t_lab)``: matched result and true cell indices, the duplicate count, each
    result cell's true X and M site (-1: none, :func:`match_sites`) and the true class in
    the result's pairing (the states of the true X and M sites where both are matched).
    """
    a = float(truth.a_px)
    n_p = int(result.n_cells)
    tx, tm = _site_states(truth.cell_label)
    on_x = match_sites(result.x_sites, truth.cell_x_site, a) if n_p else np.zeros(0, int)
    on_m = match_sites(result.m_sites, truth.cell_m_site, a) if n_p else np.zeros(0, int)
    pi, gi, dup = match_cells(result.boxes, truth.cell_box, a)
    # cells paired with another metal neighbour than the truth's: both sites on true sites
    free_p = np.ones(n_p, bool)
    free_p[pi] = False
    free_t = np.ones(truth.n_cells, bool)
    free_t[gi] = False
    extra = np.flatnonzero(free_p & (on_x >= 0) & (on_m >= 0))
    extra = extra[free_t[on_x[extra]]]
    pi, gi = np.r_[pi, extra].astype(int), np.r_[gi, on_x[extra]].astype(int)
    # the truth in the result's pairing: the state of the true X and of the true M
    t_lab = truth.cell_label[gi].copy()
    both = (on_x[pi] >= 0) & (on_m[pi] >= 0) if len(pi) else np.zeros(0, bool)
    t_lab[both] = tx[on_x[pi][both]] + 3 * tm[on_m[pi][both]].astype(int)
    return pi, gi, dup, on_x, on_m, t_lab


def score_result(result, truth) -> CellScore:
    """Compare one :class:`analysis.Result` with its :class:`simulation.GroundTruth`.

    Cells are matched by box centres, or, when paired the other way, by their X and M
    sites (see the module doc); classes are scored on true cells off the domain
    boundaries (boundary cells are not point defects). Vacancy sites (V_M, V_X1, V_X2)
    are scored site by site in domain interiors (farther than :data:`INTERIOR_MARGIN_A` a
    from a true boundary), calls on sites that are not there counting as false (on cells
    whose box lies inside the image, as the truth's do: one crossing the edge is not scored);
    boundaries by the share of their length found within one lattice constant.
    """
    from scipy.spatial import cKDTree

    s = CellScore(n_true=truth.n_cells, n_pred=result.n_cells, n_images=1)
    s.seconds = float(result.timings.get("total", 0.0))
    interior = truth.interior
    s.true_counts = np.bincount(truth.cell_label[interior], minlength=N_CLASSES)
    lab = np.asarray(result.labels)
    s.pred_counts = np.bincount(lab[lab >= 0], minlength=N_CLASSES)
    a = float(truth.a_px)
    n_p = int(result.n_cells)
    xu = np.asarray(getattr(result, "x_unresolved", np.zeros(n_p, bool)), bool)
    if len(xu) != n_p:
        xu = np.zeros(n_p, bool)
    tx, tm = _site_states(truth.cell_label)
    px, pm = _site_states(lab)
    pi, gi, dup, on_x, on_m, t_lab = match_result_cells(result, truth)
    s.n_matched = len(pi)
    s.n_duplicates = dup
    s.n_boundary_cells = int(np.sum(lab == -2))
    if len(pi):
        iou = box_iou(result.boxes[pi], truth.cell_box[gi])[np.arange(len(pi)), np.arange(len(pi))]
        s.iou_sum = float(iou.sum())
        s.n_iou50 = int(np.sum(iou > 0.5))
        s.n_unresolved = int(np.sum(xu[pi] & interior[gi]))
        # classes are scored where the result resolves them
        ok = (lab[pi] >= 0) & interior[gi] & ~xu[pi]
        np.add.at(s.confusion, (t_lab[ok], lab[pi][ok]), 1)
        conf = np.asarray(getattr(result, "confidence", np.ones(n_p)), float)[pi][ok]
        b = np.clip((conf * CALIBRATION_BINS).astype(int), 0, CALIBRATION_BINS - 1)
        np.add.at(s.calib_n, b, 1)
        np.add.at(s.calib_conf, b, conf)
        np.add.at(s.calib_right, b, (t_lab[ok] == lab[pi][ok]).astype(int))
    # ---- vacancy sites in domain interiors, site by site
    tline = _line_points(truth.boundary_lines, 0.25 * a)
    line_tree = cKDTree(tline) if len(tline) else None

    def deep(pts: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts, float).reshape(-1, 2)
        if line_tree is None or len(pts) == 0:
            return np.ones(len(pts), bool)
        return line_tree.query(pts)[0] > INTERIOR_MARGIN_A * a

    # the truth lists the cells whose box lies inside the image: a call on a cell that
    # crosses the edge (within 0.05 a) has no true cell to be scored against
    tol = 0.05 * a
    listed = inside_boxes(np.asarray(result.boxes, float).reshape(-1, 4) + np.array([-tol, -tol, tol, tol]),
                          truth.shape) if n_p else np.zeros(0, bool)
    for k, (t_xy, p_xy, on, t_has, p_has) in enumerate((
        (truth.cell_m_site, result.m_sites, on_m, tm, pm),
        (truth.cell_x_site, result.x_sites, on_x, tx == 1, px == 1),
        (truth.cell_x_site, result.x_sites, on_x, tx == 2, px == 2),
    )):
        calls = p_has & ~xu if k > 0 else p_has.copy()
        found = np.full(len(t_xy), -1)
        found[on[on >= 0]] = np.flatnonzero(on >= 0)
        sel = deep(t_xy) & interior
        if k > 0 and n_p:  # chalcogen sites the result reports as unresolved are neither found nor missed
            sel &= ~((found >= 0) & xu[np.maximum(found, 0)])
        called = (found >= 0) & calls[np.maximum(found, 0)] if n_p else np.zeros(len(t_xy), bool)
        s.site_tp[k] += int(np.sum(t_has & called & sel))
        s.site_fn[k] += int(np.sum(t_has & ~called & sel))
        s.site_fp[k] += int(np.sum(~t_has & called & sel))
        s.site_fp[k] += int(np.sum(calls & (on < 0) & deep(p_xy) & listed))  # sites that are not there
    # ---- boundaries
    pc = 0.5 * (result.x_sites + result.m_sites) if n_p else np.zeros((0, 2))
    rep = result.sites.boundary_lines if getattr(result, "sites", None) is not None else []
    rline = _line_points(rep, 0.25 * a)
    evidence = np.concatenate([rline, pc[lab == -2]]) if len(pc) else rline
    if len(tline):
        s.boundary_points = len(tline)
        if len(evidence):
            s.boundary_found = int(np.sum(cKDTree(evidence).query(tline)[0] <= a))
    if len(rline):
        s.reported_boundary_points = len(rline)
        if len(tline):
            s.reported_boundary_true = int(np.sum(cKDTree(tline).query(rline)[0] <= a))
    # ---- clusters of wrongly called defects
    wrong = np.zeros(len(pc), bool)
    if len(pc):
        truth_lab = np.full(len(pc), -1)
        truth_lab[pi] = t_lab
        wrong = (lab > 0) & (lab != truth_lab)
    best = 0
    for k in range(1, N_CLASSES):
        idx = np.flatnonzero(wrong & (lab == k))
        if len(idx) <= best:
            continue
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        pairs = cKDTree(pc[idx]).query_pairs(1.2 * a, output_type="ndarray")
        g = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(idx),) * 2)
        best = max(best, int(np.bincount(connected_components(g, directed=False)[1]).max()))
    s.largest_fake_cluster = best
    s.n_fake_clusters = int(best > 12)
    return s


def aggregate(scores: Iterable[CellScore]) -> CellScore:
    tot = CellScore()
    for s in scores:
        tot.add(s)
    return tot


def _pct(x: float) -> str:
    return "—" if x != x else f"{100 * x:.2f} %"


def format_report(
    title: str,
    scores: dict[str, CellScore],
    material: str = "MoTe2",
    command: str = "",
    notes: str = "",
) -> str:
    """Markdown report comparing methods (dict name -> aggregated score)."""
    names = get_material(material).class_names
    import torch

    lines = [f"# {title}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [
        f"Hardware: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}; "
        f"written {time.strftime('%Y-%m-%d')}.",
        "",
    ]
    if notes:
        lines += [notes, ""]
    lines += [
        "| method | images | true cells | recall | precision | duplicates | IoU>0.5 accuracy | mean IoU | class accuracy "
        "| ECE | s / image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in scores.items():
        lines.append(
            f"| {name} | {s.n_images} | {s.n_true} | {_pct(s.recall)} | {_pct(s.precision)} | "
            f"{_pct(s.duplicate_rate)} | {_pct(s.accuracy_iou50)} | {s.mean_iou:.3f} | "
            f"{_pct(s.class_accuracy)} | {s.ece:.4f} | {s.seconds / max(s.n_images, 1):.2f} |"
        )
    lines += ["", "Per-class accuracy (recall of each true class among matched cells):", ""]
    lines += ["| method | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for name, s in scores.items():
        lines.append(f"| {name} | " + " | ".join(_pct(v) for v in s.per_class_accuracy()) + " |")
    lines += ["", "Defect counts, predicted vs true (all images):", ""]
    lines += ["| method | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    first = next(iter(scores.values()), None)
    if first is not None:
        lines.append("| truth | " + " | ".join(str(int(v)) for v in first.true_counts) + " |")
    for name, s in scores.items():
        lines.append(f"| {name} | " + " | ".join(str(int(v)) for v in s.pred_counts) + " |")
    lines += ["", f"Vacancy sites in domain interiors (farther than {INTERIOR_MARGIN_A:g} a from a true boundary; "
              "recall / precision):", ""]
    lines += ["| method | V_M | V_X1 | V_X2 | chalcogen unresolved | largest fake-defect cluster | "
              "images with a fake cluster > 12 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in scores.items():
        rec, pre = s.site_recall(), s.site_precision()
        cols = [f"{_pct(r)} / {_pct(p)}" for r, p in zip(rec, pre)]
        unres = _pct(s.n_unresolved / s.n_matched) if s.n_matched else "—"
        lines.append(f"| {name} | " + " | ".join(cols) + f" | {unres} | {s.largest_fake_cluster} | "
                     f"{s.n_fake_clusters} |")
    if any(s.boundary_points or s.reported_boundary_points or s.n_boundary_cells for s in scores.values()):
        lines += ["", "Domain boundaries (length found within 1 a of the truth; reported length within 1 a of a "
                  "true boundary):", ""]
        lines += ["| method | boundary recall | boundary precision | boundary cells |", "|---|---:|---:|---:|"]
        for name, s in scores.items():
            lines.append(f"| {name} | {_pct(s.boundary_recall)} | {_pct(s.boundary_precision)} | "
                         f"{s.n_boundary_cells} |")
    lines += ["", "Reliability of the reported confidence (cells scored for their class; ECE = cell-weighted mean "
              "|accuracy − confidence| over the bins):", ""]
    lines += ["| method | confidence bin | cells | mean confidence | accuracy |", "|---|---|---:|---:|---:|"]
    for name, s in scores.items():
        for lo, hi, n, conf, acc in s.reliability():
            lines.append(f"| {name} | {lo:.1f}–{hi:.1f} | {n} | {conf:.4f} | {acc:.4f} |")
    for name, s in scores.items():
        lines += ["", f"Confusion matrix, {name} (rows: truth, columns: prediction):", ""]
        lines += ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for k, row in enumerate(s.confusion):
            lines.append(f"| {names[k]} | " + " | ".join(str(int(v)) for v in row) + " |")
    return "\n".join(lines) + "\n"


def evaluate_dataset(
    data: str | Path,
    methods: dict[str, Callable[[np.ndarray, Any], Any]],
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, CellScore]:
    """Run each method (``f(image, truth) -> Result``) on a dataset and aggregate scores."""
    from .datasets import load_dataset

    items = load_dataset(data)[:limit] if limit else load_dataset(data)
    out = {name: CellScore() for name in methods}
    for k, item in enumerate(items):
        image, truth = item.load()
        for name, f in methods.items():
            out[name].add(score_result(f(image, truth), truth))
        if progress:
            progress(k + 1, len(items))
    return out


def dataset_material(data: str | Path, limit: int | None = None) -> str:
    """The material all items of a dataset share (its class names head the report's
    tables), or ``"MoTe2"`` (the paper's names) for a set of several."""
    from .datasets import load_dataset

    items = load_dataset(data)[:limit] if limit else load_dataset(data)
    found = {json.loads(Path(item.truth_path).read_text()).get("material", "MoTe2") for item in items}
    return found.pop() if len(found) == 1 else "MoTe2"


def concentration_error(score: CellScore) -> np.ndarray:
    """Relative error of the predicted defect counts per class (NaN where none are true)."""
    t = score.true_counts.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(t > 0, (score.pred_counts - t) / t, math.nan)
