"""Layers that show an analysis :class:`~napari_tmd_defects.analysis.Result`, shared by
the dock widgets.

For an image layer ``NAME`` the analysis makes (and later updates in place, by name):

* ``NAME [hexagons]``   Shapes: detected hexagon boxes (thin cyan);
* ``NAME [unit cells]`` Shapes: cell outlines (each in its own lattice frame), edge
  colour = class (orange: on a domain boundary);
* ``NAME [cell classes]`` Points at cell centres, face colour = class; ``features`` hold
  ``class``, ``class_id``, ``confidence``, ``flagged``, ``corrected`` (+ ``i``, ``j``,
  ``support``);
* ``NAME [cell labels]`` Labels (optional): each cell box filled with class id + 1;
* ``NAME [vacuum]`` Labels, only when the analysis found vacuum (a hole, the film's
  edge): 1 where cells were left out;
* ``NAME [inset]`` Labels, only when the frame holds an inset of a figure panel (a
  pasted FFT or zoomed view): 1 where nothing was read;
* ``NAME [boundaries]`` Shapes (paths), only when there are several domains: the domain
  boundaries (grain, twin, inversion, translation);
* ``NAME [sites]`` Points (hidden at first): every metal (blue) and chalcogen (red) site,
  filled where a column was found, open where the site was placed from its neighbours;
  ``features`` hold each site's state read from its column (``state``, ``z_eff``,
  ``probability``);
* ``NAME [site states]`` Points at every site whose state is not the host's: vacant,
  another metal (alloy partner, dopant, an unlisted ``heavier`` / ``lighter`` one), a
  chalcogen column of one atom or other species, ``unresolved`` (grey); shown when there
  are any.

All layer data are in px of the image (rows, cols) and carry the image's ``scale`` and
``translate``, so they line up with it. Each of these layers holds the same ``Result``
object in ``metadata["tmd_defects_result"]`` and the image layer's name in
``metadata["tmd_defects_image"]``; the other widgets find the result there
(:func:`current_result`) and announce edits through :data:`EVENTS`. Selecting cells
(click, keys 0–5) is in :mod:`._selection`; deleting, adding and moving cells on the cell
layers, and undo, in :mod:`._correction` (:func:`update_cells` brings the layers in line
after such an edit).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
from psygnal import Signal

from ..materials import CLASS_COLORS, N_CLASSES

RESULT_KEY = "tmd_defects_result"
IMAGE_KEY = "tmd_defects_image"
ROLE_KEY = "tmd_defects_role"
ROLES = ("labels", "hexagons", "cells", "centres")
_SUFFIX = {"labels": "cell labels", "hexagons": "hexagons", "cells": "unit cells", "centres": "cell classes"}
#: Colour of cells without a class (RGBA).
UNCLASSIFIED_RGBA = (1.0, 1.0, 1.0, 1.0)
#: Colour of cells on a domain boundary (class ``boundary``).
BOUNDARY_RGBA = (1.0, 0.55, 0.0, 1.0)
#: Colour of the domain boundary lines.
BOUNDARY_LINE_RGBA = (0.0, 1.0, 0.47, 1.0)
HEXAGON_RGBA = (0.0, 0.85, 0.95, 1.0)
#: Colours of the X (chalcogen) and M (metal) sites.
SITE_RGBA = ((1.0, 0.3, 0.3, 1.0), (0.3, 0.6, 1.0, 1.0))


class _Events:
    """``changed(result)``: classes or cells of a result changed (correction, re-cast,
    new analysis). ``selection(result)``: the selected cells changed. ``message(text)``:
    a line for the user about an edit (e.g. why a cell could not be added)."""

    changed = Signal(object)
    selection = Signal(object)
    message = Signal(str)


#: Process-wide notifications; widgets connect and re-read :func:`current_result`.
EVENTS = _Events()


_SYNCING = [0]


@contextmanager
def syncing():
    """Mark layer updates made here (not by the user): the edit handlers ignore them."""
    _SYNCING[0] += 1
    try:
        yield
    finally:
        _SYNCING[0] -= 1


def is_syncing() -> bool:
    """True while the layers are updated from a result (see :func:`syncing`)."""
    return _SYNCING[0] > 0


# --------------------------------------------------------------------------- helpers
def unwrap(obj):
    """The object behind napari's plugin proxy (napari wraps objects of modules whose
    name starts with "napari", ours included, when reached through a plugin's viewer)."""
    return getattr(obj, "__wrapped__", obj)


