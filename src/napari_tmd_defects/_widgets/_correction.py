"""**Correction** dock widget and the edits behind it: change the class of selected
cells, delete, add and move cells on the layers, undo and redo every edit, step through
low-confidence cells, and save corrections (with crops) to a training database.

Cells are selected by clicking them (Shift-click adds); keys 0–5 on the cell layers or
the class drop-down set the class (setting a corrected cell back to the class the analysis
gave it undoes the correction). On the ``[cell classes]`` Points layer napari's own tools
edit the cells: Delete/Backspace removes the selected cells, a point added in add mode
makes a cell there (placed on the nearest column of the lattice and classified by the
classifier of the analysis), a point dragged elsewhere moves its cell (re-cut and
re-classified); deleting or dragging an outline on the ``[unit cells]`` Shapes layer does
the same. Ctrl+Z / Ctrl+Shift+Z (Cmd on macOS) undo and redo all of these, database rows
included (:class:`History`, one per viewer).

Saving to the database (see :mod:`napari_tmd_defects.corrections`) is off until switched
on (the check box, or :func:`set_database` with ``save=True``).
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, PushButton

from ..materials import get_material
from . import _layers as L
from . import _selection as S
from ._statistics import scroll_area

#: Environment variable that overrides the default database folder.
DATABASE_ENV = "TMD_DEFECTS_CORRECTIONS"
#: Corrections go to the database only when asked (opt-in).
SAVE_BY_DEFAULT = False
_SETTINGS: dict = {"database": None, "save": SAVE_BY_DEFAULT}
#: Rows this session added to the database (net of undone and removed ones).
_SESSION: dict = {"rows": 0}
#: Most edits kept for undo.
MAX_UNDO = 500


def default_database_dir() -> Path:
    """``$TMD_DEFECTS_CORRECTIONS`` or ``<user data dir>/napari-tmd-defects/corrections``."""
    env = os.environ.get(DATABASE_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-tmd-defects")) / "corrections"


def database_dir() -> Path:
    """Folder that corrections are saved to."""
    return Path(_SETTINGS["database"]) if _SETTINGS["database"] else default_database_dir()


def set_database(path: str | Path | None = None, save: bool | None = None) -> None:
    """Choose the corrections folder (None: the default) and whether to save at all."""
    _SETTINGS["database"] = Path(path) if path else None
    if save is not None:
        _SETTINGS["save"] = bool(save)


def rows_saved() -> int:
    """Rows the edits of this session added to the database (undone ones taken off)."""
    return int(_SESSION["rows"])


def image_source(layer) -> str:
    """Identifier of an image layer for the database: its file path, else its name."""
    src = layer.metadata.get("source") or getattr(getattr(layer, "source", None), "path", None)
    return str(src) if src else str(layer.name)


def training_image(image: np.ndarray, result) -> tuple[np.ndarray, bool]:
    """The image as the classifier sees it (``classification.normalize_image``) and True,
    or the image itself and False when the classifier module is not installed."""
    try:
        from ..classification import normalize_image
    except ImportError:
        return image, False
    return np.asarray(normalize_image(image, result.pixel_size, result.material), np.float32), True


def _say(viewer, msg: str) -> str:
    """Show ``msg`` in the viewer's status bar and the Correction dock."""
    try:
        viewer.status = msg
    except (AttributeError, ValueError):
        pass
    L.EVENTS.message.emit(msg)
    return msg


# --------------------------------------------------------------------------- undo
@dataclass
class Edit:
    """One undoable edit of ``result``: ``undo()`` and ``redo()`` change the result, the
    database and the layers; ``text`` says what it was."""

    result: Any
    text: str
    undo: Callable[[], Any]
    redo: Callable[[], Any]


@dataclass
class History:
    """The undo and redo stacks of a viewer (every edit of its results, in order)."""

    done: list[Edit] = field(default_factory=list)
    undone: list[Edit] = field(default_factory=list)

    def push(self, edit: Edit) -> None:
        self.done.append(edit)
        del self.done[:-MAX_UNDO]
        self.undone.clear()

    def clear(self) -> None:
        self.done.clear()
        self.undone.clear()


