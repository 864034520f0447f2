"""Editing cells on the layers: napari's delete, add and move on the cell layers change the
result (every layer stays aligned), new and moved cells are classified, and one undo/redo
stack (Ctrl+Z / Ctrl+Shift+Z) covers these and the class keys, database rows included."""

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_tmd_defects._widgets import _correction as C
from napari_tmd_defects._widgets import _layers as L
from napari_tmd_defects._widgets import _selection as S
from napari_tmd_defects.corrections import read_index
from napari_tmd_defects.simulation import GroundTruth

from .conftest import PLUGIN


def _canvas(viewer):
    return viewer.window._qt_viewer.canvas.native


def _layers(viewer, res):
    lay = L.result_layers(viewer, res)
    return lay["centres"], lay["cells"]


def _assert_aligned(viewer, res):
    """Points, outlines, features and colours all have one entry per cell, in place."""
    pts, shp = _layers(viewer, res)
    n = res.n_cells
    assert len(pts.data) == shp.nshapes == len(pts.features) == len(shp.features) == len(pts.size) == n
    assert np.allclose(pts.data, L.cell_centres(res))
    assert pts.features["class_id"].tolist() == res.labels.tolist()
    assert len(res.frames) == len(res.machine_labels) == len(res.probabilities) == len(res.sites.cells) == n


class _EveryCellTruth:
    """The ground-truth classifier without its one deliberately uncertain cell, so that a
    single new cell gets its true class."""

    def __init__(self, clf):
        self._clf = clf
        self.card = clf.card

    def predict(self, image, boxes, pixel_size, material="MoTe2", progress=None, cancel=None, frames=None,
                box=None):
        frames = np.concatenate([frames[:1], frames])
        return self._clf.predict(image, boxes, pixel_size, material, frames=frames, box=box)[1:]


@pytest.fixture
def edited(analysed):
    """(viewer, result, correction widget) with a classifier that gets every cell right."""
    from conftest import TruthClassifier

    viewer, analysis = analysed
    truth = GroundTruth.from_dict(viewer.layers[0].metadata["ground_truth"])
    analysis.classifier = _EveryCellTruth(TruthClassifier(truth))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Correction")
    return viewer, analysis.result, widget


def test_delete_key_removes_cells_everywhere_and_undo_restores_them(edited, qtbot):
    viewer, res, widget = edited
    _, stats = viewer.window.add_plugin_dock_widget(PLUGIN, "Statistics")
    pts, shp = _layers(viewer, res)
    n, labels0, boxes0 = res.n_cells, res.labels.copy(), res.boxes.copy()
    k = int(np.flatnonzero(res.labels == 3)[0])  # a V_Mo cell
    before = res.counts()

    S.select_cells(viewer, res, [k])
    qtbot.keyClick(_canvas(viewer), Qt.Key_Delete)  # napari's own delete of the selected points
    assert res.n_cells == n - 1 and res.counts()["V_Mo"] == before["V_Mo"] - 1
    _assert_aligned(viewer, res)
    row = list(res.class_names).index("V_Mo")
    assert stats._table.item(row, 2).text().split(" ± ")[0] == str(before["V_Mo"] - 1)

    # the next class key works on the shifted cells
    j = int(np.flatnonzero(res.labels == 0)[4])
    S.select_cells(viewer, res, [j])
    qtbot.keyClick(_canvas(viewer), Qt.Key_5)
    assert res.labels[j] == 5 and pts.features["class_id"][j] == 5

    # deleting an outline on the Shapes layer deletes that cell too
    viewer.layers.selection.active = shp
    shp.selected_data = {2}
    shp.remove_selected()
    assert res.n_cells == n - 2
    _assert_aligned(viewer, res)

    # one stack: undo the outline delete, the class key, the point delete
    for _ in range(3):
        C.undo(viewer)
    assert res.n_cells == n and np.array_equal(res.labels, labels0) and np.allclose(res.boxes, boxes0)
    assert not res.corrected.any()
    _assert_aligned(viewer, res)
    assert C.undo(viewer) == "nothing to undo"
    qtbot.keyClick(_canvas(viewer), Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)  # redo the delete
    assert res.n_cells == n - 1 and res.counts()["V_Mo"] == before["V_Mo"] - 1
    _assert_aligned(viewer, res)