def text_label(value: str = ""):
    """A magicgui ``Label`` that wraps its text and spans the dock's width."""
    from magicgui.widgets import Label
    from qtpy.QtWidgets import QSizePolicy

    lab = Label(value=value)
    lab.native.setWordWrap(True)
    lab.native.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
    return lab


def connect_events(qt_widget, callback, *emitters, selection: bool = True) -> None:
    """Connect ``callback`` to :data:`EVENTS` (``changed`` and, if ``selection``, also
    ``selection``) and to napari ``emitters`` until ``qt_widget`` is destroyed."""
    signals = [EVENTS.changed, EVENTS.selection] if selection else [EVENTS.changed]
    for sig in (*signals, *emitters):
        sig.connect(callback)

    def _disconnect(*_):
        for sig in signals:
            sig.disconnect(callback, missing_ok=True)
        for em in emitters:
            em.disconnect(callback)

    qt_widget.destroyed.connect(_disconnect)


def layer_name(image_name: str, role: str) -> str:
    """Name of the ``role`` layer of the image layer called ``image_name``."""
    return f"{image_name} [{_SUFFIX[role]}]"


def class_rgba(labels: np.ndarray) -> np.ndarray:
    """(N, 4) RGBA colours of class ids (paper colours; orange for boundary cells, white for
    unclassified ones)."""
    lab = np.asarray(labels, dtype=int).reshape(-1)
    table = np.array([(*c, 1.0) for c in CLASS_COLORS] + [UNCLASSIFIED_RGBA, BOUNDARY_RGBA], dtype=float)
    return table[np.where((lab >= 0) & (lab < N_CLASSES), lab, np.where(lab == -2, N_CLASSES + 1, N_CLASSES))]


def cell_features(result) -> pd.DataFrame:
    """Per-cell table for the Points layer ``features``."""
    names = result.label_names()
    return pd.DataFrame(
        {
            "class": pd.Categorical(names, categories=[*result.class_names, "unclassified", "boundary"]),
            "class_id": np.asarray(result.labels, dtype=int),
            "confidence": np.asarray(result.confidence, dtype=float),
            "flagged": np.asarray(result.flagged, dtype=bool),
            "corrected": np.asarray(result.corrected, dtype=bool),
            "i": np.asarray(result.ij[:, 0], dtype=int),
            "j": np.asarray(result.ij[:, 1], dtype=int),
            "support": np.asarray(result.support, dtype=int),
            "domain": np.asarray(result.domain, dtype=int),
            "placed": np.asarray(result.placed, dtype=int),
        }
    )


def _rectangles(boxes: np.ndarray) -> list[np.ndarray]:
    """Boxes ``(x_min, y_min, x_max, y_max)`` -> napari rectangles (4 corners, (row, col))."""
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    return [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]) for x0, y0, x1, y1 in b]


def _polygons(corners: np.ndarray) -> list[np.ndarray]:
    """Corners ``(N, K, 2)`` (x, y) -> napari polygons ((row, col) vertices)."""
    return [np.asarray(c, float)[:, ::-1].copy() for c in np.asarray(corners, float).reshape(len(corners), -1, 2)]


def cell_centres(result) -> np.ndarray:
    """(N, 2) cell-box centres as (row, col) px."""
    b = np.asarray(result.boxes, dtype=float).reshape(-1, 4)
    return np.stack([(b[:, 1] + b[:, 3]) / 2.0, (b[:, 0] + b[:, 2]) / 2.0], axis=1)