_HISTORIES: "weakref.WeakKeyDictionary[Any, History]" = weakref.WeakKeyDictionary()
_UNDO_VIEWERS: "weakref.WeakSet[Any]" = weakref.WeakSet()


def history(viewer) -> History:
    """The undo history of ``viewer``."""
    viewer = L.unwrap(viewer)
    if viewer not in _HISTORIES:
        _HISTORIES[viewer] = History()
    return _HISTORIES[viewer]


def _step(viewer, back: bool) -> str:
    h = history(viewer)
    stack, other = (h.done, h.undone) if back else (h.undone, h.done)
    word = "undo" if back else "redo"
    if not stack:
        return _say(viewer, f"nothing to {word}")
    edit = stack[-1]
    if not L.result_layers(viewer, edit.result):
        h.clear()
        return _say(viewer, f"nothing to {word}: the analysis those edits belong to is no longer shown")
    try:
        (edit.undo if back else edit.redo)()
    except (OSError, ValueError, IndexError) as exc:
        h.clear()
        return _say(viewer, f"could not {word} {edit.text} ({exc}); undo history cleared")
    other.append(stack.pop())
    return _say(viewer, f"{'undone' if back else 'redone'}: {edit.text}")


def undo(viewer) -> str:
    """Undo the last edit of the viewer's results (Ctrl+Z); returns a message."""
    return _step(L.unwrap(viewer), back=True)


def redo(viewer) -> str:
    """Redo the last undone edit (Ctrl+Shift+Z); returns a message."""
    return _step(L.unwrap(viewer), back=False)


def install_undo(viewer, layers) -> None:
    """Ctrl+Z / Ctrl+Shift+Z on the viewer (left alone if something else has them) and on
    our ``layers`` (over a Labels layer's own paint undo), and no pasting of cells."""
    from app_model.types import KeyCode, KeyMod

    viewer = L.unwrap(viewer)
    z, shift_z = KeyMod.CtrlCmd | KeyCode.KeyZ, KeyMod.CtrlCmd | KeyMod.Shift | KeyCode.KeyZ

    def undo_key(_provider):
        """Undo the last edit of the cells"""
        undo(viewer_ref())

    def redo_key(_provider):
        """Redo the last undone edit of the cells"""
        redo(viewer_ref())

    viewer_ref = weakref.ref(viewer)
    if viewer not in _UNDO_VIEWERS:
        _UNDO_VIEWERS.add(viewer)
        for key, fn in ((z, undo_key), (shift_z, redo_key)):
            try:
                viewer.bind_key(key, fn)
            except ValueError:  # already bound by someone else: keep theirs
                pass
    for lay in layers:
        lay.bind_key(z, undo_key, overwrite=True)
        lay.bind_key(shift_z, redo_key, overwrite=True)
        if lay.metadata.get(L.ROLE_KEY) in ("cells", "centres"):
            lay.bind_key(KeyMod.CtrlCmd | KeyCode.KeyV, _no_paste, overwrite=True)


def _no_paste(layer) -> None:
    """Pasting is off on the cell layers (add cells in add mode)"""
    L.EVENTS.message.emit("pasting cells is not supported: add a cell as a point in add mode")


# --------------------------------------------------------------------------- classes
def _class_state(result, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: getattr(result, k)[idx].copy() for k in ("labels", "confidence", "flagged", "corrected")}


def _set_class_state(result, idx: np.ndarray, state: dict[str, np.ndarray]) -> None:
    for k, v in state.items():
        getattr(result, k)[idx] = v


