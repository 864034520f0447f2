"""α/β tuning widget: sliders re-cast the cells from the same hexagons, live."""

import numpy as np
import pytest

from napari_tmd_defects._widgets import _layers as L

from .conftest import PLUGIN


def test_sliders_recast_cells_live(analysed, qtbot):
    viewer, analysis = analysed
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "α/β tuning")
    first = analysis.result
    layers = L.result_layers(viewer, first)
    shapes, pts = layers["cells"], layers["centres"]
    assert widget._alpha.value == pytest.approx(0.65) and widget._beta.value == pytest.approx(0.5)
    w0 = np.median(first.boxes[:, 2] - first.boxes[:, 0])
    h0 = np.median(first.boxes[:, 3] - first.boxes[:, 1])

    widget._alpha.value = 0.8  # moving a slider re-casts at once
    res = L.current_result(viewer)
    assert res is not first and res.alpha == pytest.approx(0.8) and res.beta == pytest.approx(0.5)
    assert np.array_equal(res.hexagon_boxes, first.hexagon_boxes)  # no re-detection
    w1 = np.median(res.boxes[:, 2] - res.boxes[:, 0])
    assert w1 == pytest.approx(w0 * 0.8 / 0.65, rel=0.02)
    # same layer objects, now showing the new cells
    assert L.result_layers(viewer, res)["cells"] is shapes and shapes.metadata[L.RESULT_KEY] is res
    x0, y0, x1, y1 = res.boxes[0]
    assert np.allclose(shapes.data[0].max(axis=0) - shapes.data[0].min(axis=0), [y1 - y0, x1 - x0])
    assert len(pts.data) == res.n_cells and len(pts.features) == res.n_cells

    widget._beta.value = 0.6
    res2 = L.current_result(viewer)
    assert np.median(res2.boxes[:, 3] - res2.boxes[:, 1]) == pytest.approx(h0 * 0.6 / 0.5, rel=0.02)
    # classes carried by lattice index
    pos = {tuple(k): n for n, k in enumerate(first.ij)}
    same = [(pos[tuple(k)], n) for n, k in enumerate(res2.ij) if tuple(k) in pos]
    assert len(same) >= 0.9 * first.n_cells
    assert all(first.labels[a] == res2.labels[b] for a, b in same)
    assert "α = 0.80, β = 0.60" in widget._status.value


def test_corrections_survive_recasting_and_new_analysis_resets(analysed):
    viewer, analysis = analysed
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "α/β tuning")
    _, corr = viewer.window.add_plugin_dock_widget(PLUGIN, "Correction")
    res = widget.set_alpha_beta(0.9, 0.5)
    k = int(np.flatnonzero(res.labels == 0)[0])
    ij = tuple(res.ij[k])
    corr.set_class(4, cells=[k])
    back = widget.set_alpha_beta(0.65, 0.5)
    m = [n for n, v in enumerate(back.ij) if tuple(v) == ij][0]
    assert back.labels[m] == 4 and back.corrected[m]
    assert widget._alpha.value == pytest.approx(0.65)
    # a new analysis resets the sliders to its values
    analysis.run(alpha=0.7, beta=0.45)
    assert widget._alpha.value == pytest.approx(0.7) and widget._beta.value == pytest.approx(0.45)
