"""**Correction** dock widget: change the class of selected cells, step through
low-confidence cells, and save corrections (with crops) to a training database.

Cells are selected by clicking them (Shift-click adds); keys 0–5 on the cell layers or
the class drop-down set the class. Every correction goes to the database folder (see
:mod:`napari_tmd_defects.corrections`) unless saving is switched off.
"""

from __future__ import annotations

import os
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, PushButton

from ..materials import get_material
from . import _layers as L
from . import _selection as S

#: Environment variable that overrides the default database folder.
DATABASE_ENV = "TMD_DEFECTS_CORRECTIONS"
_SETTINGS: dict = {"database": None, "save": True}


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


def correct_cells(viewer, result, indices, label: int) -> tuple[list[dict], str]:
    """Set the class of cells ``indices`` of ``result`` to ``label``, save them to the
    database (when saving is on) and update the layers.

    Returns the database rows written and a short message.
    """
    idx = np.unique(np.atleast_1d(np.asarray(indices, dtype=int)))
    if not len(idx):
        return [], "no cell selected"
    before_lab = result.labels[idx].copy()
    before_conf = np.where(before_lab >= 0, result.confidence[idx], np.nan)
    result.set_label(idx, int(label))
    name = result.class_names[int(label)]
    msg = f"{len(idx)} cell(s) set to {name}"
    rows: list[dict] = []
    if _SETTINGS["save"]:
        layer = L.image_layer_of(viewer, result)
        if layer is None:
            msg += "; not saved: the image layer is gone"
        else:
            from ..analysis import prepare_image
            from ..corrections import CorrectionDatabase

            try:
                img, normalized = training_image(prepare_image(L.image_data(layer))[0], result)
                db = CorrectionDatabase(database_dir())
                rows = db.add_many(
                    img, result.boxes[idx], np.full(len(idx), int(label)), material=result.material,
                    pixel_size=result.pixel_size, source=image_source(layer),
                    confidence_before=before_conf, label_before=before_lab, normalized=normalized,
                    frames=result.frames[idx],
                )
                msg += f"; saved to {db.path}" + ("" if normalized else " (raw crops: classifier not installed)")
            except (OSError, ValueError) as exc:
                msg += f"; NOT saved to the database ({exc})"
    L.refresh(viewer, result)
    return rows, msg


class CorrectionWidget(Container):
    """Correct cell classes; review low-confidence cells; save to the training database."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=False)
        self._viewer = viewer
        self._cursor = None  # (confidence, index, id(result)) of the last reviewed cell
        self._help = L.text_label("Click a cell to select it (Shift-click adds).\nKeys 0–5 set the class of the selection.")
        self._info = L.text_label("")
        self._class = ComboBox(label="class", choices=list(get_material("MoTe2").class_names))
        self._apply = PushButton(text="Set class of selected cells")
        self._threshold = FloatSpinBox(label="review below", value=0.6, min=0.0, max=1.0, step=0.05,
                                       tooltip="cells whose confidence is below this are flagged for review")
        self._prev = PushButton(text="◀ previous")
        self._next = PushButton(text="next ▶", tooltip="select the next low-confidence cell and centre on it")
        self._flag_info = L.text_label("")
        self._prev.tooltip = "select the previous low-confidence cell and centre on it"
        self._save = CheckBox(text="save corrections to the training database", value=_SETTINGS["save"])
        self._db = FileEdit(label="database", mode="d", value=str(database_dir()))
        self._status = L.text_label("")
        steps = Container(widgets=[self._prev, self._next], layout="horizontal", labels=False)
        forms = [Container(widgets=[w], labels=True) for w in (self._class, self._threshold, self._db)]
        for c in (steps, *forms):
            c.margins = (0, 0, 0, 0)
        self.extend([self._help, self._info, forms[0], self._apply, forms[1], steps, self._flag_info,
                     self._save, forms[2], self._status])
        self._apply.clicked.connect(lambda: self.set_class(self._class.value))
        self._next.clicked.connect(lambda: self.step_low_confidence(+1))
        self._prev.clicked.connect(lambda: self.step_low_confidence(-1))
        self._threshold.changed.connect(self._on_threshold)
        self._save.changed.connect(lambda v: set_database(self._db.value, save=v))
        self._db.changed.connect(lambda v: set_database(v, save=self._save.value))
        L.connect_events(self.native, self._update, viewer.layers.selection.events.active)
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

    # ------------------------------------------------------------------ internals
    def _say(self, msg: str) -> str:
        self._status.value = msg
        return msg

    def _on_threshold(self, value: float) -> None:
        res = L.current_result(self._viewer)
        if res is None:
            return
        res.low_confidence = float(value)
        res.flagged = (res.confidence < value) & (res.labels >= 0) & ~res.corrected
        L.refresh(self._viewer, res)

    def _update(self, *_) -> None:
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