def _write_db(viewer, result, idx, label: int, before: dict[str, np.ndarray], back: np.ndarray
              ) -> tuple[list[dict], list, Path | None, int, str]:
    """Database side of a class edit: rows for the corrected cells, the rows of cells set back
    to the analysis' class removed. Returns (rows written, undo record, folder, net rows, note)."""
    layer = L.image_layer_of(viewer, result)
    if layer is None:
        return [], [], None, 0, "; not saved: the image layer is gone"
    from ..analysis import prepare_image
    from ..corrections import CorrectionDatabase

    db = CorrectionDatabase(database_dir())
    src = image_source(layer)
    undo_rec: list = []
    rows: list[dict] = []
    write = ~np.isin(idx, back)
    try:
        note = f"; saved to {db.path}"
        if write.any():
            w = idx[write]
            img, normalized = training_image(prepare_image(L.image_data(layer))[0], result)
            lab = before["labels"][write]
            rows = db.add_many(
                img, result.boxes[w], np.full(len(w), int(label)), material=result.material,
                pixel_size=result.pixel_size, source=src,
                confidence_before=np.where(lab >= 0, before["confidence"][write], np.nan), label_before=lab,
                normalized=normalized, frames=result.frames[w], undo=undo_rec,
            )
            note += "" if normalized else " (raw crops: classifier not installed)"
        removed = db.remove_matching(src, result.boxes[back], undo=undo_rec) if len(back) else []
        if removed:
            note += f"; {len(removed)} row(s) of cells set back removed"
    except (OSError, ValueError) as exc:
        db.revert(undo_rec)
        return [], [], None, 0, f"; NOT saved to the database ({exc})"
    net = sum(1 for e in undo_rec if e[1] is None) - len(removed)
    _SESSION["rows"] += net
    return rows, undo_rec, db.path, net, note


def correct_cells(viewer, result, indices, label: int) -> tuple[list[dict], str]:
    """Set the class of cells ``indices`` of ``result`` to ``label``, save them to the
    database (when saving is on), update the layers and record the edit for undo.

    A corrected cell set back to its analysis class is no longer corrected and its
    database row is removed. Returns the database rows written and a short message.
    """
    viewer = L.unwrap(viewer)
    idx = np.unique(np.atleast_1d(np.asarray(indices, dtype=int)))
    if not len(idx):
        return [], "no cell selected"
    label = int(label)
    before = _class_state(result, idx)
    back = result.returns_to_machine(idx, label)
    result.set_label(idx, label)
    after = _class_state(result, idx)
    name = result.class_names[label]
    msg = f"{len(idx)} cell(s) set to {name}" + (f" ({len(back)} back to the analysis' class)" if len(back) else "")
    db: dict[str, Any] = {"undo": [], "path": None, "net": 0}
    rows: list[dict] = []
    saving = bool(_SETTINGS["save"])
    if saving:
        rows, db["undo"], db["path"], db["net"], note = _write_db(viewer, result, idx, label, before, back)
        msg += note
    L.refresh(viewer, result)

    def undo_fn():
        _set_class_state(result, idx, before)
        if db["path"] is not None and db["undo"]:
            from ..corrections import CorrectionDatabase

            CorrectionDatabase(db["path"]).revert(db["undo"])
            _SESSION["rows"] -= db["net"]
            db["undo"], db["net"] = [], 0
        L.refresh(viewer, result)

    def redo_fn():
        _set_class_state(result, idx, after)
        if saving and db["path"] is not None:
            _, db["undo"], db["path"], db["net"], _ = _write_db(viewer, result, idx, label, before, back)
        L.refresh(viewer, result)

    history(viewer).push(Edit(result, f"{len(idx)} cell(s) set to {name}", undo_fn, redo_fn))
    return rows, _say(viewer, msg)


# --------------------------------------------------------------------------- cells
def _classifier_of(viewer, result):
    """The classifier of the analysis dock that made ``result``, else the shipped one."""
    from ..pipeline import _resolve_model

    clf = None
    try:
        docks = list(viewer.window.dock_widgets.values())
    except (AttributeError, RuntimeError):
        docks = []
    for w in docks:
        w = L.unwrap(w)
        if getattr(w, "result", None) is result and hasattr(w, "classifier"):
            clf = w.classifier
            break
    if clf is not None and not isinstance(clf, (str, Path)):
        return clf
    key = str(clf)
    if key not in _LOADED:
        _LOADED[key] = _resolve_model(clf, "classifier", "auto")
    return _LOADED[key]


_LOADED: dict[str, Any] = {}


def _a_px(result) -> float:
    model = result.sites
    return float(model.a_px) if model is not None and model.a_px > 0 else L.lattice_px(result)


