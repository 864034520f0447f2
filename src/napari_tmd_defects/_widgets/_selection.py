"""Selecting cells of an analysis: click (Shift-click adds), keys 0–5 on the cell layers
to set their class, and the white rim on selected cell markers."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from ..materials import N_CLASSES
from ._layers import (
    EVENTS,
    RESULT_KEY,
    ROLE_KEY,
    cell_centres,
    current_result,
    lattice_px,
    point_sizes,
    result_layers,
    unwrap,
)

_CLICK_VIEWERS: "weakref.WeakSet[Any]" = weakref.WeakSet()


def selected_cells(viewer, result=None) -> np.ndarray:
    """Sorted indices of the selected cells of ``result`` (default: current)."""
    result = result if result is not None else current_result(viewer)
    if result is None:
        return np.zeros(0, int)
    layers = result_layers(viewer, result)
    active = viewer.layers.selection.active
    order = [active] if active in layers.values() else []
    order += [layers[r] for r in ("centres", "cells") if r in layers]
    for lay in order:
        if lay.metadata.get(ROLE_KEY) in ("centres", "cells") and len(lay.selected_data):
            idx = np.array(sorted(lay.selected_data), dtype=int)
            return idx[idx < result.n_cells]
    return np.zeros(0, int)


def select_cells(viewer, result, indices, center: bool = False) -> None:
    """Select cells (on the Points layer, made active) and optionally centre the camera
    on the first one."""
    layers = result_layers(viewer, result)
    idx = [int(i) for i in np.atleast_1d(indices)]
    pts = layers.get("centres")
    if pts is None:
        return
    if "cells" in layers:
        layers["cells"].selected_data = set()
    viewer.layers.selection.active = pts
    pts.selected_data = set(idx)
    pts.refresh()
    if center and idx:
        world = pts.data_to_world(pts.data[idx[0]])
        viewer.camera.center = tuple(world)
    EVENTS.selection.emit(result)


def highlight(layer) -> None:
    """Thick white rims on the selected cell markers, thin black rims elsewhere."""
    n = len(layer.data)
    if not n:
        return
    sel = np.array([i for i in layer.selected_data if i < n], dtype=int)
    border = np.tile([0.0, 0.0, 0.0, 1.0], (n, 1))
    width = np.full(n, 0.1)
    border[sel], width[sel] = (1.0, 1.0, 1.0, 1.0), 0.3
    result = layer.metadata.get(RESULT_KEY)
    with layer.block_update_properties():
        layer.border_color = border
        layer.border_width = width
        if result is not None and result.n_cells == n:
            size = point_sizes(result)
            size[sel] = np.maximum(size[sel], 0.4 * lattice_px(result))
            layer.size = size


def connect_selection(layer) -> None:
    def on_selection(*_):
        if layer.metadata.get(ROLE_KEY, "centres") == "centres":
            highlight(layer)
        EVENTS.selection.emit(layer.metadata.get(RESULT_KEY))

    layer.selected_data.events.items_changed.connect(on_selection)


def bind_class_keys(viewer, layer) -> None:
    """Keys 0–5 on a cell layer set the class of the selected cells."""
    vref = weakref.ref(unwrap(viewer))

    def make(label: int):
        def set_class(lay):
            v = vref()
            if v is None:
                return
            from ._correction import correct_cells

            res = lay.metadata.get(RESULT_KEY)
            idx = selected_cells(v, res)
            if res is not None and len(idx):
                correct_cells(v, res, idx, label)

        set_class.__doc__ = f"Set the class of the selected cells to class {label}"
        return set_class

    for k in range(N_CLASSES):
        layer.bind_key(str(k), make(k), overwrite=True)


def install_click_selection(viewer) -> None:
    """A click (press and release without dragging) on a cell selects it, in pan/zoom
    mode of the image or cell layers; Shift-click adds it to the selection."""
    viewer = unwrap(viewer)
    if viewer in _CLICK_VIEWERS:
        return
    _CLICK_VIEWERS.add(viewer)

    def on_click(v, event):
        start = np.asarray(event.pos, dtype=float)
        yield
        while event.type == "mouse_move":
            yield
        if event.type != "mouse_release" or np.hypot(*(np.asarray(event.pos, float) - start)) > 4:
            return
        active = v.layers.selection.active
        if active is not None and getattr(active, "mode", "pan_zoom") != "pan_zoom":
            return
        res = current_result(v)
        if res is None or not res.n_cells:
            return
        layers = result_layers(v, res)
        pts = layers.get("centres")
        if pts is None:
            return
        row, col = np.asarray(pts.world_to_data(event.position))[-2:]
        cand = res.cells_at(col, row)
        if not len(cand):
            return
        cen = cell_centres(res)[cand]
        k = int(cand[np.argmin(np.hypot(cen[:, 0] - row, cen[:, 1] - col))])
        sel = set(selected_cells(v, res).tolist()) if "Shift" in event.modifiers else set()
        sel ^= {k}
        select_cells(v, res, sorted(sel))

    viewer.mouse_drag_callbacks.append(on_click)
