"""Writer contributions: an analysis, from any of its layers, as files that reopen
(:func:`napari_tmd_defects.results_io.save_result`: ``NAME_cells.csv``,
``NAME_summary.json``, ``NAME_result.npz``, ``NAME.tmd.json``), and any Shapes layer as
a CSV of vertices.

The cell table is :meth:`napari_tmd_defects.analysis.Result.write_csv` (px of the
image, x = column). The shapes CSV has napari's columns ``index, shape-type,
vertex-index, axis-0, axis-1`` (data coordinates: axis-0 = row, axis-1 = column) plus
``class`` and ``confidence`` when the layer has them.

napari lists writers of equal layer-type constraints in plugin order (its own first),
so for one Points or Shapes layer its CSV writer comes first and this one second; for
the layers of an analysis together (image, Shapes, Points, Labels) this one is first.
A file name ending in ``.tmd.json`` picks it without asking (npe2 extensions start with
a dot, so ``_cells.csv`` cannot be one: a ``.csv`` name goes to the first CSV writer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._layers import IMAGE_KEY, RESULT_KEY, unwrap


def _csv_path(path: str) -> Path:
    p = Path(path)
    return p if p.suffix.lower() == ".csv" else p.with_suffix(".csv")


def _image_of(name: str | None, layer_data: list | None = None) -> tuple[np.ndarray | None, str | None]:
    """(pixels, file) of the image layer called ``name``: from ``layer_data`` or the
    current viewer; the file is None when the image has none."""
    data, source = None, None
    for d, attrs, kind in layer_data or []:
        if kind == "image" and attrs.get("name") == name:
            data, source = d, (attrs.get("metadata") or {}).get("source")
    try:
        import napari

        viewer = napari.current_viewer()
    except ImportError:
        viewer = None
    if viewer is not None and name in viewer.layers:
        lay = viewer.layers[name]
        data = lay.data if data is None else data
        source = source or lay.metadata.get("source") or getattr(lay.source, "path", None)
    if data is not None:
        from ..analysis import prepare_image

        try:
            data = prepare_image(np.asarray(data))[0]
        except ValueError:
            data = None
    return data, (str(source) if source else None)


def _save(path: str, result, image_name: str | None, layer_data: list | None = None) -> list[str]:
    from ..results_io import save_result

    image, source = _image_of(image_name, layer_data)
    paths = save_result(unwrap(result), path, image=image, image_source=source, image_name=image_name or "")
    return [str(p) for p in paths.values()]


def write_cell_table(path: str, data: Any, attributes: dict[str, Any] | None = None) -> list[str]:
    """Write the analysis behind a cell layer (or behind the layers given) so that it reopens.

    Called with one layer (``data, attributes``) or, for several layers, with napari's
    list of ``(data, attributes, layer_type)``. Returns the files written, the cell
    table first.

    Raises
    ------
    ValueError
        If no layer (or the layers of more than one analysis) comes from a
        napari-tmd-defects analysis.
    """
    if attributes is None:
        return _write_layers(path, list(data))
    meta = attributes.get("metadata") or {}
    result = meta.get(RESULT_KEY)
    if result is None:
        name = attributes.get("name", "this layer")
        raise ValueError(
            f"{name!r} holds no napari-tmd-defects cells; save it as a shapes CSV or run Defect analysis first"
        )
    return _save(path, result, meta.get(IMAGE_KEY))


def _write_layers(path: str, layer_data: list) -> list[str]:
    results: dict[int, tuple[Any, str | None]] = {}
    for _, attrs, _ in layer_data:
        meta = attrs.get("metadata") or {}
        if meta.get(RESULT_KEY) is not None:
            res = unwrap(meta[RESULT_KEY])
            results.setdefault(id(res), (res, meta.get(IMAGE_KEY)))
    if not results:
        raise ValueError("none of these layers holds napari-tmd-defects cells; run Defect analysis first")
    if len(results) > 1:
        names = ", ".join(sorted(str(n) for _, n in results.values()))
        raise ValueError(f"these layers hold {len(results)} analyses ({names}); select the layers of one to save it")
    ((result, image_name),) = results.values()
    return _save(path, result, image_name, layer_data)


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