def classify_frames(viewer, result, frames: np.ndarray) -> tuple[np.ndarray | None, str]:
    """Class probabilities ``(N, 6)`` of cells with ``frames`` (N, 2, 3) from the classifier
    of the analysis, cut like the pipeline cuts them (:func:`~..pipeline.classify_cells`,
    other materials contrast-matched); ``(None, why)`` when there is none to use."""
    from ..analysis import MODEL_MATERIAL, prepare_image
    from ..pipeline import Frame, _model_image, classifier_input, classify_cells

    layer = L.image_layer_of(viewer, result)
    if layer is None:
        return None, "not classified: the image layer is gone"
    try:
        clf = _classifier_of(viewer, result)
    except (ImportError, OSError, ValueError, RuntimeError) as exc:
        return None, f"not classified: no classifier ({exc})"
    mat = get_material(result.material)
    img = prepare_image(L.image_data(layer))[0]
    a_px = _a_px(result)
    model_img, model_material = img, mat.name
    if mat.name != MODEL_MATERIAL and result.sites is not None:
        from ..contrast import model_positions

        fr = Frame(image=img, material=result.material, pixel_size=result.pixel_size,
                   pixel_size_source=result.pixel_size_source, a_px=a_px, model=result.sites,
                   noise=dict(result.noise))
        model_img, model_material = _model_image(fr, *model_positions(result.sites))
    cls_img, cls_material = classifier_input(clf, img, mat.name, model_img, model_material)
    if cls_img is None:
        return None, f"not classified: the classifier was trained for {cls_material}"
    ns = SimpleNamespace(model=SimpleNamespace(cells=SimpleNamespace(frame=np.asarray(frames, float))), a_px=a_px)
    try:
        return classify_cells(ns, clf, cls_img, cls_material, result.alpha, result.beta), ""
    except (RuntimeError, ValueError) as exc:
        return None, f"not classified ({exc})"


def _nearest(xy: np.ndarray, mask: np.ndarray, p: np.ndarray, tol: float) -> int:
    cand = np.flatnonzero(mask)
    if not len(cand):
        return -1
    d = np.hypot(*(xy[cand] - p).T)
    k = int(np.argmin(d))
    return int(cand[k]) if d[k] <= tol else -1


def place_cell(result, row: float, col: float, like: int | None = None, exclude=()) -> dict[str, Any]:
    """Where a cell centred near (``row``, ``col``) px goes: on the nearest X site of the site
    model within 0.3 a and its partner M site, framed as the pipeline frames its cells
    (:func:`~..lattice.cells.build_cells`); else where the point is, with the lattice of
    cell ``like`` (default: the nearest cell). Returns the keyword arguments of
    :meth:`~..analysis.Result.new_cell`.

    Raises
    ------
    ValueError
        When there is no cell to take the lattice from, another cell (not in ``exclude``)
        is there already, or the cell would reach beyond the image.
    """
    from ..lattice.cells import cell_frames, frame_boxes
    from ..sites import CANONICAL_PARTNER, ROLE_M, ROLE_X, canonical_cell_box

    n = result.n_cells
    if not n:
        raise ValueError("no cells to take the lattice from: run the analysis first")
    a = _a_px(result)
    c = np.array([col, row], dtype=float)
    if not np.all(np.isfinite(c)):
        raise ValueError(f"not a position: ({row}, {col})")
    ref = like if like is not None else int(np.argmin(np.hypot(*(L.cell_centres(result)[:, ::-1] - c).T)))
    lin = result.frames[ref, :, :2]
    box = canonical_cell_box(result.alpha, result.beta)
    origin = c - lin @ np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])
    kw: dict[str, Any] = {"domain": int(result.domain[ref]), "x_site": -1, "m_site": -1, "ij": (-1, -1)}
    model = result.sites
    if model is not None and len(model.sites):
        s = model.sites
        x = _nearest(s.xy, s.role == ROLE_X, origin, 0.3 * a)
        if x >= 0:
            dom = int(s.domain[x])
            origin = s.fitted[x].astype(float)
            kw.update(x_site=x, domain=dom, ij=tuple(int(v) for v in s.nm[x]))
            d = model.domains[dom] if 0 <= dom < len(model.domains) else None
            m = -1
            if d is not None:  # the partner site, as the pipeline pairs them
                hit = np.flatnonzero((s.domain == dom) & np.all(s.nm == s.nm[x] + np.asarray(d.partner), axis=1))
                m = int(hit[0]) if len(hit) else -1
            if m < 0:
                m = _nearest(s.xy, s.role == ROLE_M, origin + lin @ CANONICAL_PARTNER, 0.3 * a)
            kw["m_site"] = m
            if m >= 0 and d is not None:
                basis = 0.5 * (s.basis[x] + s.basis[m])
                fr = cell_frames(s.fitted[x][None], s.fitted[m][None], (basis @ np.asarray(d.partner, float))[None],
                                 (basis @ np.asarray(d.hollow, float))[None])[0]
                lin, origin = fr[:, :2], fr[:, 2]
    others = np.setdiff1d(np.arange(n), np.asarray(list(exclude), dtype=int))
    if len(others):
        d = np.hypot(*(result.frames[others, :, 2] - origin).T)
        if d.min() < 0.3 * a:
            raise ValueError(f"cell {int(others[np.argmin(d)])} is there already")
    frame = np.concatenate([lin, origin[:, None]], axis=1)
    b = frame_boxes(frame[None], box)[0]
    h, w = result.image_shape
    if b[0] < -0.55 or b[1] < -0.55 or b[2] > w - 0.45 or b[3] > h - 0.45:  # as build_cells
        raise ValueError("the cell would reach beyond the image")
    kw["frame"] = frame
    return kw