def label_image(result) -> np.ndarray:
    """(rows, cols) uint8 image: class id + 1 inside each cell outline (0 elsewhere, 7 =
    unclassified, 8 = boundary)."""
    from skimage.draw import polygon

    out = np.zeros(result.image_shape, dtype=np.uint8)
    for q, lab in zip(result.cell_outlines(), result.labels):
        rr, cc = polygon(q[:, 1], q[:, 0], shape=out.shape)
        out[rr, cc] = lab + 1 if 0 <= lab < N_CLASSES else (N_CLASSES + 2 if lab == -2 else N_CLASSES + 1)
    return out


def _labels_colormap():
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[Any, Any] = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    for k, c in enumerate(CLASS_COLORS):
        colors[k + 1] = (*c, 1.0)
    colors[N_CLASSES + 1] = UNCLASSIFIED_RGBA
    colors[N_CLASSES + 2] = BOUNDARY_RGBA
    return DirectLabelColormap(color_dict=colors)


def _geometry(image_layer) -> dict[str, Any]:
    return {
        "scale": tuple(image_layer.scale[-2:]),
        "translate": tuple(image_layer.translate[-2:]),
        "units": tuple(image_layer.units[-2:]),
    }


def point_sizes(result) -> np.ndarray:
    """Marker diameters (px): small for Perfect cells, larger for defects."""
    a_px = lattice_px(result)
    return np.where(np.asarray(result.labels) == 0, 0.12 * a_px, 0.24 * a_px).clip(2.0)


def _point_colors(result) -> np.ndarray:
    c = class_rgba(result.labels)
    c[np.asarray(result.labels) == 0, 3] = 0.6
    return c


def _edge_widths(result) -> list[float]:
    a_px = lattice_px(result)
    return np.where(np.asarray(result.labels) == 0, 0.025 * a_px, 0.055 * a_px).clip(0.5).tolist()


def lattice_px(result) -> float:
    from ..materials import get_material

    return get_material(result.material).a / result.pixel_size


# --------------------------------------------------------------------------- building
def prebuild_shapes(result) -> dict[str, Any]:
    """The ``hexagons`` and ``cells`` Shapes layers of ``result``, built without a viewer.

    napari meshes every shape in Python when a Shapes layer is made (~0.3 ms a shape:
    seconds for a 2048² frame); building them in the analysis' worker thread and handing
    them to :func:`show_result` keeps the viewer responsive on a first analysis.
    """
    from napari.layers import Shapes

    result = unwrap(result)
    out: dict[str, Any] = {"result": result}
    for role in ("hexagons", "cells"):
        spec = _shapes_spec(result, role)
        out[role] = Shapes(spec.pop("data") or None, **spec)
    return out


def _shapes_spec(result, role: str) -> dict[str, Any]:
    """The data and look of the ``hexagons`` or ``cells`` Shapes layer of ``result``
    (keyword arguments of ``napari.layers.Shapes``)."""
    if role == "hexagons":
        a_px = lattice_px(result) if result.pixel_size == result.pixel_size else 30.0
        data = _rectangles(result.hexagon_boxes)
        return dict(data=data, shape_type="rectangle",
                    edge_color=np.tile(HEXAGON_RGBA, (len(data), 1)) if data else "cyan",
                    face_color="transparent", edge_width=max(0.5, 0.02 * a_px), opacity=0.6, visible=False)
    data = _polygons(result.cell_outlines()) if result.n_cells else []
    return dict(data=data, shape_type="polygon", edge_color=class_rgba(result.labels) if data else "white",
                face_color="transparent", edge_width=_edge_widths(result) if data else 1.0)


