"""Reader contribution: the image formats of :func:`napari_tmd_defects.io.read_image`
(TIFF, PNG/JPEG/BMP exports, NumPy, and DM3/DM4/EMD/SER/MRC via rosettasciio).

The pixel size goes into the layer's ``scale`` (Å per px, ``units`` Å) and into
``metadata["pixel_size_A"]``; files that cannot be read as a 2-D image give None, so
napari tries its other readers.

Saved analyses (``NAME.tmd.json``, ``NAME_summary.json``, ``NAME_cells.csv``; see
:mod:`napari_tmd_defects.results_io`) reopen as the image and the same layers an
analysis makes (:func:`._layers.show_result`), so the Correction and Statistics docks
find the result; a file of that name that is not ours gives None.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from ..io import IMAGE_SUFFIXES

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData] | None] | None:
    """The reader function for ``path`` (or a list of paths), or None for other files."""
    from ..results_io import is_result_file

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if len(paths) == 1 and is_result_file(paths[0]):
        return read_result
    if not paths or not all(Path(p).suffix.lower() in IMAGE_SUFFIXES for p in paths):
        return None
    return read_images


def read_images(path: str | list[str]) -> list[LayerData] | None:
    """One image layer per file (a series of frames: a 3-D layer, which the analysis dock
    asks to average first); None if any file is not a readable image or series."""
    from ..io import ImageReadError, read_image, read_stack

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    out: list[LayerData] = []
    for p in paths:
        try:
            image, meta = read_image(p)
        except ImageReadError:
            try:
                image, meta = read_stack(p)  # a series of frames
            except (ImageReadError, FileNotFoundError):
                return None
        except FileNotFoundError:
            return None
        name = Path(p).stem
        if meta.get("signals"):  # a file of several images: say which one this is
            name = f"{name} [{meta.get('signal') or 'untitled'}]"
        kwargs: dict[str, Any] = {"name": name, "metadata": meta, "colormap": "gray"}
        px = meta.get("pixel_size_A")
        if px:
            lead = (1.0,) * (image.ndim - 2)
            kwargs["scale"] = (*lead, px, px)
            kwargs["units"] = (*(("pixel",) * (image.ndim - 2)), "angstrom", "angstrom")
        out.append((image, kwargs, "image"))
    return out


def read_result(path: str | list[str]) -> list[LayerData]:
    """Reopen a saved analysis in the current viewer: its image (when found) and its layers.

    Returns napari's "nothing more to add" value ``[(None,)]`` after adding the layers
    itself; without a viewer, the image and the cell-centre Points layer as layer data.

    Raises
    ------
    napari_tmd_defects.results_io.ResultReadError
        If the files are not a readable result (the message says which and why).
    """
    import napari

    from ..results_io import load_result

    p = path if isinstance(path, (str, Path)) else path[0]
    opened = load_result(p)
    viewer = napari.current_viewer()
    if viewer is None:
        return result_layer_data(opened)
    show_opened(viewer, opened)
    return [(None,)]


class _NoImage:
    """Stands in for the image layer when the image was not found: a name and a geometry."""

    def __init__(self, name: str, scale: tuple[float, float], units: tuple[str, str]):
        self.name, self.scale, self.translate, self.units = name, scale, (0.0, 0.0), units


def _geometry(result) -> dict[str, Any]:
    px = result.pixel_size
    if math.isfinite(px) and px > 0:
        return {"scale": (px, px), "units": ("angstrom", "angstrom")}
    return {"scale": (1.0, 1.0), "units": ("pixel", "pixel")}


def _free_name(viewer, name: str) -> str:
    """``name``, or ``name (2)``, ... when it or its result layers are taken."""
    from . import _layers as L

    def taken(n: str) -> bool:
        return any(m in viewer.layers for m in (n, *(L.layer_name(n, r) for r in L.ROLES)))

    out, k = name, 2
    while taken(out):
        out, k = f"{name} ({k})", k + 1
    return out


def show_opened(viewer, opened) -> dict[str, Any]:
    """Add the image of a reopened result (when found) and its layers to ``viewer``; says
    in the status bar what could not be restored. Returns the result layers by role."""
    from napari.utils.notifications import show_info, show_warning

    from . import _layers as L

    res = opened.result
    geo = _geometry(res)
    name = _free_name(viewer, opened.image_name or "analysis")
    if opened.image is not None:
        meta = {**opened.image_meta, "material": res.material}
        if geo["units"][0] == "angstrom":
            meta["pixel_size_A"] = res.pixel_size
        image_layer = viewer.add_image(opened.image, name=name, metadata=meta, colormap="gray", **geo)
    else:
        image_layer = _NoImage(name, geo["scale"], geo["units"])
    layers = L.show_result(viewer, res, image_layer)
    if opened.image is not None:
        from ._analysis import show_in_physical_units

        show_in_physical_units(viewer, image_layer, res.pixel_size)  # result layers in Å, scale bar on
    else:
        viewer.reset_view()  # the first layer added (empty hexagons) set the camera
    if "centres" in layers:
        viewer.layers.selection.active = layers["centres"]
    n_corr = int(res.corrected.sum())
    text = (f"reopened {res.n_cells} cells ({res.material}"
            + (f", {n_corr} corrected" if n_corr else "") + ")")
    if opened.notes:
        (show_warning if opened.image is None else show_info)(text + "; " + "; ".join(opened.notes))
    else:
        show_info(text)
    return layers


def result_layer_data(opened) -> list[LayerData]:
    """Layer data of a reopened result without a viewer: the image (when found) and the
    cell centres (Points, coloured by class, the result in their metadata)."""
    from . import _layers as L

    res = opened.result
    geo = _geometry(res)
    name = opened.image_name or "analysis"
    out: list[LayerData] = []
    if opened.image is not None:
        out.append((opened.image, {"name": name, "metadata": {**opened.image_meta, "material": res.material},
                                   "colormap": "gray", **geo}, "image"))
    meta = {L.RESULT_KEY: res, L.IMAGE_KEY: name, L.ROLE_KEY: "centres"}
    kw: dict[str, Any] = {"name": L.layer_name(name, "centres"), "features": L.cell_features(res),
                          "metadata": meta, **geo}
    if res.n_cells:
        kw["face_color"] = L.class_rgba(res.labels)
        kw["size"] = L.point_sizes(res)
    out.append((L.cell_centres(res), kw, "points"))
    return out