def _records(viewer, result, places: list[dict[str, Any]], index) -> tuple[dict[str, Any], str]:
    """One record (for ``insert_cells``) of new cells at ``places``, classified, at ``index``."""
    from ..sites import CellSites

    probs, note = classify_frames(viewer, result, np.stack([p["frame"] for p in places]))
    recs = [result.new_cell(probabilities=None if probs is None else probs[k], **p) for k, p in enumerate(places)]
    cells = {k: np.concatenate([r["cells"][k] for r in recs]) for k in recs[0]["cells"]}
    out: dict[str, Any] = {"index": np.asarray(index, dtype=np.int64), "cells": cells}
    if all("sites" in r for r in recs):
        out["sites"] = CellSites(*(np.concatenate([getattr(r["sites"], f) for r in recs])
                                   for f in ("x", "m", "domain", "frame", "boundary", "boxes")))
    return out, note


def _swap_edit(viewer, result, old: dict | None, new: dict | None, text: str) -> Edit:
    """An edit that replaces the cells of record ``old`` by those of ``new`` (either may be
    None: an addition, a deletion); already applied."""

    def apply(a, b):
        if a is not None:
            result.remove_cells(a["index"])
        if b is not None:
            result.insert_cells(b)
        L.update_cells(viewer, result)

    return Edit(result, text, lambda: apply(new, old), lambda: apply(old, new))


def delete_cells(viewer, result, indices) -> str:
    """Remove cells ``indices`` from ``result`` and its layers (undoable); returns a message."""
    viewer = L.unwrap(viewer)
    idx = np.unique(np.atleast_1d(np.asarray(indices, dtype=int)))
    idx = idx[(idx >= 0) & (idx < result.n_cells)]
    if not len(idx):
        L.update_cells(viewer, result)
        return _say(viewer, "no cell to delete")
    rec = result.remove_cells(idx)
    L.update_cells(viewer, result, removed=idx)
    text = f"{len(idx)} cell(s) deleted"
    history(viewer).push(_swap_edit(viewer, result, rec, None, text))
    return _say(viewer, text)


def add_cells(viewer, result, positions) -> tuple[np.ndarray, str]:
    """New cells centred near ``positions`` (N, 2) (row, col) px, placed on the lattice and
    classified (undoable). Returns their indices (empty when none could be added) and a
    message; a cell that cannot be added is left out and the layers stay as the result."""
    viewer = L.unwrap(viewer)
    pos = np.asarray(positions, dtype=float).reshape(-1, 2)
    places, why = [], []
    for row, col in pos:
        try:
            places.append(place_cell(result, row, col, exclude=()))
        except ValueError as exc:
            why.append(str(exc))
    if not places:
        L.update_cells(viewer, result)
        return np.zeros(0, int), _say(viewer, "no cell added: " + "; ".join(why))
    n = result.n_cells
    rec, note = _records(viewer, result, places, np.arange(n, n + len(places)))
    idx = result.insert_cells(rec)
    L.update_cells(viewer, result)
    names = ", ".join(result.label_names()[int(k)] for k in idx)
    text = f"{len(idx)} cell(s) added ({names})"
    history(viewer).push(_swap_edit(viewer, result, None, rec, text))
    msg = text + (f", {note}" if note else "") + (f"; left out: {'; '.join(why)}" if why else "")
    return idx, _say(viewer, msg)


