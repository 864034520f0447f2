"""Correction widget: click and keys 0–5 change classes, counts update, the training
database gets (and updates) one row per corrected cell; low-confidence stepping."""

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt

from napari_tmd_defects._widgets import _layers as L
from napari_tmd_defects._widgets import _selection as S
from napari_tmd_defects._widgets._correction import training_image
from napari_tmd_defects.corrections import crop_frame, load_corrections

from .conftest import PLUGIN


def _canvas(viewer):
    return viewer.window._qt_viewer.canvas.native


def _click_cell(viewer, qtbot, res, k):
    """Centre the camera on cell k and click the middle of the canvas."""
    pts = L.result_layers(viewer, res)["centres"]
    viewer.camera.center = tuple(pts.data_to_world(pts.data[k]))
    qtbot.wait(50)
    canvas = _canvas(viewer)
    qtbot.mouseClick(canvas, Qt.LeftButton, pos=QPoint(canvas.width() // 2, canvas.height() // 2))


def test_click_and_keys_correct_cells_and_fill_database(analysed, qtbot, corrections_dir):
    viewer, analysis = analysed
    _, stats = viewer.window.add_plugin_dock_widget(PLUGIN, "Statistics")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Correction")
    res = analysis.result
    k = int(np.flatnonzero(res.labels == 0)[5])
    before = res.counts()

    _click_cell(viewer, qtbot, res, k)
    assert S.selected_cells(viewer).tolist() == [k]
    assert f"Cell {k} " in widget._info.value

    qtbot.keyClick(_canvas(viewer), Qt.Key_3)  # V_Mo
    assert res.labels[k] == 3 and res.corrected[k] and res.confidence[k] == 1.0
    after = res.counts()
    assert after["V_Mo"] == before["V_Mo"] + 1 and after["Perfect"] == before["Perfect"] - 1
    pts = L.result_layers(viewer, res)["centres"]
    assert pts.features["class"][k] == "V_Mo" and bool(pts.features["corrected"][k])
    # the statistics panel updated live
    row = list(res.class_names).index("V_Mo")
    assert stats._table.item(row, 2).text().split(" ± ")[0] == str(after["V_Mo"])

    crops, labels, rows = load_corrections(corrections_dir)
    assert len(rows) == 1 and labels.tolist() == [3]
    r = rows[0]
    assert (r["class_name"], r["material"], r["label_before"]) == ("V_Mo", "MoTe2", 0)
    assert r["pixel_size_A"] == pytest.approx(0.09) and r["confidence_before"] == pytest.approx(0.9)
    assert np.allclose([r["x_min"], r["y_min"], r["x_max"], r["y_max"]], res.boxes[k], atol=1e-3)
    image, normalized = training_image(viewer.layers["MoTe2 sample (simulated)"].data, res)
    assert r["normalized"] == int(normalized)
    # the crop is the cell cut out in its own frame (canonical way up)
    assert np.allclose(crops[0], crop_frame(image, res.frames[k]))

    # correcting the same cell again (drop-down) updates its row instead of adding one
    widget._class.value = "V_Te1"
    widget._apply.clicked.emit()
    crops, labels, rows = load_corrections(corrections_dir)
    assert len(rows) == 1 and labels.tolist() == [1] and rows[0]["label_before"] == 0
    assert res.counts()["V_Mo"] == before["V_Mo"]

    # another cell by key adds a second row
    j = int(np.flatnonzero(res.labels == 0)[9])
    S.select_cells(viewer, res, [j])
    qtbot.keyClick(_canvas(viewer), Qt.Key_5)
    assert len(load_corrections(corrections_dir)[2]) == 2 and res.labels[j] == 5


def test_step_through_low_confidence_cells(analysed, qtbot, corrections_dir):
    viewer, analysis = analysed
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Correction")
    res = analysis.result
    flagged = np.flatnonzero(res.flagged)
    assert len(flagged) > 3
    order = flagged[np.argsort(res.confidence[flagged], kind="stable")]
    seen = []
    for _ in range(3):
        widget._next.clicked.emit()
        (k,) = S.selected_cells(viewer)
        seen.append(int(k))
        pts = L.result_layers(viewer, res)["centres"]
        assert np.allclose(viewer.camera.center[-2:], pts.data_to_world(pts.data[k])[-2:])
    assert seen == order[:3].tolist()
    widget._prev.clicked.emit()
    assert S.selected_cells(viewer).tolist() == [seen[1]]
    # a corrected cell leaves the review list
    widget.set_class(int(res.labels[seen[1]]))
    assert not res.flagged[seen[1]] and widget.step_low_confidence(+1) == seen[2]
    # a higher threshold flags more cells
    n = int(res.flagged.sum())
    widget._threshold.value = 0.95
    assert res.flagged.sum() > n and res.low_confidence == 0.95
    # corrections were saved; with saving off they are not
    assert len(load_corrections(corrections_dir)[2]) == 1
    widget._save.value = False
    widget.set_class("V_Te2", cells=[0])
    assert res.labels[0] == 2 and len(load_corrections(corrections_dir)[2]) == 1
