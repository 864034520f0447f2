"""Writer contributions: the cell table of an analysis (CSV) from one of its Shapes or
Points layers, and any Shapes layer as a CSV of vertices.

The cell table is :meth:`napari_tmd_defects.analysis.Result.write_csv` (px of the
image, x = column). The shapes CSV has napari's columns ``index, shape-type,
vertex-index, axis-0, axis-1`` (data coordinates: axis-0 = row, axis-1 = column) plus
``class`` and ``confidence`` when the layer has them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._layers import RESULT_KEY


def _csv_path(path: str) -> Path:
    p = Path(path)
    return p if p.suffix.lower() == ".csv" else p.with_suffix(".csv")


def write_cell_table(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write the cell table of the analysis behind a cell layer.

    Raises
    ------
    ValueError
        If the layer does not come from a napari-tmd-defects analysis.
    """
    result = (attributes.get("metadata") or {}).get(RESULT_KEY)
    if result is None:
        name = attributes.get("name", "this layer")
        raise ValueError(
            f"{name!r} holds no napari-tmd-defects cells; save it as a shapes CSV or run Defect analysis first"
        )
    return [str(result.write_csv(_csv_path(path)))]


def write_shapes_csv(path: str, data: list[np.ndarray], attributes: dict[str, Any]) -> list[str]:
    """Write a Shapes layer as a CSV of vertices (one row per vertex)."""
    from ..io import atomic_write

    types = attributes.get("shape_type") or ["polygon"] * len(data)
    feats = attributes.get("features")
    extra: dict[str, Any] = {}
    if feats is not None and len(feats) == len(data):
        for col in ("class", "confidence"):
            if col in feats:
                extra[col] = list(feats[col])
    out = _csv_path(path)
    with atomic_write(out, "w") as fh:
        fh.write(",".join(["index", "shape-type", "vertex-index", "axis-0", "axis-1", *extra]) + "\n")
        for i, verts in enumerate(data):
            v = np.asarray(verts, dtype=float)
            tail = [f"{extra[c][i]:.4f}" if c == "confidence" else str(extra[c][i]) for c in extra]
            for k, (r, c) in enumerate(v[:, -2:]):
                fh.write(",".join([str(i), str(types[i]), str(k), f"{r:.3f}", f"{c:.3f}", *tail]) + "\n")
    return [str(out)]