def move_cells(viewer, result, indices, positions) -> str:
    """Move cells ``indices`` to be centred near ``positions`` (N, 2) (row, col) px: re-cut
    and re-classified (undoable). When one cannot go there, nothing moves."""
    viewer = L.unwrap(viewer)
    idx = np.asarray(indices, dtype=int).reshape(-1)
    order = np.argsort(idx)
    idx, pos = idx[order], np.asarray(positions, dtype=float).reshape(-1, 2)[order]
    try:
        places = [place_cell(result, r, c, like=int(k), exclude=idx) for k, (r, c) in zip(idx, pos)]
    except ValueError as exc:
        L.update_cells(viewer, result)
        return _say(viewer, f"cell not moved: {exc}")
    new, note = _records(viewer, result, places, idx)
    old = result.remove_cells(idx)
    result.insert_cells(new)
    L.update_cells(viewer, result)
    names = ", ".join(result.label_names()[int(k)] for k in idx)
    text = f"{len(idx)} cell(s) moved ({names})"
    history(viewer).push(_swap_edit(viewer, result, old, new, text))
    return _say(viewer, text + (f", {note}" if note else ""))


# --------------------------------------------------------------------------- layer events
def _positions(layer) -> np.ndarray:
    """(N, 2) cell centres (row, col) px that a cell layer shows: points, or outline centres."""
    if layer.metadata.get(L.ROLE_KEY) == "centres":
        return np.asarray(layer.data, dtype=float)[:, -2:].reshape(-1, 2)
    return np.array([np.asarray(d, float)[:, -2:].mean(axis=0) for d in layer.data]).reshape(-1, 2)


def on_layer_data(viewer, layer, event) -> None:
    """A cell layer's data changed by the user (napari's ``events.data``): delete, add or
    move the cells accordingly."""
    result = layer.metadata.get(L.RESULT_KEY)
    if result is None or L.is_syncing():
        return
    result = L.unwrap(result)
    action = str(event.action).lower()
    role = layer.metadata.get(L.ROLE_KEY)
    n = result.n_cells
    if action == "removed":
        delete_cells(viewer, result, [i for i in event.data_indices if 0 <= int(i) < n])
    elif action == "added":
        if role != "centres":
            _later(lambda: (L.update_cells(viewer, result), _say(
                viewer, "to add a cell, add a point to the cell classes layer (add mode)")))
            return
        add_cells(viewer, result, _positions(layer)[n:])
    elif action == "changed":
        def moved():
            pos = _positions(layer)
            if len(pos) != result.n_cells:
                L.update_cells(viewer, result)
                return
            d = np.hypot(*(pos - L.cell_centres(result)).T)
            k = np.flatnonzero(d > 0.5)
            if len(k):
                move_cells(viewer, result, k, pos[k])

        if role == "centres":
            moved()
        else:  # napari still works on the outline after the event
            _later(moved)


def _later(fn: Callable[[], Any]) -> None:
    from qtpy.QtCore import QTimer

    QTimer.singleShot(0, fn)


_CONNECTED: "weakref.WeakSet[Any]" = weakref.WeakSet()


def connect_edits(viewer, layer) -> None:
    """Handle the user's deletes, additions and moves on a cell layer (:func:`on_layer_data`)."""
    if layer in _CONNECTED:
        return
    _CONNECTED.add(layer)
    vref = weakref.ref(L.unwrap(viewer))
    lref = weakref.ref(layer)

    def on_data(event):
        v, lay = vref(), lref()
        if v is None or lay is None or L.is_syncing():
            return
        try:
            on_layer_data(v, lay, event)
        except (ValueError, IndexError, RuntimeError, OSError) as exc:
            res = lay.metadata.get(L.RESULT_KEY)
            if res is not None:
                L.update_cells(v, L.unwrap(res))
            _say(v, f"edit not applied ({type(exc).__name__}: {exc})")

    layer.events.data.connect(on_data)


