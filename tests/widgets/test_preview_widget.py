"""Noise preview widget: simulated image next to the user's, live parameters, and the
cell-vs-simulation comparison."""

import numpy as np
import pytest

from napari_tmd_defects._widgets import _selection as S
from napari_tmd_defects._widgets._preview import PREVIEW_NAME

from .conftest import PLUGIN


def test_preview_is_simulated_next_to_the_image(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Noise preview")
    assert widget._pixel.value == pytest.approx(0.09)  # from the sample's metadata
    widget._class.value = "V_Mo"
    widget._size.value = 128
    lay = widget.simulate()
    assert viewer.layers[PREVIEW_NAME] is lay and lay.data.shape == (128, 128)
    assert np.allclose(lay.scale, [0.09, 0.09])
    image = viewer.layers["MoTe2 sample (simulated)"]
    assert lay.translate[1] > image.extent.world[1, 1]  # right of the image
    truth = lay.metadata["ground_truth"]
    assert set(truth["cells"]["class"]) <= {"Perfect", "V_Mo"} and truth["counts"]["V_Mo"] > 0
    # live: a new noise level re-simulates the same layer
    before = lay.data.copy()
    widget._mu.value = 0.0
    widget._lam.value = 0.0  # no noise at all
    assert viewer.layers[PREVIEW_NAME] is lay and not np.array_equal(before, lay.data)
    assert lay.metadata["ground_truth"]["params"]["noise"]["gaussian_mu"] == 0.0


def test_compare_selected_cell_with_its_class(analysed):
    viewer, analysis = analysed
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Noise preview")
    assert widget.compare_selected() is None and "select a cell" in widget._status.value
    res = analysis.result
    k = int(np.flatnonzero(res.labels == 2)[0])  # V_Te2: both chalcogens missing
    S.select_cells(viewer, res, [k])
    cmp = widget.compare_selected()
    assert cmp.class_name == "V_Te2"
    assert np.all(np.abs(np.subtract(cmp.crop.shape, cmp.reference_crop.shape)) <= 1)  # same sampling
    # the empty X column shows in both profiles: X site much darker than the M site
    for d, p in ((cmp.distance_A, cmp.profile), (cmp.reference_distance_A, cmp.reference_profile)):
        m = p[np.argmin(abs(d))]
        x = p[np.argmin(abs(d - cmp.mx_distance_A))]
        assert x < m - 0.1
    assert len(widget._fig.axes) == 3 and not widget._canvas.isHidden()