def show_result(viewer, result, image_layer, labels_layer: bool = False,
                prebuilt: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create or update (in place, by name) the layers of ``result`` over ``image_layer``.

    ``prebuilt`` (:func:`prebuild_shapes` of the same result) supplies the Shapes layers
    that do not exist yet. Returns the layers by role (``hexagons``, ``cells``,
    ``centres`` and, when asked or already present, ``labels``).
    """
    with syncing():
        return _show_result(viewer, result, image_layer, labels_layer, prebuilt)


def _new_shapes(viewer, prebuilt, role: str, name: str, geo: dict[str, Any], **kwargs):
    """A prebuilt Shapes layer added under ``name``, else one made here."""
    if prebuilt is not None and role in prebuilt:
        lay = prebuilt.pop(role)
        lay.name = name
        lay.units, lay.scale, lay.translate = geo["units"], geo["scale"], geo["translate"]
        viewer.add_layer(lay)
        return lay
    data = kwargs.pop("data") or None
    return viewer.add_shapes(data, name=name, **kwargs, **geo)


def _show_result(viewer, result, image_layer, labels_layer: bool, prebuilt=None) -> dict[str, Any]:
    from . import _correction as _cor
    from . import _selection as _sel

    result = unwrap(result)
    if prebuilt is not None and prebuilt.get("result") is not result:
        prebuilt = None  # built for another result
    geo = _geometry(image_layer)
    meta = {RESULT_KEY: result, IMAGE_KEY: image_layer.name}
    a_px = lattice_px(result) if result.pixel_size == result.pixel_size else 30.0
    out: dict[str, Any] = {}
    names = {r: layer_name(image_layer.name, r) for r in ROLES}
    layers = viewer.layers
    for role in ROLES:  # handlers fired by the updates below must already see the new result
        if names[role] in layers:
            layers[names[role]].metadata.update(meta)

    if labels_layer or names["labels"] in layers:
        data = label_image(result)
        if names["labels"] in layers:
            lay = layers[names["labels"]]
            lay.data = data
        else:
            lay = viewer.add_labels(data, name=names["labels"], opacity=0.35, colormap=_labels_colormap(), **geo)
        out["labels"] = lay

    # regions not analysed: vacuum (hole, edge) and an inset pasted into a figure panel
    for suffix, mask in (("vacuum", result.vacuum_mask), ("inset", result.inset_mask)):
        name = f"{image_layer.name} [{suffix}]"
        if mask is not None or name in layers:
            data = (mask if mask is not None else np.zeros(result.image_shape, bool)).astype(np.uint8)
            if name in layers:
                layers[name].data = data
            else:
                viewer.add_labels(data, name=name, opacity=0.25, **geo)

    _show_structure(viewer, result, image_layer.name, geo, a_px)

    for role in ("hexagons", "cells"):
        spec = _shapes_spec(result, role)
        if names[role] in layers:
            lay = layers[names[role]]
            _set_shapes(lay, spec["data"], spec["edge_color"], spec["edge_width"], spec["shape_type"])
        else:
            lay = _new_shapes(viewer, prebuilt, role, names[role], geo, **spec)
            if role == "cells":
                _sel.connect_selection(lay)
                _cor.connect_edits(viewer, lay)
        out[role] = lay
    lay = out["cells"]
    lay.features = cell_features(result)

    pts = cell_centres(result)
    if names["centres"] in layers:
        lay = layers[names["centres"]]
        lay.selected_data = set()
        lay.data = pts
    else:
        lay = viewer.add_points(
            pts, name=names["centres"], border_width=0.1, border_width_is_relative=True,
            border_color="black", **geo,
        )
        _sel.connect_selection(lay)
        _cor.connect_edits(viewer, lay)
    lay.features = cell_features(result)
    if len(pts):
        lay.size = point_sizes(result)
        lay.face_color = _point_colors(result)
    out["centres"] = lay

    for role, lay in out.items():
        lay.metadata.update(meta)
        lay.metadata[ROLE_KEY] = role
        if role in ("cells", "centres"):
            _sel.bind_class_keys(viewer, lay)
        lay.scale, lay.translate = geo["scale"], geo["translate"]
    _sel.install_click_selection(viewer)
    _cor.install_undo(viewer, list(out.values()))
    EVENTS.changed.emit(result)
    return out


def _show_structure(viewer, result, image_name: str, geo: dict[str, Any], a_px: float) -> None:
    """The ``[boundaries]`` (when there are several domains) and ``[sites]`` layers, updated by name."""
    layers = viewer.layers
    model = result.sites
    b_name, s_name = f"{image_name} [boundaries]", f"{image_name} [sites]"
    lines = [np.asarray(ln, float)[:, ::-1].copy() for ln in (model.boundary_lines if model is not None else [])
             if len(ln) >= 2]
    width = max(1.0, 0.06 * a_px)
    if lines or b_name in layers:
        if b_name in layers:
            _set_shapes(layers[b_name], lines, np.tile(BOUNDARY_LINE_RGBA, (len(lines), 1)), width, "path")
        else:
            viewer.add_shapes(lines, shape_type="path", name=b_name, edge_color=BOUNDARY_LINE_RGBA,
                              edge_width=width, **geo)
    if model is None:
        return
    s = model.sites
    pts = s.xy[:, ::-1].copy() if len(s) else np.zeros((0, 2))
    face = np.array([SITE_RGBA[int(r)] if r in (0, 1) else UNCLASSIFIED_RGBA for r in s.role]).reshape(-1, 4)
    border = face.copy()
    face[s.placed, 3] = 0.0  # placed sites: open circles
    feats = pd.DataFrame({"role": np.where(s.role == 0, "X", "M"), "domain": s.domain, "placed": s.placed,
                          "boundary": s.boundary, "height": s.height})
    st = result.site_states
    if st is not None and len(st.state) == len(s):
        feats["state"] = st.state.astype(str)
        feats["z_eff"] = st.z_eff
        feats["probability"] = st.probability
    _set_points(viewer, s_name, pts, feats, face, border, size=max(2.0, 0.15 * a_px), border_width=0.25,
                visible=False, **geo)
    _show_states(viewer, result, image_name, geo, a_px)


def _set_points(viewer, name: str, pts: np.ndarray, feats: pd.DataFrame, face: np.ndarray, border: np.ndarray,
                **add_kw) -> None:
    """Update the Points layer ``name`` in place (data, features, colours), or add it with
    ``add_kw`` (size, border width, visibility, geometry) when there is none."""
    if name in viewer.layers:
        lay = viewer.layers[name]
        lay.data = pts
        lay.features = feats
    else:
        lay = viewer.add_points(pts, name=name, border_width_is_relative=True, features=feats, **add_kw)
    if len(pts):
        lay.face_color = face
        lay.border_color = border


def _show_states(viewer, result, image_name: str, geo: dict[str, Any], a_px: float) -> None:
    """The ``[site states]`` layer: sites whose state is not the host's, coloured by state."""
    layers = viewer.layers
    name = f"{image_name} [site states]"
    st, model = result.site_states, result.sites
    if st is None or model is None or len(st.state) != len(model.sites):
        return
    s = model.sites
    show = st.off_host(s.role) & ~s.boundary & result.sites_in_cells()
    if not show.any() and name not in layers:
        return
    states = st.state[show].astype(str)
    pts = s.xy[show][:, ::-1].copy() if show.any() else np.zeros((0, 2))
    feats = pd.DataFrame({"role": np.where(s.role[show] == 0, "X", "M"), "state": states,
                          "z_eff": st.z_eff[show], "probability": st.probability[show]})
    from ..visualization import state_colors

    col = state_colors(states)
    face = col.copy()
    face[:, 3] = 0.0  # open circles: the column stays visible
    _set_points(viewer, name, pts, feats, face, col, size=max(3.0, 0.3 * a_px), border_width=0.15, **geo)


def _set_shapes(layer, shapes: list[np.ndarray], colors: np.ndarray, widths, shape_type: str = "polygon") -> None:
    """Replace all shapes of a Shapes layer by polygons (or rectangles, paths) with given
    edge colours/widths."""
    layer.selected_data = set()
    layer.data = []
    if shapes:
        add = {"polygon": layer.add_polygons, "rectangle": layer.add_rectangles, "path": layer.add_paths}[shape_type]
        if shape_type == "path":
            add(shapes, edge_width=widths, edge_color=colors)
        else:
            add(shapes, edge_width=widths, edge_color=colors, face_color="transparent")


def refresh(viewer, result) -> None:
    """Re-colour the layers of ``result`` and refresh their features after edits to its
    classes (no change of cells); announces the change."""
    from . import _selection as _sel

    result = unwrap(result)
    layers = result_layers(viewer, result)
    feats = cell_features(result)
    if "cells" in layers and result.n_cells:
        lay = layers["cells"]
        lay.edge_color = class_rgba(result.labels)
        lay.edge_width = _edge_widths(result)
        lay.features = feats
    if "centres" in layers and result.n_cells:
        lay = layers["centres"]
        lay.features = feats
        lay.size = point_sizes(result)
        lay.face_color = _point_colors(result)
        _sel.highlight(lay)
    if "labels" in layers:
        layers["labels"].data = label_image(result)
    EVENTS.changed.emit(result)


def update_cells(viewer, result, removed=None) -> None:
    """Bring the cell layers of ``result`` in line with its cells after cells were removed
    (``removed``: their former indices), added or moved; the layer the user edited may
    already hold the change. Then re-colours them and announces the change."""
    result = unwrap(result)
    layers = result_layers(viewer, result)
    n = result.n_cells
    centres = cell_centres(result)
    gone = sorted(int(i) for i in (removed if removed is not None else []))
    with syncing():
        pts = layers.get("centres")
        if pts is not None:
            if gone and len(pts.data) == n + len(gone):
                pts.remove(gone)
            if len(pts.data) != n or (n and not np.allclose(pts.data[:, -2:], centres, atol=1e-3)):
                keep = {i for i in pts.selected_data if i < n}
                pts.selected_data = set()
                pts.data = centres
                pts.selected_data = keep
            pts.features = cell_features(result)
        shp = layers.get("cells")
        if shp is not None:
            if gone and shp.nshapes == n + len(gone):
                shp.remove(gone)
            moved = shp.nshapes != n or (n and not np.allclose(
                np.array([np.asarray(d)[:, -2:].mean(axis=0) for d in shp.data]), centres, atol=1e-3))
            if moved:
                _set_shapes(shp, _polygons(result.cell_outlines()) if n else [], class_rgba(result.labels),
                            _edge_widths(result))
            shp.features = cell_features(result)
    refresh(viewer, result)


# --------------------------------------------------------------------------- lookup
def result_layers(viewer, result) -> dict[str, Any]:
    """Layers (by role) that hold ``result``."""
    result = unwrap(result)
    return {
        lay.metadata[ROLE_KEY]: lay
        for lay in viewer.layers
        if lay.metadata.get(RESULT_KEY) is result and ROLE_KEY in lay.metadata
    }


def current_result(viewer):
    """The result of the active layer if it is one of ours, else of the topmost of ours
    (None when there is none)."""
    active = viewer.layers.selection.active
    if active is not None and active.metadata.get(RESULT_KEY) is not None:
        return unwrap(active.metadata[RESULT_KEY])
    for lay in reversed(viewer.layers):
        if lay.metadata.get(RESULT_KEY) is not None:
            return unwrap(lay.metadata[RESULT_KEY])
    return None


def image_layer_of(viewer, result):
    """The image layer ``result`` was computed from (None if it was removed)."""
    for lay in result_layers(viewer, result).values():
        name = lay.metadata.get(IMAGE_KEY)
        if name in viewer.layers:
            return viewer.layers[name]
    return None


def image_data(layer) -> np.ndarray:
    """Data of an image layer as a numpy array (2-D, or RGB which the analysis converts):
    the RGB original the reader kept (``metadata["rgb"]``: coloured marks on a grey frame,
    which the analysis leaves out) where it matches the layer."""
    data = np.asarray(layer.data)
    rgb = layer.metadata.get("rgb") if isinstance(getattr(layer, "metadata", None), dict) else None
    if rgb is not None and np.shape(rgb)[:2] == data.shape[:2] and data.ndim == 2:
        return np.asarray(rgb)
    return data