class CorrectionWidget(Container):
    """Correct cell classes, delete/add/move cells, undo/redo; review low-confidence
    cells; save to the training database (opt-in)."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=False)
        self._viewer = viewer
        self._cursor = None  # (confidence, index, id(result)) of the last reviewed cell
        self._help = L.text_label("Click a cell, keys 0–5 set its class; Delete, add mode, drag edit cells.")
        self._help.tooltip = ("Click a cell to select it (Shift-click adds); keys 0–5 set the class of the "
                              "selection. On the cell classes layer: Delete removes the selected cells, a point added in "
                              "add mode (P) becomes a classified cell, dragging a point (select mode) moves and "
                              "re-classifies its cell. Ctrl+Z / Ctrl+Shift+Z undo / redo every edit.")
        self._info = L.text_label("")
        self._class = ComboBox(label="class", choices=list(get_material("MoTe2").class_names))
        self._apply = PushButton(text="Set class of selected cells")
        self._threshold = FloatSpinBox(label="review below", value=0.6, min=0.0, max=1.0, step=0.05,
                                       tooltip="cells whose confidence is below this are flagged for review")
        self._prev = PushButton(text="◀ previous")
        self._next = PushButton(text="next ▶", tooltip="select the next low-confidence cell and centre on it")
        self._flag_info = L.text_label("")
        self._prev.tooltip = "select the previous low-confidence cell and centre on it"
        self._undo = PushButton(text="↶ undo", tooltip="undo the last edit of the cells (Ctrl+Z)")
        self._redo = PushButton(text="redo ↷", tooltip="redo the last undone edit (Ctrl+Shift+Z)")
        self._save = CheckBox(text="save corrections to the training database", value=bool(_SETTINGS["save"]),
                              tooltip="off: corrections change this analysis only")
        self._db = FileEdit(label="database", mode="d", value=str(database_dir()))
        self._saved = L.text_label("")
        self._status = L.text_label("")
        steps = Container(widgets=[self._prev, self._next], layout="horizontal", labels=False)
        undo_row = Container(widgets=[self._undo, self._redo], layout="horizontal", labels=False)
        undo_row.margins = (0, 0, 0, 0)
        forms = [Container(widgets=[w], labels=True) for w in (self._class, self._threshold, self._db)]
        for c in (steps, *forms):
            c.margins = (0, 0, 0, 0)
        body = Container(widgets=[self._help, self._info, forms[0], self._apply, undo_row, forms[1], steps,
                                  self._flag_info, self._save, forms[2], self._saved, self._status], labels=False)
        body.native.layout().addStretch(1)
        # a long database path must not widen the dock: the field elides, its tooltip shows it
        self._db.line_edit.native.setMinimumWidth(60)
        self._db.native.setToolTip(str(database_dir()))
        self.margins = (0, 0, 0, 0)
        self.native.layout().addWidget(scroll_area(body.native))  # scrolls on a laptop screen
        self._apply.clicked.connect(lambda: self.set_class(self._class.value))
        self._next.clicked.connect(lambda: self.step_low_confidence(+1))
        self._prev.clicked.connect(lambda: self.step_low_confidence(-1))
        self._threshold.changed.connect(self._on_threshold)
        self._undo.clicked.connect(lambda: self._say(undo(self._viewer)))
        self._redo.clicked.connect(lambda: self._say(redo(self._viewer)))
        self._save.changed.connect(self._on_save)
        self._db.changed.connect(lambda v: set_database(v, save=self._save.value))
        L.connect_events(self.native, self._update, viewer.layers.selection.events.active)
        L.EVENTS.message.connect(self._on_message)
        self.native.destroyed.connect(lambda *_: L.EVENTS.message.disconnect(self._on_message, missing_ok=True))
        self._update()

    # ------------------------------------------------------------------ scripting API
    @property
    def database(self) -> Path:
        """The corrections folder (setting it also switches saving on)."""
        return database_dir()

    @database.setter
    def database(self, path: str | Path) -> None:
        self._save.value = True
        self._db.value = str(path)
        set_database(path, save=True)

    def set_class(self, label: int | str, cells=None) -> str:
        """Set the class (id or name) of ``cells`` (default: the selected cells)."""
        res = L.current_result(self._viewer)
        if res is None:
            return self._say("no analysis yet: run Defect analysis first")
        k = label if isinstance(label, (int, np.integer)) else res.class_names.index(str(label))
        idx = S.selected_cells(self._viewer, res) if cells is None else np.atleast_1d(cells)
        _, msg = correct_cells(self._viewer, res, idx, int(k))
        return self._say(msg)

    def step_low_confidence(self, direction: int = 1) -> int | None:
        """Select and centre the next (``+1``) or previous (``-1``) low-confidence cell,
        in order of increasing confidence. Returns its index (None when none is left).

        Stepping continues from the last cell visited, also after it was corrected (and
        so left the list), or from a flagged cell the user selected.
        """
        res = L.current_result(self._viewer)
        if res is None:
            self._say("no analysis yet")
            return None
        idx = np.flatnonzero(res.flagged)
        if not len(idx):
            self._say("no low-confidence cells left to review")
            return None
        keys = sorted(zip(res.confidence[idx].tolist(), idx.tolist()))
        sel = S.selected_cells(self._viewer, res)
        if len(sel) and res.flagged[sel[0]]:
            self._cursor = (float(res.confidence[sel[0]]), int(sel[0]), id(res))
        cur = self._cursor[:2] if self._cursor is not None and self._cursor[2] == id(res) else None
        if direction > 0:
            after = [k for k in keys if cur is None or k > cur]
            key = after[0] if after else keys[0]
        else:
            before = [k for k in keys if cur is not None and k < cur]
            key = before[-1] if before else keys[-1]
        self._cursor = (key[0], key[1], id(res))
        S.select_cells(self._viewer, res, [key[1]], center=True)
        self._say(f"reviewing cell {key[1]} ({keys.index(key) + 1} of {len(keys)} low-confidence cells)")
        return int(key[1])

    def undo(self) -> str:
        """Undo the last edit of the cells (as Ctrl+Z)."""
        return self._say(undo(self._viewer))

    def redo(self) -> str:
        """Redo the last undone edit (as Ctrl+Shift+Z)."""
        return self._say(redo(self._viewer))

    # ------------------------------------------------------------------ internals
    def _say(self, msg: str) -> str:
        self._status.value = msg
        self._update()  # undo/redo buttons and counts follow every edit
        return msg

    def _on_message(self, msg: str) -> None:
        self._say(msg)

    def _on_save(self, value: bool) -> None:
        set_database(self._db.value, save=value)
        self._update()

    def _on_threshold(self, value: float) -> None:
        res = L.current_result(self._viewer)
        if res is None:
            return
        res.low_confidence = float(value)
        res.flagged = (res.confidence < value) & (res.labels >= 0) & ~res.corrected
        L.refresh(self._viewer, res)

    def _update(self, *_) -> None:
        self._saved.value = (f"{rows_saved()} row(s) saved to the database this session"
                             if self._save.value or rows_saved() else "corrections are not saved (opt-in)")
        h = history(self._viewer)
        self._undo.enabled, self._redo.enabled = bool(h.done), bool(h.undone)
        res = L.current_result(self._viewer)
        if res is None:
            self._info.value = "No analysis yet: run Defect analysis first."
            self._flag_info.value = ""
            return
        names = list(res.class_names)
        if list(self._class.choices) != names:
            self._class.choices = names
        with self._threshold.changed.blocked():
            self._threshold.value = res.low_confidence
        sel = S.selected_cells(self._viewer, res)
        if len(sel) == 1:
            k = int(sel[0])
            lab = res.label_names()[k]
            state = " (corrected)" if res.corrected[k] else (" (low confidence)" if res.flagged[k] else "")
            self._info.value = f"Cell {k} (i={res.ij[k, 0]}, j={res.ij[k, 1]}): {lab}, confidence {res.confidence[k]:.2f}{state}"
            if res.labels[k] >= 0:
                self._class.value = names[res.labels[k]]
        elif len(sel):
            self._info.value = f"{len(sel)} cells selected"
        else:
            self._info.value = "No cell selected."
        self._flag_info.value = f"{int(res.flagged.sum())} low-confidence cells to review, {int(res.corrected.sum())} corrected"
