"""Score analysis results against simulated ground truth; Markdown reports.

Cells are matched one-to-one by the distance between box centres (below 0.3 a; the
nearest other cell centre is a away), which works at any lattice rotation. For each match
the box IoU is also recorded, giving the paper's "unit cells with IoU > 0.5" accuracy.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .geometry import box_iou
from .materials import N_CLASSES, get_material

__all__ = ["CellScore", "match_cells", "score_result", "aggregate", "format_report"]


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

    def add(self, other: "CellScore") -> None:
        for k in ("n_true", "n_pred", "n_matched", "n_duplicates", "n_iou50", "iou_sum", "seconds", "n_images"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.confusion += other.confusion
        self.true_counts += other.true_counts
        self.pred_counts += other.pred_counts

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

    def per_class_accuracy(self) -> np.ndarray:
        """Recall of each true class among matched cells (NaN where absent)."""
        rows = self.confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(rows > 0, np.diag(self.confusion) / np.maximum(rows, 1), np.nan)


def score_result(result, truth) -> CellScore:
    """Compare one :class:`analysis.Result` with its :class:`simulation.GroundTruth`."""
    s = CellScore(n_true=truth.n_cells, n_pred=result.n_cells, n_images=1)
    s.seconds = float(result.timings.get("total", 0.0))
    s.true_counts = np.bincount(truth.cell_label, minlength=N_CLASSES)
    lab = np.asarray(result.labels)
    s.pred_counts = np.bincount(lab[lab >= 0], minlength=N_CLASSES)
    pi, gi, dup = match_cells(result.boxes, truth.cell_box, truth.a_px)
    s.n_matched = len(pi)
    s.n_duplicates = dup
    if len(pi):
        iou = box_iou(result.boxes[pi], truth.cell_box[gi])[np.arange(len(pi)), np.arange(len(pi))]
        s.iou_sum = float(iou.sum())
        s.n_iou50 = int(np.sum(iou > 0.5))
        ok = lab[pi] >= 0
        np.add.at(s.confusion, (truth.cell_label[gi][ok], lab[pi][ok]), 1)
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
        "| method | images | true cells | recall | precision | duplicates | IoU>0.5 accuracy | mean IoU | class accuracy | s / image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in scores.items():
        lines.append(
            f"| {name} | {s.n_images} | {s.n_true} | {_pct(s.recall)} | {_pct(s.precision)} | "
            f"{_pct(s.duplicate_rate)} | {_pct(s.accuracy_iou50)} | {s.mean_iou:.3f} | "
            f"{_pct(s.class_accuracy)} | {s.seconds / max(s.n_images, 1):.2f} |"
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


def concentration_error(score: CellScore) -> np.ndarray:
    """Relative error of the predicted defect counts per class (NaN where none are true)."""
    t = score.true_counts.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(t > 0, (score.pred_counts - t) / t, math.nan)