def test_added_point_becomes_a_classified_cell_and_moving_reclassifies(edited, qtbot):
    viewer, res, widget = edited
    pts, _ = _layers(viewer, res)
    v_mo = np.flatnonzero(res.labels == 3)
    te1 = np.flatnonzero(res.labels == 1)
    a, b = int(v_mo[0]), int(te1[0])
    frame_a, centre_a, centre_b = res.frames[a].copy(), pts.data[a].copy(), pts.data[b].copy()
    n = res.n_cells
    C.delete_cells(viewer, res, [a])
    assert res.n_cells == n - 1

    # add mode: a point a little off the missed cell's centre becomes that cell, classified
    pts.mode = "add"
    pts.add(centre_a + [1.5, -1.0])
    assert res.n_cells == n
    _assert_aligned(viewer, res)
    assert res.labels[-1] == 3 and not res.corrected[-1] and res.confidence[-1] == pytest.approx(0.9)
    assert np.allclose(res.frames[-1], frame_a, atol=1e-6)  # on the same column as before
    # a point on an existing cell adds nothing (and the point goes away)
    pts.add(pts.data[0])
    assert res.n_cells == n and len(pts.data) == n
    pts.mode = "pan_zoom"

    # dragging the new cell onto the (deleted) V_Te1 cell re-cuts and re-classifies it
    b = b - (b > a)
    C.delete_cells(viewer, res, [b])
    new = res.n_cells - 1
    data = pts.data.copy()
    data[new] = centre_b
    pts.data = data
    assert res.labels[new] == 1 and res.n_cells == n - 1
    assert np.allclose(pts.data[new], centre_b, atol=0.5)
    _assert_aligned(viewer, res)

    # undo: back where it was, V_Mo again; undo the delete and the add as well
    C.undo(viewer)
    assert res.labels[new] == 3 and np.allclose(res.frames[new], frame_a)
    C.undo(viewer)
    assert res.n_cells == n and res.labels[b] == 1
    C.undo(viewer)
    assert res.n_cells == n - 1
    _assert_aligned(viewer, res)
    C.redo(viewer)
    assert res.n_cells == n and res.labels[-1] == 3
    _assert_aligned(viewer, res)


def test_class_keys_undo_with_their_database_rows_and_saving_is_opt_in(analysed, qtbot, corrections_dir,
                                                                     monkeypatch):
    viewer, analysis = analysed
    res = analysis.result
    assert C.SAVE_BY_DEFAULT is False
    monkeypatch.setitem(C._SETTINGS, "save", C.SAVE_BY_DEFAULT)
    monkeypatch.setitem(C._SESSION, "rows", 0)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Correction")  # a fresh dock: box off
    assert widget._save.value is False and "not saved" in widget._saved.value
    k = int(np.flatnonzero(res.labels == 0)[5])
    conf0 = float(res.confidence[k])
    canvas = _canvas(viewer)

    S.select_cells(viewer, res, [k])
    qtbot.keyClick(canvas, Qt.Key_3)
    assert res.labels[k] == 3 and not corrections_dir.exists()  # off: nothing written
    assert widget._undo.enabled and not widget._redo.enabled
    widget.set_class(1, cells=[k])
    assert res.labels[k] == 1 and widget._undo.enabled
    C.undo(viewer)
    qtbot.keyClick(canvas, Qt.Key_Z, Qt.ControlModifier)
    assert res.labels[k] == 0 and not res.corrected[k] and res.confidence[k] == conf0

    widget._save.value = True
    qtbot.keyClick(canvas, Qt.Key_3)
    rows = read_index(corrections_dir)
    assert [r["label"] for r in rows] == [3] and C.rows_saved() == 1
    assert "1 row(s) saved" in widget._saved.value
    crop = corrections_dir / "crops" / rows[0]["crop"]
    qtbot.keyClick(canvas, Qt.Key_1)  # updates the row
    assert [r["label"] for r in read_index(corrections_dir)] == [1]

    qtbot.keyClick(canvas, Qt.Key_Z, Qt.ControlModifier)  # the row is V_Mo again
    assert res.labels[k] == 3 and [r["label"] for r in read_index(corrections_dir)] == [3]
    qtbot.keyClick(canvas, Qt.Key_Z, Qt.ControlModifier)  # no row, no crop
    assert res.labels[k] == 0 and not res.corrected[k] and read_index(corrections_dir) == []
    assert not crop.exists() and C.rows_saved() == 0
    qtbot.keyClick(canvas, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)
    assert res.labels[k] == 3 and res.corrected[k] and len(read_index(corrections_dir)) == 1 and crop.exists()

    # setting the analysis' class back by key clears the correction and its row; undo brings both back
    qtbot.keyClick(canvas, Qt.Key_0)
    assert res.labels[k] == 0 and not res.corrected[k] and res.confidence[k] == conf0
    assert read_index(corrections_dir) == [] and C.rows_saved() == 0
    widget.undo()
    assert res.labels[k] == 3 and res.corrected[k] and len(read_index(corrections_dir)) == 1
    # pressing the class a cell already has confirms it (a correction)
    j = int(np.flatnonzero(res.labels == 0)[7])
    S.select_cells(viewer, res, [j])
    qtbot.keyClick(canvas, Qt.Key_0)
    assert res.corrected[j] and res.confidence[j] == 1.0 and len(read_index(corrections_dir)) == 2
